"""Training engine (issue 4), library level: a tiny real-CIFAR-10 run learns, resume is bit-exact, a NaN loss
stops the run without touching the last checkpoint, eval/predict rebuild everything from the checkpoint alone,
configs resolve recipe < YAML < explicit values. CPU only; a narrow DSRNet-50 (widths 8..64) keeps it fast."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dsrnet.data import DATASETS
from dsrnet.errors import DsrnetError
from dsrnet.infer import evaluate_checkpoint, model_from_checkpoint, predict
from dsrnet.run.checkpoint import load_checkpoint
from dsrnet.train import RECIPES, TrainConfig, load_config_file, loop, lr_factor, resume_config, train

TINY_MODEL = {"widths": [8, 16, 32, 64], "zero_init_residual": True}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, data_dir, name="run", **over) -> TrainConfig:
    """A CPU run of a narrow DSRNet-50 on a per-class subset of real CIFAR-10."""
    kw = {
        "model": "dsrnet50",
        "model_kwargs": TINY_MODEL,
        "dataset": "cifar10",
        "data_dir": str(data_dir),
        "device": "cpu",
        "recipe": "fast",
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.1,
        "warmup_epochs": 1,
        "subset_per_class": 10,
        "test_subset_per_class": 5,
        "progress": False,
        "tensorboard": False,
        "out_dir": str(tmp_path / name),
    }
    kw.update(over)
    return TrainConfig.from_recipe(**kw)


def read_metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


DETERMINISTIC_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "test_loss",
    "test_top1",
    "test_top3",
    "test_top5",
)


@pytest.fixture(scope="module")
def learned_run(cifar10_dir, tmp_path_factory):
    """8 epochs on 500 real training images (50 per class), tested on 300; eval/predict tests reuse it."""
    tmp = tmp_path_factory.mktemp("learn")
    cfg = tiny(tmp, cifar10_dir, epochs=8, subset_per_class=50, test_subset_per_class=30, tensorboard=True)
    final = train(cfg)
    return cfg, final


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


def test_resume_after_interruption_matches_uninterrupted_run(cifar10_dir, tmp_path, monkeypatch):
    full = tiny(tmp_path, cifar10_dir, "full", epochs=4)
    train(full)

    # Interrupt the second run inside epoch 3 (after epoch 2's checkpoint), as Ctrl-C would.
    real_evaluate, calls = loop.evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", interrupted)
    part = tiny(tmp_path, cifar10_dir, "part", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train(part)
    run = tmp_path / "part"
    assert load_checkpoint(run)["epoch"] == 2 and not (run / "final.json").exists()
    monkeypatch.setattr(loop, "evaluate", real_evaluate)

    resumed = train(TrainConfig.from_recipe(**{**part.to_dict(), "resume": "auto"}))
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(run)
    assert a["model_state"].keys() == b["model_state"].keys()
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
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
    # A finished run resumed: nothing left to train, final.json is rewritten identically.
    before = (tmp_path / "run" / "final.json").read_text()
    assert train(resume_config(cfg.out_dir, progress=False)) == json.loads(before)


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


# ---------------------------------------------------------------------------------------------- eval/predict


def test_evaluate_checkpoint_writes_metrics_per_class_and_confusion(learned_run, cifar10_dir, tmp_path):
    cfg, final = learned_run
    out = tmp_path / "eval"
    m = evaluate_checkpoint(
        Path(cfg.out_dir) / "checkpoint.pt", data_dir=str(cifar10_dir), device="cpu",
        test_subset_per_class=30, out_dir=out,
    )  # fmt: skip
    assert m["test_images"] == 300
    # Same subset, same weights: eval reproduces the run's final-epoch numbers from the checkpoint alone.
    assert m["top1_error"] == pytest.approx(final["top1_error"])
    assert m["top3_error"] == pytest.approx(final["top3_error"])
    assert m["top5_error"] == pytest.approx(final["top5_error"])
    assert m["top5_error"] <= m["top3_error"] <= m["top1_error"]
    assert json.loads((out / "metrics.json").read_text())["top1_error"] == m["top1_error"]
    rows = (out / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,correct,total,accuracy" and len(rows) == 11
    assert sum(int(r.split(",")[2]) for r in rows[1:]) == 300
    correct = sum(int(r.split(",")[1]) for r in rows[1:])
    assert 100 * correct / 300 == pytest.approx(100 - m["top1_error"])
    conf = np.array(
        [[int(v) for v in r.split(",")[1:]] for r in (out / "confusion.csv").read_text().splitlines()[1:]]
    )
    assert conf.shape == (10, 10) and conf.sum() == 300 and np.trace(conf) == correct
    assert (conf.sum(axis=1) == 30).all()
    with Image.open(out / "confusion.png") as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_predict_any_size_image(learned_run, cifar10_dir, tmp_path):
    cfg, _ = learned_run
    rng = np.random.default_rng(0)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 255, (75, 120, 4), dtype=np.uint8), "RGBA").save(big)
    test = np.load(cifar10_dir / "cifar10" / "test.npz")
    small = tmp_path / "frog.jpg"
    Image.fromarray(test["images"][4]).resize((17, 23)).save(small)
    res = predict(Path(cfg.out_dir), [big, small], top_k=3, device="cpu")
    assert len(res) == 2 and all(len(r) == 3 for r in res)
    for r in res:
        probs = [p for _, p in r]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(c in DATASETS["cifar10"].classes for c, _ in r)
    assert len(predict(Path(cfg.out_dir), [big], top_k=50, device="cpu")[0]) == 10  # capped at C
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with pytest.raises(DsrnetError, match="cannot read image"):
        predict(Path(cfg.out_dir), [not_image])
    with pytest.raises(DsrnetError, match="not found"):
        predict(Path(cfg.out_dir), [tmp_path / "missing.png"])


def test_checkpoint_for_another_model_is_refused(learned_run, tmp_path):
    cfg, _ = learned_run
    ckpt = load_checkpoint(cfg.out_dir)
    ckpt["model_kwargs"] = {"widths": [16, 32, 64, 128]}
    with pytest.raises(DsrnetError, match="does not fit model 'dsrnet50'"):
        model_from_checkpoint(ckpt)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes((Path(cfg.out_dir) / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(DsrnetError, match="cannot be read safely"):
        load_checkpoint(bad)
    with pytest.raises(DsrnetError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(DsrnetError, match="not a dsrnet checkpoint"):
        load_checkpoint(foreign)


# -------------------------------------------------------------------------------------------------- config


def test_recipe_defaults_and_overrides():
    paper = TrainConfig.from_recipe("paper", device="cpu")
    assert (paper.epochs, paper.batch_size, paper.lr, paper.weight_decay, paper.momentum) == (
        160,
        128,
        0.1,
        5e-4,
        0.9,
    )
    assert paper.milestones == [80, 120] and paper.schedule == "step" and not paper.nesterov
    assert paper.precision == "fp32" and paper.bn_bias_weight_decay and paper.label_smoothing == 0
    assert TrainConfig.from_recipe("paper", device="cpu", epochs=10).milestones == [5, 7]
    fast = TrainConfig.from_recipe("fast", device="cpu")
    assert (
        fast.batch_size == 512
        and fast.nesterov
        and fast.label_smoothing == 0.1
        and not fast.bn_bias_weight_decay
    )
    assert fast.milestones == [] and fast.schedule == "linear"
    # The GPU-only speed-ups fall back on a CPU unless asked for explicitly.
    assert (fast.precision, fast.channels_last, fast.compile) == ("fp32", False, False)
    assert (
        RECIPES["fast"]["precision"] == "bf16"
        and RECIPES["fast"]["compile"]
        and RECIPES["fast"]["channels_last"]
    )
    explicit = TrainConfig.from_recipe("fast", device="cpu", precision="bf16", channels_last=True, lr="4e-1")
    assert explicit.precision == "bf16" and explicit.channels_last and explicit.lr == 0.4
    assert TrainConfig(recipe="fast", device="cpu") == fast
    assert TrainConfig.from_recipe(
        "paper", device="cpu", model_kwargs='{"widths": [8, 16, 32, 64]}'
    ).model_kwargs == {"widths": [8, 16, 32, 64]}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model": "resnet5"}, "unknown model 'resnet5'; fix: choose one of"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
        ({"recipe": "slow"}, "unknown recipe 'slow'"),
        ({"precision": "fp8"}, "bad value for precision: 'fp8'"),
        ({"epochs": -3}, "bad value for epochs: -3"),
        ({"epochs": "ten"}, "bad value for epochs: 'ten'; fix: use an integer"),
        ({"batch_size": 0}, "bad value for batch_size"),
        ({"lr": 0}, "bad value for lr"),
        ({"lr": "nan"}, "bad value for lr"),
        ({"momentum": 1.5}, "bad value for momentum"),
        ({"label_smoothing": 1.0}, "bad value for label_smoothing"),
        ({"schedule": "poly"}, "bad value for schedule"),
        ({"milestones": [120, 80]}, "bad value for milestones"),
        ({"milestones": [10], "schedule": "cosine"}, "milestones"),
        ({"warmup_epochs": 500}, "bad value for warmup_epochs"),
        ({"device": "tpu"}, "device"),
        ({"model_kwargs": "{not json"}, "bad value for model_kwargs"),
        ({"subset_per_class": 0}, "bad value for subset_per_class"),
        ({"nesterov": "maybe"}, "bad value for nesterov"),
        ({"sync_bn": True}, "sync_bn"),
        ({"lrr": 0.1}, "unknown config key"),
    ],
)
def test_bad_config_values_are_one_line_errors(override, message):
    with pytest.raises(DsrnetError, match=message) as err:
        TrainConfig.from_recipe(**{"device": "cpu", **override})
    assert "\n" not in str(err.value)


def test_lr_schedules():
    spe = 10
    paper = TrainConfig.from_recipe("paper", device="cpu", epochs=8)  # milestones 4, 6
    f = [lr_factor(s, cfg=paper, steps_per_epoch=spe) for s in range(80)]
    assert (
        f[0] == f[39] == 1 and f[40] == f[59] == pytest.approx(0.1) and f[60] == f[79] == pytest.approx(0.01)
    )
    fast = TrainConfig.from_recipe("fast", device="cpu", epochs=10, warmup_epochs=2)
    f = [lr_factor(s, cfg=fast, steps_per_epoch=spe) for s in range(100)]
    assert f[0] == pytest.approx(1 / 20) and f[19] == 1 and f[20] == 1  # linear warm-up to the peak
    assert all(a > b for a, b in zip(f[20:], f[21:], strict=False)) and 0 < f[-1] < 0.02  # linear to ~0
    cos = TrainConfig.from_recipe("fast", device="cpu", epochs=10, warmup_epochs=0, schedule="cosine")
    f = [lr_factor(s, cfg=cos, steps_per_epoch=spe) for s in range(100)]
    assert f[0] == 1 and f[50] == pytest.approx(0.5) and f[-1] < 0.001


def test_yaml_config_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("recipe: fast\nepochs: 3\nweight-decay: 5e-4\nmodel_kwargs:\n  widths: [8, 16, 32, 64]\n")
    values = load_config_file(good)
    assert values == {
        "recipe": "fast",
        "epochs": 3,
        "weight_decay": "5e-4",
        "model_kwargs": {"widths": [8, 16, 32, 64]},
    }
    cfg = TrainConfig.from_recipe(**{**values, "device": "cpu"})
    assert cfg.weight_decay == 5e-4 and cfg.epochs == 3 and cfg.batch_size == 512
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(DsrnetError, match="unknown key.*learning_rate.*bad.yaml"):
        load_config_file(bad_key)
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [3\n")
    with pytest.raises(DsrnetError, match="not valid YAML"):
        load_config_file(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(DsrnetError, match="must hold a mapping"):
        load_config_file(listy)
    with pytest.raises(DsrnetError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")


def test_recipe_config_files_match_the_recipes():
    configs = Path(__file__).resolve().parents[2] / "configs"
    paper = load_config_file(configs / "paper.yaml")
    assert TrainConfig.from_recipe(**paper, device="cpu") == TrainConfig.from_recipe(
        "paper", model="dsrnet50", device="cpu"
    )
    fast = load_config_file(configs / "fast.yaml")
    assert TrainConfig.from_recipe(**fast, device="cpu") == TrainConfig.from_recipe(
        "fast", model="dsrnet50_cifar", device="cpu"
    )
    smoke = TrainConfig.from_recipe(**load_config_file(configs / "cpu-smoke.yaml"))
    assert smoke.device == "cpu" and smoke.model_kwargs["widths"] == [8, 16, 32, 64]


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


def test_recipe_lr_scales_with_batch_size_unless_given():
    assert TrainConfig.from_recipe("fast", device="cpu").lr == pytest.approx(0.4)
    assert TrainConfig.from_recipe("fast", device="cpu", batch_size=128).lr == pytest.approx(0.1)
    assert TrainConfig.from_recipe("paper", device="cpu", batch_size=256).lr == pytest.approx(0.2)
    assert TrainConfig.from_recipe("fast", device="cpu", batch_size=128, lr=0.3).lr == pytest.approx(0.3)


def test_deadline_stops_after_an_epoch_marks_the_run_and_resume_completes_it(cifar10_dir, tmp_path):
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
    # Resumed without the deadline it completes the schedule it was started with.
    resumed = train(resume_config(cfg.out_dir, deadline=None, progress=False))
    assert resumed["stopped_early"] is False and resumed["epochs_done"] == 3 and "note" not in resumed
    assert run.finished
    lrs = [m["lr"] for m in read_metrics(run.path)]
    spe = 40 // 20
    assert lrs == pytest.approx([cfg.lr * lr_factor(e * spe, cfg=cfg, steps_per_epoch=spe) for e in range(3)])
    # A deadline far ahead changes nothing.
    far = train(tiny(tmp_path, cifar10_dir, "far", deadline=time.time() + 3600, **over))
    assert far["stopped_early"] is False and far["epochs_done"] == 3


@pytest.mark.parametrize(("model", "zeroed"), [("dsrnet50_cifar", 16), ("resnet50_cifar", 16), ("mobilenet_v2", 0)])
def test_zero_init_residual_setting_starts_blocks_as_identities(model, zeroed):
    def zero_scales(net):
        return sum(
            1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) and not bool(m.weight.detach().any())
        )

    on = loop._build(TrainConfig.from_recipe("fast", model=model, device="cpu", zero_init_residual=True), 10)
    off = loop._build(TrainConfig.from_recipe("fast", model=model, device="cpu", zero_init_residual=False), 10)
    assert zero_scales(on) == zeroed and zero_scales(off) == 0  # one per residual block; MobileNetV2 has none
