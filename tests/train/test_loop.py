"""The training loop, library level: a tiny real-CIFAR-10 run learns, resume is bit-exact, a NaN loss stops the run
without touching the last checkpoint, a run folder is never overwritten or shared. CPU only; a narrow DSRNet-50
(widths 8..64) keeps it fast."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dsrnet.errors import DsrnetError
from dsrnet.models.weights import load_trained
from dsrnet.run.checkpoint import load_checkpoint
from dsrnet.train import TrainConfig, loop, lr_factor, resume_config, train
from tests.conftest import DETERMINISTIC_KEYS, TINY_MODEL, read_metrics, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ learning


def test_tiny_run_learns_and_writes_its_run_folder(learned_run):
    cfg, final = learned_run
    run = Path(cfg.out_dir)
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    for key in (
        "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top3", "test_top1_error",
        "test_top3_error", "images_per_s", "epoch_time_s",
    ):  # fmt: skip
        assert all(isinstance(m[key], float) and math.isfinite(m[key]) for m in metrics), key
    # Learns: chance is 10 %; 300 test images put 18 % more than 4 standard errors above it.
    assert final["top1"] > 18.0, final
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 0.1
    # final.json = the LAST epoch, never the best one.
    assert final["top1_error"] == pytest.approx(metrics[-1]["test_top1_error"])
    assert final["top3_error"] == pytest.approx(metrics[-1]["test_top3_error"])
    assert final["epochs"] == 8 and final["params"] > 0 and final["train_images"] == 500
    assert json.loads((run / "final.json").read_text()) == final
    # Resolved config: complete, and it resolves to itself.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved == cfg.to_dict()
    assert TrainConfig.from_recipe(**saved) == cfg
    # Checkpoint: loadable with weights_only, self-describing.
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 8 and ckpt["model"] == "dsrnet50" and ckpt["num_classes"] == 10
    assert ckpt["classes"][0] == "airplane" and len(ckpt["mean"]) == 3 and ckpt["image_size"] == 32
    assert {"model_state", "optimizer_state", "scheduler_state", "scaler_state", "rng_state"} <= set(ckpt)
    assert ckpt["config"] == cfg.to_dict()
    # TensorBoard events (the extra is installed in dev environments; absent -> silently skipped).
    pytest.importorskip("tensorboard")
    assert list((run / "tb").glob("events.out.tfevents.*"))


# -------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_after_interruption_matches_uninterrupted_run(cifar10_dir, tmp_path, monkeypatch, ema_decay):
    full = tiny(tmp_path, cifar10_dir, "full", epochs=4, ema_decay=ema_decay)
    train(full)

    # Interrupt the second run inside epoch 3 (after epoch 2's checkpoint), as Ctrl-C would.
    real_evaluate, calls = loop.evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * (2 if ema_decay else 1) + 1:  # epoch 3's test pass (the average and raw each)
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", interrupted)
    part = tiny(tmp_path, cifar10_dir, "part", epochs=4, ema_decay=ema_decay)
    with pytest.raises(KeyboardInterrupt):
        train(part)
    run = tmp_path / "part"
    assert load_checkpoint(run)["epoch"] == 2 and not (run / "final.json").exists()
    monkeypatch.setattr(loop, "evaluate", real_evaluate)

    resumed = train(TrainConfig.from_recipe(**{**part.to_dict(), "resume": "auto"}))
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(run)
    states = ["model_state"] + (["train_model_state"] if ema_decay else [])  # the average and the trained weights
    for state in states:
        assert a[state].keys() == b[state].keys()
        for key, value in a[state].items():
            assert torch.equal(value, b[state][key]), (state, key)
    assert a.get("ema_updates") == b.get("ema_updates") == (4 * 3 if ema_decay else None)  # 100 images / 32
    for s1, s2 in zip(
        a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values(), strict=True
    ):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])
    ma, mb = read_metrics(tmp_path / "full"), read_metrics(run)
    assert [[m[k] for k in DETERMINISTIC_KEYS] for m in ma] == [
        [m[k] for k in DETERMINISTIC_KEYS] for m in mb
    ]
    final = json.loads((tmp_path / "full" / "final.json").read_text())
    assert resumed["top1_error"] == final["top1_error"] and resumed["test_loss"] == final["test_loss"]


def test_ema_run_reports_and_saves_the_average_and_keeps_the_trained_weights(cifar10_dir, tmp_path):
    from dsrnet.infer import evaluate_checkpoint, export_weights
    from dsrnet.models.weights import read_weights

    cfg = tiny(tmp_path, cifar10_dir, epochs=2, ema_decay=0.9)
    final = train(cfg)
    last = read_metrics(tmp_path / "run")[-1]
    assert final["ema_decay"] == 0.9 and final["top1_error"] == last["test_top1_error"]
    assert final["raw_top1_error"] == last["raw_test_top1_error"] and final["raw_test_loss"] == last["raw_test_loss"]
    assert last["test_loss"] != last["raw_test_loss"]  # two models were evaluated
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["ema_updates"] == 2 * 3
    assert any(not torch.equal(v, ckpt["train_model_state"][k]) for k, v in ckpt["model_state"].items())
    # What eval (and predict, export, load_trained) load is the reported model: the same test metrics.
    ev = evaluate_checkpoint(tmp_path / "run", data_dir=str(cifar10_dir), device="cpu", test_subset_per_class=5)
    assert ev["top1_error"] == pytest.approx(final["top1_error"])
    assert ev["test_loss"] == pytest.approx(final["test_loss"], rel=1e-4)
    state, meta = read_weights(export_weights(tmp_path / "run", tmp_path / "w.safetensors", dtype="fp32"))
    assert meta["ema_decay"] == 0.9 and all(torch.equal(v, ckpt["model_state"][k]) for k, v in state.items())
    # Resuming without the trained weights beside the average is refused (a hand-made checkpoint).
    broken = {k: v for k, v in ckpt.items() if k not in ("train_model_state", "path")} | {"epoch": 1, "history": ckpt["history"][:1]}
    torch.save(broken, tmp_path / "broken.pt")
    more = tiny(tmp_path, cifar10_dir, "more", epochs=2, ema_decay=0.9, resume=str(tmp_path / "broken.pt"))
    with pytest.raises(DsrnetError, match="no optimised weights beside its weight average"):
        train(more)


def test_resume_refuses_other_settings_and_a_finished_run_is_not_overwritten(cifar10_dir, tmp_path):
    cfg = tiny(tmp_path, cifar10_dir, epochs=1, subset_per_class=4, test_subset_per_class=2, batch_size=20)
    train(cfg)
    with pytest.raises(DsrnetError, match="already holds a run.*--resume"):
        train(cfg)
    with pytest.raises(DsrnetError, match="checkpoint .* is for dsrnet50.*not model='resnet50'"):
        resume_config(cfg.out_dir, model="resnet50")
    with pytest.raises(DsrnetError, match="lr=0.5 differs from the checkpoint's 0.1"):
        resume_config(cfg.out_dir, lr=0.5)
    other = TrainConfig.from_recipe(**{**cfg.to_dict(), "model": "dsrnet50_cifar", "resume": "auto"})
    with pytest.raises(DsrnetError, match="is for dsrnet50"):
        train(other)
    # A finished run resumed: nothing left to train, final.json is left as it ran, even where this call's settings
    # differ in what final.json records (it was rewritten with the call's dwconv, device, processes).
    before = (tmp_path / "run" / "final.json").read_text()
    assert train(resume_config(cfg.out_dir, progress=False)) == json.loads(before)
    assert train(resume_config(cfg.out_dir, progress=False, dwconv="triton")) == json.loads(before)
    assert (tmp_path / "run" / "final.json").read_text() == before


# ------------------------------------------------------------------------------------------------------ NaN


def test_nonfinite_loss_stops_with_step_and_keeps_last_good_checkpoint(cifar10_dir, tmp_path, monkeypatch):
    # From the 3rd step of epoch 2 on the learning rate becomes NaN: that step turns the weights into NaN, so
    # the loss of the next step (the 4th of epoch 2) is the first non-finite one.
    cfg = tiny(tmp_path, cifar10_dir, epochs=3, subset_per_class=8, batch_size=20)  # 80 images: 4 steps/epoch
    real = loop.lr_factor

    def poisoned(step, *, cfg, steps_per_epoch):
        return (
            float("nan")
            if step >= steps_per_epoch + 2
            else real(step, cfg=cfg, steps_per_epoch=steps_per_epoch)
        )

    monkeypatch.setattr(loop, "lr_factor", poisoned)
    ckpt_path = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(
        DsrnetError, match=r"non-finite loss at step 8 \(epoch 2\).*last good checkpoint: .*checkpoint\.pt"
    ):
        train(cfg)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model_state"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "final.json").exists()
    assert [m["epoch"] for m in read_metrics(tmp_path / "run")] == [1]


def test_absurd_learning_rate_is_stopped(cifar10_dir, tmp_path):
    cfg = tiny(tmp_path, cifar10_dir, recipe="paper", lr=1e6, epochs=2, subset_per_class=8, batch_size=20)
    with pytest.raises(
        DsrnetError, match=r"non-finite loss at step \d+ \(epoch 1\).*no checkpoint.*lower --lr"
    ):
        train(cfg)


def test_progress_bar_bf16_channels_last_on_a_terminal(cifar10_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    cfg = tiny(
        tmp_path, cifar10_dir, epochs=1, subset_per_class=4, test_subset_per_class=2, batch_size=20,
        progress=True, precision="bf16", channels_last=True,
    )  # fmt: skip
    final = train(cfg)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "acc=" in err and "img_s=" in err
    assert final["precision"] == "bf16" and final["channels_last"] and math.isfinite(final["test_loss"])




# ------------------------------------------------------------------------------------------------ dwconv


def _dwconv_modules(model: torch.nn.Module, kind: str = "TritonDepthwiseConv2d") -> int:
    return sum(type(m).__name__ == kind for m in model.modules())


def test_dwconv_triton_trains_like_torch_and_saves_the_plain_model(cifar10_dir, tmp_path, caplog):
    # The PyTorch fallback of the Triton ops (a CPU without the interpreter): the trainer's plumbing, not the
    # kernels, which tests/train/test_loop_triton.py runs in Triton's interpreter.
    # lr 0.03: small enough that the two runs' rounding differences stay small for a few epochs.
    over = {"epochs": 5, "subset_per_class": 20, "test_subset_per_class": 2, "batch_size": 20, "lr": 0.03}
    plain = train(tiny(tmp_path, cifar10_dir, "torch", **over))
    with caplog.at_level("INFO", logger="dsrnet.train"):
        fast = train(tiny(tmp_path, cifar10_dir, "triton", dwconv="triton", **over))
    assert "dwconv triton: 16 depthwise convs run the PyTorch fallback" in caplog.text
    assert (plain["dwconv"], fast["dwconv"]) == ("torch", "triton")
    torch_m, triton_m = read_metrics(tmp_path / "torch"), read_metrics(tmp_path / "triton")
    # Same seed, same math: the losses agree to float rounding (the ops' NHWC outputs reorder some sums),
    # which SGD amplifies a little epoch after epoch (measured: 1e-6 relative after 2 epochs, 1e-3 after 5).
    for a, b in zip(torch_m[:2], triton_m[:2], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), (a, b)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4), (a, b)
    for a, b in zip(torch_m, triton_m, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2), (a, b)
    assert triton_m[-1]["train_loss"] < triton_m[0]["train_loss"] - 0.1  # it learns
    # The checkpoint is the plain model's: same state_dict keys, loads strictly into a model without the swap.
    ckpt = load_checkpoint(tmp_path / "triton")
    assert ckpt["config"]["dwconv"] == "triton"
    assert list(ckpt["model_state"]) == list(load_checkpoint(tmp_path / "torch")["model_state"])
    model, info = load_trained(tmp_path / "triton")
    assert _dwconv_modules(model) == 0 and info["model"] == "dsrnet50"
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, ckpt["model_state"][name], rtol=0, atol=0)
    # Resume keeps the saved setting (and restores into the swapped model); it may change it, as it only
    # changes the speed.
    again = resume_config(tmp_path / "triton", progress=False)
    assert again.dwconv == "triton"
    assert train(again) == fast  # finished: nothing left to train, the same final metrics
    assert resume_config(tmp_path / "triton", dwconv="torch").dwconv == "torch"


def test_dwconv_shifts_trains_like_torch_and_saves_the_plain_model(cifar10_dir, tmp_path, caplog):
    # The form torch.compile fuses (dsrnet.models.shifted_dwconv; compiled, tests/models/test_shifted_dwconv.py):
    # the same losses as the conv run to rounding, the plain model's checkpoint, and no Triton precompile pass.
    over = {"epochs": 2, "subset_per_class": 4, "test_subset_per_class": 2, "batch_size": 20, "lr": 0.03,
            "model_kwargs": {"layers": [1, 1, 1, 1], "widths": [4, 8, 8, 8]}}  # fmt: skip
    plain = train(tiny(tmp_path, cifar10_dir, "torch", **over))
    with caplog.at_level("INFO", logger="dsrnet.train"):
        shifted = train(tiny(tmp_path, cifar10_dir, "shifts", dwconv="shifts", **over))
    assert "depthwise convs run the" not in caplog.text  # that line is the Triton kernels'
    assert (plain["dwconv"], shifted["dwconv"]) == ("torch", "shifts")
    for a, b in zip(read_metrics(tmp_path / "torch"), read_metrics(tmp_path / "shifts"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4), (a, b)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4), (a, b)
    ckpt = load_checkpoint(tmp_path / "shifts")
    assert list(ckpt["model_state"]) == list(load_checkpoint(tmp_path / "torch")["model_state"])
    model, _ = load_trained(tmp_path / "shifts")
    assert _dwconv_modules(model, "ShiftedDepthwiseConv2d") == 0  # a checkpoint loads as the plain model


def test_pointwise_matmul_trains_like_conv_saves_the_plain_model_and_may_change_on_resume(
    cifar10_dir, tmp_path, monkeypatch
):
    # The 1x1 convs as matmuls (dsrnet.models.matmul_pointwise; compiled: tests/models/test_matmul_pointwise.py):
    # the same losses as the conv run to rounding, the plain model's checkpoint, a setting resume may change.
    from dsrnet.models.matmul_pointwise import MatmulPointwiseConv2d

    calls = []
    forward = MatmulPointwiseConv2d.forward
    monkeypatch.setattr(MatmulPointwiseConv2d, "forward", lambda self, x: calls.append(1) or forward(self, x))
    over = {"epochs": 2, "subset_per_class": 4, "test_subset_per_class": 2, "batch_size": 20, "lr": 0.03,
            "model_kwargs": {"layers": [1, 1, 1, 1], "widths": [4, 8, 8, 8]}}  # fmt: skip
    train(tiny(tmp_path, cifar10_dir, "conv", **over))
    assert calls == []
    matmul = train(tiny(tmp_path, cifar10_dir, "matmul", pointwise="matmul", **over))
    assert matmul["pointwise"] == "matmul" and len(calls) > 0  # the run's 1x1 convs did run as matmuls
    for a, b in zip(read_metrics(tmp_path / "conv"), read_metrics(tmp_path / "matmul"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4), (a, b)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4), (a, b)
    ckpt = load_checkpoint(tmp_path / "matmul")
    assert ckpt["config"]["pointwise"] == "matmul"
    assert list(ckpt["model_state"]) == list(load_checkpoint(tmp_path / "conv")["model_state"])
    model, _ = load_trained(tmp_path / "matmul")
    assert not any(type(m).__name__ == "MatmulPointwiseConv2d" for m in model.modules())  # loads as the plain model
    assert resume_config(tmp_path / "matmul", progress=False).pointwise == "matmul"
    assert resume_config(tmp_path / "matmul", pointwise="conv").pointwise == "conv"


def test_pointwise_matmul_refuses_a_model_without_a_plain_1x1_conv(tmp_path):
    cfg = TrainConfig.from_recipe("fast", model="dsrnet50_cifar", device="cpu", pointwise="matmul")
    assert loop._use_pointwise(loop._build(cfg, 10), cfg) == 36
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    with pytest.raises(DsrnetError, match="has no plain 1x1 conv to compute as a matmul; fix: drop --pointwise") as e:
        loop._use_pointwise(net, cfg)
    assert "\n" not in str(e.value)
    assert loop._use_pointwise(net, TrainConfig.from_recipe("fast", model="dsrnet50_cifar", device="cpu")) == 0


def test_dwconv_triton_precompile_pass_leaves_the_run_unchanged(cifar10_dir, tmp_path, monkeypatch):
    """On a GPU, ``dwconv="triton"`` first compiles its kernels in a throw-away forward + backward
    (:func:`dsrnet.kernels.precompile`): the run must not see it (weights, BatchNorm statistics, RNG). Here the
    pass is made to run its function on the CPU fallback, and the run must match one whose pass did nothing."""
    import dsrnet.kernels as kernels

    calls = []

    def run_the_pass(fn, workers=None):
        calls.append(workers)
        fn()

    over = {"epochs": 1, "subset_per_class": 10, "test_subset_per_class": 2, "batch_size": 20, "dwconv": "triton",
            "model_kwargs": {**TINY_MODEL, "drop_path_rate": 0.2}}  # stochastic depth: draws from the global RNG
    monkeypatch.setattr(kernels, "precompile", run_the_pass)
    with_pass = train(tiny(tmp_path, cifar10_dir, "with", **over))
    monkeypatch.setattr(kernels, "precompile", lambda fn, workers=None: None)
    without = train(tiny(tmp_path, cifar10_dir, "without", **over))
    assert len(calls) == 1 and calls[0] >= 1
    for key in DETERMINISTIC_KEYS:
        assert read_metrics(tmp_path / "with")[0][key] == read_metrics(tmp_path / "without")[0][key], key
    a, b = load_checkpoint(tmp_path / "with")["model_state"], load_checkpoint(tmp_path / "without")["model_state"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert with_pass["top1"] == without["top1"]


@pytest.mark.parametrize(
    ("model", "swapped"), [("dsrnet50_cifar", 16), ("mobilenet_v2", 17), ("resnet50_cifar", 0)]
)
@pytest.mark.parametrize(
    ("dwconv", "kind"), [("triton", "TritonDepthwiseConv2d"), ("shifts", "ShiftedDepthwiseConv2d")]
)
def test_dwconv_swaps_every_depthwise_conv_or_refuses_a_model_without(model, swapped, dwconv, kind, tmp_path):
    cfg = TrainConfig.from_recipe("fast", model=model, device="cpu", dwconv=dwconv)
    net = loop._build(cfg, 10)
    keys = list(net.state_dict())
    if swapped:
        assert loop._use_dwconv(net, cfg) == swapped == _dwconv_modules(net, kind)
        assert list(net.state_dict()) == keys
        return
    with pytest.raises(DsrnetError, match="resnet50_cifar has no depthwise 3x3.*fix: drop --dwconv") as e:
        loop._use_dwconv(net, cfg)
    assert "\n" not in str(e.value)
    # train() refuses it before reading any data (there is none here).
    run = tiny(tmp_path, tmp_path / "no-data", model=model, model_kwargs={}, dwconv=dwconv)
    with pytest.raises(DsrnetError, match="no depthwise 3x3 conv"):
        train(run)
    assert loop._use_dwconv(net, TrainConfig.from_recipe("fast", model=model, device="cpu")) == 0  # torch


# ------------------------------------------------------------------------------------------- run folders


def test_resume_into_a_folder_holding_another_run_is_refused(cifar10_dir, tmp_path):
    run_a = tiny(tmp_path, cifar10_dir, "a", epochs=1)
    train(run_a)
    run_b = tiny(tmp_path, cifar10_dir, "b", epochs=1, seed=1)
    train(run_b)
    before = {p.name: p.read_bytes() for p in Path(run_b.out_dir).iterdir() if p.is_file()}
    cfg = resume_config(run_a.out_dir, out_dir=run_b.out_dir)
    with pytest.raises(DsrnetError, match="already holds another run"):
        train(cfg)
    assert {p.name: p.read_bytes() for p in Path(run_b.out_dir).iterdir() if p.is_file()} == before


def test_second_process_into_a_locked_folder_fails_at_once(cifar10_dir, tmp_path):
    from dsrnet.run.rundir import RunDir

    cfg = tiny(tmp_path, cifar10_dir, epochs=1)
    with RunDir(cfg.out_dir).lock():  # as another `dsrnet train` would hold it
        with pytest.raises(DsrnetError, match="in use by another dsrnet process"):
            train(cfg)
        assert not (Path(cfg.out_dir) / "config.yaml").exists()


def test_out_dir_that_is_a_file_fails_before_the_data_is_read(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tiny(tmp_path, tmp_path / "no-data-here", out_dir=str(blocker / "run"))
    with pytest.raises(DsrnetError, match="is a file"):  # not "dataset ... not found": checked first
        train(cfg)


def test_nonfinite_test_loss_stops_before_the_checkpoint(cifar10_dir, tmp_path, monkeypatch):
    real = loop.evaluate
    calls = []

    def nan_on_second_epoch(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            out["loss"] = float("nan")
        return out

    monkeypatch.setattr(loop, "evaluate", nan_on_second_epoch)
    cfg = tiny(tmp_path, cifar10_dir, epochs=3)
    with pytest.raises(DsrnetError, match=r"non-finite test_loss after epoch 2.*last good checkpoint"):
        train(cfg)
    run = Path(cfg.out_dir)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1  # the NaN epoch was never checkpointed
    assert [m["epoch"] for m in read_metrics(run)] == [1] and not (run / "final.json").exists()


@pytest.mark.parametrize("missing_in", ["train", "test"])
def test_a_split_missing_a_class_is_refused(tmp_path, cifar10_dir, missing_in):
    """A test split without a class was scored over the other nine (with --test-subset-per-class too), silently."""
    import numpy as np

    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        with np.load(cifar10_dir / "cifar10" / f"{split}.npz") as z:
            images, labels = z["images"][:2000], z["labels"][:2000]
        if split == missing_in:
            keep = labels != 3
            images, labels = images[keep], labels[keep]
        np.savez(folder / f"{split}.npz", images=images, labels=labels)
    cfg = tiny(tmp_path, tmp_path / "data", subset_per_class=None, test_subset_per_class=5)
    with pytest.raises(DsrnetError, match=rf"the cifar10 {missing_in} split .* has no image of class 3 \(cat\)"):
        train(cfg)
    assert not Path(cfg.out_dir).exists()


def test_deadline_stops_after_an_epoch_marks_the_run_and_resume_completes_it(cifar10_dir, tmp_path, monkeypatch):
    from dsrnet.run.rundir import RunDir

    over = {"epochs": 3, "subset_per_class": 4, "test_subset_per_class": 2, "batch_size": 20}
    # A deadline long past: the run stops after its first epoch, the planned schedule untouched.
    cfg = tiny(tmp_path, cifar10_dir, deadline=1.0, **over)
    final = train(cfg)
    run = RunDir(cfg.out_dir)
    assert final["stopped_early"] is True and final["epochs_done"] == 1 and final["epochs"] == 3
    assert "NOT a full-schedule result" in final["note"]
    assert json.loads(run.final.read_text()) == final
    assert load_checkpoint(run.path)["epoch"] == 1 and len(read_metrics(run.path)) == 1
    assert not run.finished and run.resumable  # never counted as a finished run
    # Resumed without a deadline (the saved one, long past, is not carried over) it completes the schedule it was
    # started with.
    assert resume_config(cfg.out_dir, deadline=2.0).deadline == 2.0  # a new time box when asked for
    # Interrupted while resumed, the folder is a resumable run again: the stopped-early final.json (epoch 1)
    # no longer describes it and is gone.
    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop._Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(resume_config(cfg.out_dir, progress=False))
    monkeypatch.undo()
    assert not run.final.exists() and run.resumable and load_checkpoint(run.path)["epoch"] == 1
    resumed = train(resume_config(cfg.out_dir, progress=False))
    assert resumed["stopped_early"] is False and resumed["epochs_done"] == 3 and "note" not in resumed
    assert run.finished
    lrs = [m["lr"] for m in read_metrics(run.path)]
    spe = 40 // 20
    assert lrs == pytest.approx([cfg.lr * lr_factor(e * spe, cfg=cfg, steps_per_epoch=spe) for e in range(3)])
    # The finished checkpoint resumed into another folder would leave a run folder without a checkpoint: refused.
    with pytest.raises(DsrnetError, match="has trained all its 3 epochs: there is nothing to resume into"):
        train(resume_config(cfg.out_dir, out_dir=str(tmp_path / "elsewhere"), progress=False))
    assert not (tmp_path / "elsewhere").exists()
    # A deadline far ahead changes nothing.
    far = train(tiny(tmp_path, cifar10_dir, "far", deadline=time.time() + 3600, **over))
    assert far["stopped_early"] is False and far["epochs_done"] == 3


@pytest.mark.parametrize("eval_every", [2, 0])
def test_eval_every_scores_fewer_epochs_and_trains_the_same(cifar10_dir, tmp_path, eval_every):
    over = {"epochs": 3, "subset_per_class": 4, "test_subset_per_class": 2, "batch_size": 20, "ema_decay": 0.9}
    every = train(tiny(tmp_path, cifar10_dir, "every", **over))
    fewer = train(tiny(tmp_path, cifar10_dir, "fewer", eval_every=eval_every, **over))
    rows = read_metrics(tmp_path / "fewer")
    scored = [r["epoch"] for r in rows if "test_top1_error" in r]
    assert scored == ([2, 3] if eval_every == 2 else [3])  # every 2nd epoch and always the last
    assert all("raw_test_top1_error" not in r and r["eval_time_s"] == 0.0 for r in rows if r["epoch"] not in scored)
    # Scoring changes nothing in the training: same weights, same final metrics, same training rows.
    a, b = load_checkpoint(tmp_path / "every"), load_checkpoint(tmp_path / "fewer")
    for state in ("model_state", "train_model_state"):
        assert all(torch.equal(v, b[state][k]) for k, v in a[state].items()), state
    keys = ("top1_error", "top3_error", "test_loss", "raw_top1_error", "train_loss", "epochs_done")
    assert {k: every[k] for k in keys} == {k: fewer[k] for k in keys}
    train_keys = ("epoch", "lr", "train_loss", "train_top1")
    assert [[r[k] for k in train_keys] for r in read_metrics(tmp_path / "every")] == [
        [r[k] for k in train_keys] for r in rows
    ]
    with pytest.raises(DsrnetError, match="eval_every"):
        TrainConfig(eval_every=-1)


def test_deadline_stop_at_an_unscored_epoch_scores_it(cifar10_dir, tmp_path):
    # A deadline long past stops the run after epoch 1, which eval_every=5 would not score: the run's final
    # metrics must still be that epoch's own.
    cfg = tiny(tmp_path, cifar10_dir, epochs=3, subset_per_class=4, test_subset_per_class=2, batch_size=20,
               deadline=1.0, eval_every=5)  # fmt: skip
    final = train(cfg)
    (row,) = read_metrics(Path(cfg.out_dir))
    assert final["stopped_early"] and final["epochs_done"] == 1 and row["eval_time_s"] > 0
    assert final["top1_error"] == row["test_top1_error"]


@pytest.mark.parametrize(("rule", "epochs_done"), [("epoch", 4), ("schedule", 2)])
def test_deadline_rule_schedule_stops_as_soon_as_the_rest_cannot_finish(cifar10_dir, tmp_path, monkeypatch, rule,
                                                                       epochs_done):  # fmt: skip
    # A clock on which every epoch takes 100 s from end to end; the deadline leaves room for 3.5 of them. The
    # epoch rule runs until the next epoch would overrun (4 of 5); the schedule rule stops after the second epoch,
    # the first whose pace it knows, since the 3 left would need 300 s more with 150 s left.
    ticks = iter(range(1, 100))
    monkeypatch.setattr(loop, "_wall_clock", lambda: 1e9 + 100 * next(ticks))
    cfg = tiny(tmp_path, cifar10_dir, rule, epochs=5, subset_per_class=2, test_subset_per_class=1, batch_size=20,
               deadline=1e9 + 350, deadline_rule=rule)  # fmt: skip
    final = train(cfg)
    assert final["stopped_early"] is True and final["epochs_done"] == epochs_done and final["epochs"] == 5
    assert cfg.deadline_rule == rule and f"deadline_rule: {rule}" in (tmp_path / rule / "config.yaml").read_text()


@pytest.mark.parametrize(("compiled", "finishes"), [(True, True), (False, False)])
def test_deadline_rule_schedule_counts_a_compiling_first_test_pass_once(cifar10_dir, tmp_path, monkeypatch, compiled,
                                                                        finishes):  # fmt: skip
    """Compiled, the first test pass compiles (seconds on a GPU, a fraction later). With eval_every=5 it falls after
    a projected epoch: multiplied by the scored epochs left it stopped a run that fitted. A clock on which each
    epoch trains 10 s, the first test pass takes 60 s and later ones 1 s: 20 epochs end after 263 s, inside the
    350 s. Uncompiled, a pass costs what the first one did: the three left are counted, and the run cannot fit."""
    real_test = loop._Trainer.test
    passes = []

    def timed_test(self):
        out = real_test(self)
        out["eval_time_s"] = self._last_eval_s = 60.0 if not passes or not compiled else 1.0
        passes.append(out["eval_time_s"])
        return out

    clock = {"t": 1e9}

    def wall_clock():  # called once per epoch, at its end: 10 s of training plus that epoch's test pass
        clock["t"] += 10 + (passes[-1] if passes and len(passes) > wall_clock.seen else 0)
        wall_clock.seen = len(passes)
        return clock["t"]

    wall_clock.seen = 0
    monkeypatch.setattr(loop._Trainer, "test", timed_test)
    monkeypatch.setattr(loop, "_wall_clock", wall_clock)
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)  # the rule reads cfg.compile; no compiler
    cfg = tiny(tmp_path, cifar10_dir, epochs=20, subset_per_class=2, test_subset_per_class=1, batch_size=20,
               eval_every=5, deadline=1e9 + 350, deadline_rule="schedule", compile=compiled)  # fmt: skip
    final = train(cfg)
    if finishes:
        assert final["stopped_early"] is False and final["epochs_done"] == 20 and passes == [60.0, 1.0, 1.0, 1.0]
    else:  # at epoch 5: 110 s + 15 x 10 s + 3 x 60 s > 350 s
        assert final["stopped_early"] is True and final["epochs_done"] == 5


def test_deadline_rule_is_checked():
    with pytest.raises(DsrnetError, match="deadline_rule"):
        TrainConfig(deadline_rule="asap")


@pytest.mark.parametrize(("model", "zeroed"), [("dsrnet50_cifar", 16), ("resnet50_cifar", 16), ("mobilenet_v2", 0)])
def test_zero_init_residual_setting_starts_blocks_as_identities(model, zeroed):
    def zero_scales(net):
        return sum(
            1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) and not bool(m.weight.detach().any())
        )

    on = loop._build(TrainConfig.from_recipe("fast", model=model, device="cpu", zero_init_residual=True), 10)
    off = loop._build(TrainConfig.from_recipe("fast", model=model, device="cpu", zero_init_residual=False), 10)
    assert zero_scales(on) == zeroed and zero_scales(off) == 0  # one per residual block; MobileNetV2 has none


# ------------------------------------------------------------------------------------------------ fine-tuning


def test_init_weights_starts_from_a_trained_run(learned_run, cifar10_dir, tmp_path):
    """``init_weights`` (fine-tuning): with a learning rate too small to move the weights, one epoch from the learned
    run scores what that run scored, where the same epoch from a random start stays near chance (10 %)."""
    cfg, learned = learned_run
    common = {"epochs": 1, "lr": 1e-9, "warmup_epochs": 0, "subset_per_class": 50, "test_subset_per_class": 30}
    tuned = train(tiny(tmp_path, cifar10_dir, "tuned", init_weights=cfg.out_dir, **common))
    scratch = train(tiny(tmp_path, cifar10_dir, "scratch", **common))
    assert abs(tuned["top1"] - learned["top1"]) < 5.0, (tuned["top1"], learned["top1"])
    assert tuned["top1"] > scratch["top1"] + 5.0, (tuned["top1"], scratch["top1"])
    assert tuned["init_weights"] == cfg.out_dir and "init_weights" not in scratch
    saved = yaml.safe_load((tmp_path / "tuned" / "config.yaml").read_text())
    assert saved["init_weights"] == cfg.out_dir


def test_init_weights_of_another_network_fails_before_training(learned_run, cifar10_dir, tmp_path):
    cfg, _ = learned_run
    wider = tiny(tmp_path, cifar10_dir, "wider", init_weights=cfg.out_dir, model_kwargs={"widths": [16, 16, 32, 64]})
    with pytest.raises(DsrnetError, match=r"do not fit this model .*they record: dsrnet50, num_classes 10, model_kwargs"):
        train(wider)
    assert not (tmp_path / "wider" / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------- weight decay


def _group_ids(groups: list[dict]) -> list[tuple[float, list[int]]]:
    return [(g["weight_decay"], [id(p) for p in g["params"]]) for g in groups]


@pytest.mark.parametrize(("model", "depthwise"), [("dsrnet50_cifar", 16), ("mobilenet_v2", 17), ("resnet50_cifar", 0)])
def test_dw_weight_decay_off_exempts_exactly_the_depthwise_weights(model, depthwise):
    net = loop._build(TrainConfig.from_recipe("fast", model=model, device="cpu"), 10)
    params = list(net.parameters())
    # Depthwise filters are the (C, 1, k, k) conv weights with C > 1; nothing else has that shape in these models.
    dw = [p for p in params if p.ndim == 4 and p.shape[1] == 1 and p.shape[0] > 1]
    one_d = [p for p in params if p.ndim == 1]
    assert len(dw) == depthwise and one_d
    for decay_bn in (True, False):
        on = loop._param_groups(net, 5e-4, decay_bn, True)
        off = loop._param_groups(net, 5e-4, decay_bn, False)
        want = [len(params)] if decay_bn else [len(params) - len(one_d), len(one_d)]
        assert [len(g["params"]) for g in on] == want  # the switch on: the groups as before it existed
        if not depthwise:  # nothing to exempt: the same groups as with the switch on
            assert _group_ids(off) == _group_ids(on)
            continue
        exempt = dw if decay_bn else [p for p in params if p.ndim == 1 or any(p is w for w in dw)]
        assert len(off) == 2 and [g["weight_decay"] for g in off] == [5e-4, 0.0]
        assert [id(p) for p in off[1]["params"]] == [id(p) for p in exempt]  # exactly these, in model order
        assert [id(p) for p in off[0]["params"]] == [id(p) for p in params if all(p is not e for e in exempt)]
        if model == "dsrnet50_cifar":  # the Triton swap keeps the parameter objects: the same groups after it
            swapped = loop._build(TrainConfig.from_recipe("fast", model=model, device="cpu"), 10)
            before = _group_ids(loop._param_groups(swapped, 5e-4, decay_bn, False))
            assert loop._use_dwconv(swapped, TrainConfig.from_recipe("fast", model=model, device="cpu", dwconv="triton")) == 16
            assert _group_ids(loop._param_groups(swapped, 5e-4, decay_bn, False)) == before


def test_the_recipe_reaches_the_optimizer_and_the_loss(cifar10_dir, tmp_path):
    # The config resolves the recipe; this checks its values are what the optimiser and the loss are built with.
    from dsrnet.train.distributed import DistContext

    cfg = tiny(tmp_path, cifar10_dir, weight_decay=3e-4, label_smoothing=0.2, momentum=0.8)
    trainer = loop._Trainer(cfg, DistContext(), torch.device("cpu"))
    d = trainer.optimizer.defaults
    assert cfg.nesterov is True and d["nesterov"] is True and d["momentum"] == 0.8 and d["lr"] == cfg.lr
    decayed = [g["weight_decay"] for g in trainer.optimizer.param_groups]
    assert max(decayed) == 3e-4  # (BN and bias parameters exempt: bn_bias_weight_decay=False)
    assert trainer.criterion.label_smoothing == 0.2
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_factor(0, cfg=cfg,
                                                                       steps_per_epoch=trainer.steps_per_epoch))  # fmt: skip


def test_compile_mode_reaches_torch_compile_and_bad_modes_are_refused(cifar10_dir, tmp_path, monkeypatch):
    from dsrnet.train.distributed import DistContext

    modes = []

    def fake_compile(module, *, mode=None, **kwargs):
        modes.append(mode)
        return module

    monkeypatch.setattr(loop.torch, "compile", fake_compile)
    cfg = tiny(tmp_path, cifar10_dir, compile=True, compile_mode="reduce-overhead", ema_decay=0.9)
    loop._Trainer(cfg, DistContext(), torch.device("cpu"))
    assert modes == ["reduce-overhead", "reduce-overhead"]  # the trained model and its weight average
    with pytest.raises(DsrnetError, match="compile_mode.*one of default, reduce-overhead"):
        tiny(tmp_path, cifar10_dir, compile_mode="fastest")


def test_a_checkpoint_whose_resume_fields_are_broken_is_one_line_before_anything_trains(cifar10_dir, tmp_path):
    """A hand-edited or foreign checkpoint gave KeyError/IndexError tracebacks on --resume, or (history not a list)
    trained an epoch and wrote run files before failing."""
    cfg = tiny(tmp_path, cifar10_dir, epochs=2, deadline=1.0, subset_per_class=4, test_subset_per_class=2,
               batch_size=20)  # fmt: skip
    train(cfg)  # stopped after epoch 1 of 2: resumable
    good = torch.load(Path(cfg.out_dir) / "checkpoint.pt", weights_only=True)
    cases = {
        "config": (lambda c: c.pop("config"), "bad 'config' field"),
        "epoch": (lambda c: c.pop("epoch"), r"bad 'epoch' field .*expected an integer in 0\.\.2"),
        "epoch str": (lambda c: c.update(epoch="x"), "bad 'epoch' field"),
        "epoch high": (lambda c: c.update(epoch=3), "bad 'epoch' field"),
        "history": (lambda c: c.update(history="junk"), r"bad 'history' field .*a list of 1 per-epoch records"),
        "rng": (lambda c: c.update(rng_state={"python": [1]}), "bad 'rng_state' field"),
        "rng missing": (lambda c: c.pop("rng_state"), "bad 'rng_state' field"),
        "weights only": (lambda c: c.pop("optimizer_state"), "holds weights only"),
    }
    for name, (edit, message) in cases.items():
        ckpt = {**good}
        edit(ckpt)
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        torch.save(ckpt, folder / "checkpoint.pt")
        with pytest.raises(DsrnetError, match=message) as err:
            train(resume_config(folder, progress=False))
        assert "\n" not in str(err.value)
        with pytest.raises(DsrnetError, match=message):  # the Trainer's own check (resume= set by hand)
            train(TrainConfig(**{**cfg.to_dict(), "deadline": None, "resume": str(folder), "out_dir": str(folder)}))
        assert sorted(p.name for p in folder.iterdir() if p.name != ".lock") == ["checkpoint.pt"], name  # nothing written
    # --no-compile on a run compiled with reduce-overhead: the mode goes too (it was refused as "only with compile")
    compiled = {**good, "config": {**good["config"], "compile": True, "compile_mode": "reduce-overhead"}}
    (tmp_path / "compiled").mkdir()
    torch.save(compiled, tmp_path / "compiled" / "checkpoint.pt")
    resumed = resume_config(tmp_path / "compiled", compile=False)
    assert (resumed.compile, resumed.compile_mode) == (False, "default")
    unknown = {**good, "config": {**good["config"], "new_future_field": 1}}  # from a newer dsrnet, or edited
    (tmp_path / "newer").mkdir()
    torch.save(unknown, tmp_path / "newer" / "checkpoint.pt")
    with pytest.raises(DsrnetError, match=r"has settings this dsrnet does not know \(new_future_field\); fix: resume"):
        resume_config(tmp_path / "newer")  # was a TypeError from TrainConfig


def test_a_global_batch_that_leaves_one_image_per_process_is_refused_before_data_is_read(tmp_path):
    """--batch-size 2 over 2 DDP processes passed the config's check (global batch >= 2) and every process then
    failed in BatchNorm with a traceback."""
    from dsrnet.train.distributed import DistContext

    two = DistContext()
    two.world_size = 2
    cfg = TrainConfig.from_recipe("paper", device="cpu", batch_size=2, data_dir=str(tmp_path / "no-data"),
                                  out_dir=str(tmp_path / "run"))  # fmt: skip
    with pytest.raises(DsrnetError, match="gives each of 2 processes 1 image per batch.*fix: use --batch-size 4"):
        loop._load_data(cfg, two, torch.device("cpu"))
    with pytest.raises(DsrnetError, match="batch size 3 does not split over 2 processes"):
        loop._load_data(TrainConfig(**{**cfg.to_dict(), "batch_size": 3}), two, torch.device("cpu"))

