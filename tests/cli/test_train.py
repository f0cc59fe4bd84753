"""``dsrnet train / eval / predict`` from the command line (issue 4): help with defaults, config precedence,
one-line errors for every bad input, a run killed with SIGKILL resumes from a loadable checkpoint, and DDP
with 2 CPU processes under torchrun matches a single-process run with the same global batch."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dsrnet.cli.main import main
from dsrnet.errors import DsrnetError
from dsrnet.models import _registry
from dsrnet.run.checkpoint import save_checkpoint
from dsrnet.train import resume_config

REPO = Path(__file__).resolve().parents[2]
TINY = '{"widths": [8, 16, 32, 64], "zero_init_residual": true}'


def tiny_args(data_dir, out_dir, *extra: str) -> list[str]:
    return [
        "train", "--model", "dsrnet50", "--model-kwargs", TINY, "--data-dir", str(data_dir), "--device", "cpu",
        "--recipe", "fast", "--batch-size", "20", "--lr", "0.05", "--subset-per-class", "4",
        "--test-subset-per-class", "2", "--epochs", "2", "--no-progress", "--no-tensorboard", "--out-dir",
        str(out_dir), *extra,
    ]  # fmt: skip


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout, stderr of ``dsrnet ARGV``; usage errors (argparse) exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def env_1thread() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


pytestmark = pytest.mark.usefixtures("one_thread")


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "default" in out
    if command == "train":
        assert "paper 160, fast 40" in out and "paper 0.1, fast 0.4" in out and "(default: auto)" in out
        for flag in ("--resume", "--compile", "--channels-last", "--precision", "--seed", "--model-kwargs"):
            assert flag in out
        assert "--dwconv DWCONV" in out and "(default: torch); one of torch, shifts, triton" in out
    elif command == "eval":
        assert "(default: 500 on a GPU, 32 on a CPU)" in out and "--checkpoint" in out
    else:
        assert "(default: 5)" in out and "IMAGE" in out


def test_config_precedence_recipe_yaml_flags(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: fast\nepochs: 12\nlr: 0.2\nlabel-smoothing: 0.05\n")
    code, out, _ = run_cli(
        capsys, ["train", "--config", str(cfg), "--epochs", "30", "--device", "cpu", "--print-config"]
    )
    assert code == 0
    resolved = yaml.safe_load(out)
    assert resolved["epochs"] == 30  # flag beats YAML
    assert resolved["lr"] == 0.2 and resolved["label_smoothing"] == 0.05  # YAML beats recipe
    assert resolved["batch_size"] == 512 and resolved["nesterov"] is True  # recipe fills the rest
    assert resolved["out_dir"] == str(Path("runs/cifar10/dsrnet50-fast-seed0"))
    # The printed config, fed back, resolves to itself.
    again = tmp_path / "again.yaml"
    again.write_text(out)
    code, out2, _ = run_cli(capsys, ["train", "--config", str(again), "--print-config"])
    assert code == 0 and yaml.safe_load(out2) == resolved


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def cli_run(cifar10_dir, tmp_path_factory):
    """A finished 2-epoch tiny run made through the CLI (used by the eval/predict/error tests)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(tiny_args(cifar10_dir, run)) == 0
    return run


BAD_TRAIN = [
    (["--model", "dsrnet5"], "unknown model 'dsrnet5'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--precision", "fp8"], "bad value for precision"),
    (["--epochs", "-1"], "bad value for epochs: -1"),
    (["--epochs", "two"], "bad value for epochs: 'two'"),
    (["--lr", "fast"], "bad value for lr"),
    (["--recipe", "quick"], "unknown recipe 'quick'"),
    (["--model-kwargs", "{widths: 8}"], "bad value for model_kwargs"),
    (["--model-kwargs", '{"no_such_arg": 1}'], "no_such_arg"),
    (["--milestones", "5", "x"], "bad value for milestones"),
    (["--device", "cuda:7"], "device"),
    (["--resume", "missing/checkpoint.pt"], "not found"),
    (["--config", "missing.yaml"], "config file missing.yaml not found"),
    (["--dwconv", "cudnn"], "bad value for dwconv: 'cudnn'; fix: use one of torch, shifts, triton"),
    (["--deadline", "1795677036000"], "a Unix time in seconds (> 0; not milliseconds)"),
    (["--compile-mode", "fastest"], "bad value for compile_mode"),
    (["--dwconv", "triton", "--model", "resnet50", "--model-kwargs", "{}"], "resnet50 has no depthwise 3x3"),
]


@pytest.mark.parametrize("extra, message", BAD_TRAIN)
def test_bad_train_inputs_one_line_exit_2(extra, message, cifar10_dir, tmp_path, capsys):
    if extra[0] == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code, _, err = run_cli(capsys, tiny_args(cifar10_dir, tmp_path / "bad", *extra))
    assert code == 2
    assert err.startswith("dsrnet: error: ") and err.count("\n") == 1, err
    assert message in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval"], "the following arguments are required: --checkpoint"),
        (["predict", "--checkpoint", "run"], "the following arguments are required: IMAGE"),
        (["train", "--epochs"], "argument --epochs: expected one argument"),
    ],
)
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1, err


def test_bad_yaml_key_and_missing_data(cifar10_dir, tmp_path, capsys):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("epochs: 2\nbatchsize: 64\n")
    code, _, err = run_cli(capsys, ["train", "--config", str(cfg)])
    assert code == 2 and "unknown key(s) batchsize" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, tiny_args(tmp_path / "no-data", tmp_path / "r"))
    assert code == 2 and "dataset cifar10" in err and "not found" in err and err.count("\n") == 1


def test_existing_run_resume_mismatch_and_foreign_checkpoints(cli_run, cifar10_dir, tmp_path, capsys):
    # Same out-dir without --resume: refused, the finished run is untouched.
    before = (cli_run / "final.json").read_bytes()
    code, _, err = run_cli(capsys, tiny_args(cifar10_dir, cli_run))
    assert code == 2 and "already holds a run" in err and (cli_run / "final.json").read_bytes() == before
    # --resume with another model, or another hyper-parameter: refused.
    code, _, err = run_cli(capsys, ["train", "--resume", str(cli_run), "--model", "resnet50"])
    assert code == 2 and "is for dsrnet50" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, ["train", "--resume", "--out-dir", str(cli_run), "--epochs", "9"])
    assert code == 2 and "epochs=9 differs from the checkpoint's 2" in err
    # A checkpoint whose weights belong to another model: eval and predict refuse it.
    ckpt = torch.load(cli_run / "checkpoint.pt", weights_only=True)
    ckpt["model"] = "dsrnet50_cifar"
    ckpt["model_kwargs"] = {"widths": [16, 32, 64, 128]}
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    for argv in (["eval", "--checkpoint", str(other)], ["predict", "--checkpoint", str(other), "x.png"]):
        code, _, err = run_cli(capsys, argv)
        assert code == 2 and "does not fit model 'dsrnet50_cifar'" in err and err.count("\n") == 1
    for argv in (
        ["eval", "--checkpoint", str(tmp_path / "no.pt")],
        ["predict", "--checkpoint", "no.pt", "x.png"],
    ):
        code, _, err = run_cli(capsys, argv)
        assert code == 2 and "no weights tag, weights file or run named" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, ["predict", "--checkpoint", str(cli_run), "--top-k", "0", "x.png"])
    assert code == 2 and "bad value for top_k" in err
    code, _, err = run_cli(capsys, ["eval", "--checkpoint", str(cli_run), "--batch-size", "many"])
    assert code == 2 and "bad value for batch_size" in err


# --------------------------------------------------------------------------------------------- eval/predict


def test_eval_and_predict_commands(cli_run, cifar10_dir, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, ["eval", "--checkpoint", str(cli_run / "checkpoint.pt"), "--data-dir", str(cifar10_dir),
                 "--device", "cpu", "--test-subset-per-class", "2"],
    )  # fmt: skip
    assert code == 0 and "top-1 error" in out and "top-5 error" in out
    ev = cli_run / "eval"
    for name in ("metrics.json", "per_class.csv", "confusion.csv", "confusion.png"):
        assert (ev / name).is_file(), name
    final = json.loads((cli_run / "final.json").read_text())
    assert json.loads((ev / "metrics.json").read_text())["top1_error"] == pytest.approx(final["top1_error"])

    img = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 200, 3), dtype=np.uint8)).save(img)
    code, out, _ = run_cli(
        capsys, ["predict", "--checkpoint", str(cli_run), "--top-k", "3", str(img), str(img)]
    )
    lines = out.splitlines()
    assert code == 0 and lines[0] == str(img) and len(lines) == 8
    probs = [float(line.split()[-1]) for line in lines[1:4]]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)


def test_dwconv_flag_yaml_key_and_a_triton_trained_run_in_eval(cifar10_dir, tmp_path, capsys):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("dwconv: triton\n")
    for argv, want in [
        (["--dwconv", "triton"], "triton"),
        (["--config", str(yaml_file)], "triton"),
        (["--config", str(yaml_file), "--dwconv", "torch"], "torch"),  # flag beats YAML
        ([], "torch"),  # default
    ]:
        code, out, _ = run_cli(capsys, ["train", *argv, "--device", "cpu", "--print-config"])
        assert code == 0 and yaml.safe_load(out)["dwconv"] == want, argv
    run = tmp_path / "run"
    assert main(tiny_args(cifar10_dir, run, "--dwconv", "triton")) == 0
    final = json.loads((run / "final.json").read_text())
    assert yaml.safe_load((run / "config.yaml").read_text())["dwconv"] == final["dwconv"] == "triton"
    capsys.readouterr()
    code, out, _ = run_cli(
        capsys, ["eval", "--checkpoint", str(run), "--data-dir", str(cifar10_dir), "--device", "cpu",
                 "--test-subset-per-class", "2", "--out-dir", str(tmp_path / "eval")],
    )  # fmt: skip
    assert code == 0 and "top-1 error" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["top1_error"] == pytest.approx(final["top1_error"])  # the plain model predicts the same


def test_regularisation_switches_train_are_recorded_and_resume(cifar10_dir, tmp_path, capsys):
    """--cutout, --pad-fill reflect and --no-dw-weight-decay together (with the Triton dwconv swap): the run trains,
    config.yaml and the checkpoint record them, the optimizer holds the depthwise weights without decay, and
    resuming restores that optimizer state while refusing a changed switch."""
    run = tmp_path / "run"
    extra = ("--cutout", "16", "--pad-fill", "reflect", "--no-dw-weight-decay", "--dwconv", "triton", "--epochs", "1")
    assert main(tiny_args(cifar10_dir, run, *extra)) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["cutout"], saved["pad_fill"], saved["dw_weight_decay"]) == (16, "reflect", False)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["config"] == saved
    groups = ckpt["optimizer_state"]["param_groups"]
    state = ckpt["model_state"]
    n_1d = sum(v.ndim == 1 for k, v in state.items() if k.endswith((".weight", ".bias")))
    n_dw = sum(v.ndim == 4 and v.shape[1] == 1 for v in state.values())
    assert n_dw == 16 and [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert len(groups[1]["params"]) == n_1d + n_dw  # the fast recipe exempts BatchNorm/biases, and the dw filters
    final = json.loads((run / "final.json").read_text())
    assert math.isfinite(final["train_loss"])
    capsys.readouterr()
    # Resume (finished: restores the optimizer state, trains nothing) keeps the switches; changing one is refused.
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "final.json").read_text()) == final
    capsys.readouterr()
    code, _, err = run_cli(capsys, ["train", "--resume", str(run), "--cutout", "8"])
    assert code == 2 and "cutout=8 differs from the checkpoint's 16" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, ["train", "--resume", str(run), "--dw-weight-decay"])
    assert code == 2 and "dw_weight_decay=True differs from the checkpoint's False" in err
    # A checkpoint written before the switches existed resumes with them off (LEGACY_DEFAULTS), whatever the recipe.
    old = tmp_path / "old"
    old.mkdir()
    legacy = {k: v for k, v in ckpt["config"].items() if k not in ("cutout", "pad_fill", "dw_weight_decay")}
    save_checkpoint(old / "checkpoint.pt", {**ckpt, "config": legacy})
    cfg = resume_config(old)
    assert (cfg.cutout, cfg.pad_fill, cfg.dw_weight_decay) == (0, "zero", True)
    with pytest.raises(DsrnetError, match="cutout=16 differs from the checkpoint's 0"):
        resume_config(old, cutout=16)


# ---------------------------------------------------------------------------------------------- kill/resume


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_finishes(cifar10_dir, tmp_path, capsys):
    run = tmp_path / "killed"
    argv = tiny_args(cifar10_dir, run, "--epochs", "60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsrnet", *argv],
        env=env_1thread(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(0.3)  # a few more epochs: the kill may land mid-write
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final.json").exists()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    done = ckpt["epoch"]
    assert 1 <= done < 60 and len(ckpt["history"]) == done

    code, out, err = run_cli(capsys, ["train", "--resume", "--out-dir", str(run)])
    assert code == 0, err
    assert f"resumed {run / 'checkpoint.pt'} at epoch {done}/60" in err  # progress: stderr
    assert "final epoch 60" in out  # the result: stdout
    assert [m["epoch"] for m in read_metrics(run)] == list(range(1, 61))
    assert json.loads((run / "final.json").read_text())["epochs"] == 60
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 60


# ------------------------------------------------------------------------------------------------------ DDP

# A BatchNorm-free net: with GroupNorm every sample is normalised on its own, so 2 ranks x 20 images compute
# exactly the same gradient as 1 process x 40 images, and the DDP run must match the single-process one to
# rounding.
GN_NET = textwrap.dedent(
    """
    from torch import nn

    def tiny_gn(*, num_classes=1000):
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.GroupNorm(4, 32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
        )
    """
)
DDP_SCRIPT = GN_NET + textwrap.dedent(
    """
    import sys
    from dsrnet.cli.main import main
    from dsrnet.models import _registry

    _registry._BUILDERS["tiny_gn"] = tiny_gn
    sys.exit(main(sys.argv[1:]))
    """
)


def ddp_args(data_dir, out_dir, model: str, kwargs: str) -> list[str]:
    return [
        "train", "--model", model, "--model-kwargs", kwargs, "--data-dir", str(data_dir), "--device", "cpu",
        "--recipe", "fast", "--batch-size", "40", "--lr", "0.05", "--warmup-epochs", "0", "--subset-per-class",
        "20", "--test-subset-per-class", "10", "--epochs", "2", "--no-progress", "--no-tensorboard", "--out-dir",
        str(out_dir),
    ]  # fmt: skip


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=env_1thread(), capture_output=True, text=True, timeout=300)


def test_ddp_two_processes_match_single_process(cifar10_dir, tmp_path, capsys, monkeypatch):
    script = tmp_path / "ddp_gn.py"
    script.write_text(DDP_SCRIPT)
    ema = ("--ema-decay", "0.9")  # the weight average too: each rank keeps its own, which must stay rank 0's
    gn = torchrun(str(script), *ddp_args(cifar10_dir, tmp_path / "gn-ddp", "tiny_gn", "{}"), *ema)
    assert gn.returncode == 0, gn.stderr[-3000:]
    assert gn.stderr.count("final (epoch 2)") == 1  # only rank 0 logs (progress goes to stderr)
    assert "2 processes" in gn.stderr

    namespace: dict = {}
    exec(GN_NET, namespace)
    monkeypatch.setitem(_registry._BUILDERS, "tiny_gn", namespace["tiny_gn"])
    assert main([*ddp_args(cifar10_dir, tmp_path / "gn-single", "tiny_gn", "{}"), *ema]) == 0
    capsys.readouterr()

    a = torch.load(tmp_path / "gn-ddp" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "gn-single" / "checkpoint.pt", weights_only=True)
    for state in ("model_state", "train_model_state"):  # the average, the trained weights
        for key, value in b[state].items():
            torch.testing.assert_close(a[state][key], value, rtol=1e-4, atol=1e-5, msg=f"{state} {key}")
    ma, mb = read_metrics(tmp_path / "gn-ddp"), read_metrics(tmp_path / "gn-single")
    for ra, rb in zip(ma, mb, strict=True):
        for key in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top3", "raw_test_loss", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-4), key
    fa = json.loads((tmp_path / "gn-ddp" / "final.json").read_text())
    assert fa["world_size"] == 2 and fa["train_images"] == 200 and fa["test_images"] == 100


def test_ddp_dsrnet_under_torchrun_module(cifar10_dir, tmp_path, capsys):
    """``torchrun -m dsrnet train`` with the real (BatchNorm) DSRNet: BatchNorm statistics are per rank on CPU
    (no SyncBatchNorm there), so it matches the single-process run within a tolerance, not exactly. Scored only
    every 2nd epoch (``--eval-every 2``): every rank skips the same test passes."""
    every = ("--eval-every", "2")
    res = torchrun("-m", "dsrnet", *ddp_args(cifar10_dir, tmp_path / "ddp", "dsrnet50", TINY), *every)
    assert res.returncode == 0, res.stderr[-3000:]
    assert main([*ddp_args(cifar10_dir, tmp_path / "single", "dsrnet50", TINY), *every]) == 0
    capsys.readouterr()
    ma, mb = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    assert len(ma) == len(mb) == 2 and "test_loss" not in ma[0] and "test_loss" not in mb[0]
    for ra, rb in zip(ma, mb, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=0.05)
    assert ma[1]["test_loss"] == pytest.approx(mb[1]["test_loss"], rel=0.1)
    assert json.loads((tmp_path / "ddp" / "final.json").read_text())["world_size"] == 2


def test_ddp_a_setup_error_of_rank_0_is_one_line_on_every_rank(tmp_path):
    """Rank 0 alone reads the data first: its error left rank 1 in a barrier, which died with a gloo traceback."""
    args = ddp_args(tmp_path / "no-data", tmp_path / "ddp", "dsrnet50", TINY)
    res = torchrun("-m", "dsrnet", *args)
    assert res.returncode != 0
    assert "dsrnet: error: dataset cifar10 (train split) not found" in res.stderr
    assert "dsrnet: error: process 1 of 2: another process of this job stopped" in res.stderr
    assert "[rank1]: Traceback" not in res.stderr and "[rank0]: Traceback" not in res.stderr


def test_one_command_line_starts_and_continues_a_run(cifar10_dir, tmp_path, capsys):
    # --resume on a folder with no checkpoint yet starts the run (a requeued job's first start); later the same
    # line continues it; config.yaml repeats the run without the call's own controls (resume, deadline).
    run = tmp_path / "requeued"
    argv = tiny_args(cifar10_dir, run, "--resume", "--deadline", str(time.time() + 3600))
    code, out, _ = run_cli(capsys, argv)
    assert code == 0 and "final epoch 2" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["resume"] is None and saved["deadline"] is None and saved["epochs"] == 2
    written = (run / "config.yaml").read_text()
    code, _, err = run_cli(capsys, [*argv[:-2], "--eval-every", "2"])  # again: a finished run, nothing to train
    assert code == 0, err
    assert (run / "config.yaml").read_text() == written  # the finished run's settings, as it ran
    again = tmp_path / "again"  # `--config config.yaml` repeats the run elsewhere
    code, out, _ = run_cli(capsys, ["train", "--config", str(run / "config.yaml"), "--out-dir", str(again)])
    assert code == 0 and "final epoch 2:" in out


def test_a_full_disk_while_writing_run_files_is_one_line_and_keeps_the_checkpoint(cifar10_dir, tmp_path, capsys,
                                                                                  monkeypatch):  # fmt: skip
    import errno

    from dsrnet.train import loop

    def full(run_dir, history):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loop, "_write_metrics", full)
    run = tmp_path / "full"
    code, _, err = run_cli(capsys, tiny_args(cifar10_dir, run))
    last = err.strip().splitlines()[-1]  # (the log lines of epoch 1 come before it)
    assert code == 2 and last.startswith("dsrnet: error: ") and "Traceback" not in err
    assert f"could not write {run / 'metrics.jsonl'} (No space left on device)" in last
    assert "checkpoint.pt holds epoch 1" in err and "continue with `dsrnet train --resume --out-dir" in err
    assert (run / "checkpoint.pt").is_file()


def _interrupt_in_epoch_2(monkeypatch):
    """Training raises KeyboardInterrupt at the start of its 2nd epoch (a Ctrl-C); returns the real epoch."""
    from dsrnet.train import loop

    real = loop._Trainer.train_epoch

    def interrupt_in_epoch_2(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(loop._Trainer, "train_epoch", interrupt_in_epoch_2)
    return real


def test_ctrl_c_says_what_is_kept_and_how_to_continue(cifar10_dir, tmp_path, capsys, monkeypatch, caplog):
    from dsrnet.train import loop

    real = _interrupt_in_epoch_2(monkeypatch)
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="dsrnet"):
        code, _, _ = run_cli(capsys, tiny_args(cifar10_dir, run))
    assert code != 0
    assert (f"interrupted in epoch 2/2; {run / 'checkpoint.pt'} holds epoch 1; continue with: dsrnet train --resume "
            f"--out-dir {run}") in caplog.text  # fmt: skip

    # A run whose first epoch two processes trained (as if under torchrun) resumed by one: the record says so
    from dsrnet.run.checkpoint import FORMAT

    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert [r["world_size"] for r in ckpt["history"]] == [1]
    ckpt["world_size"], ckpt["history"][0]["world_size"] = 2, 2
    assert ckpt.pop("format") == FORMAT
    save_checkpoint(run / "checkpoint.pt", {k: v for k, v in ckpt.items() if k not in ("version", "state_dict")})
    monkeypatch.setattr(loop._Trainer, "train_epoch", real)
    with caplog.at_level("INFO", logger="dsrnet"):
        code, _, err = run_cli(capsys, ["train", "--resume", "--out-dir", str(run), "--no-progress"])
    assert code == 0, err
    assert "was trained by 2 process(es), resumed by 1" in caplog.text
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 1 and final["world_size_per_epoch"] == [2, 1]
    assert [r["world_size"] for r in read_metrics(run)] == [2, 1]


def test_a_run_with_a_milestone_at_its_last_epoch_resumes(cifar10_dir, tmp_path, capsys, monkeypatch):
    """Milestones are compared as they apply; a resume compares one setting at a time, so the saved run's epochs
    must decide for both sides (a plain resume was refused: "milestones=[2] differs from the checkpoint's [2]")."""
    from dsrnet.train import loop

    real = _interrupt_in_epoch_2(monkeypatch)
    run = tmp_path / "run"
    run_cli(capsys, tiny_args(cifar10_dir, run, "--schedule", "step", "--milestones", "2"))
    monkeypatch.setattr(loop._Trainer, "train_epoch", real)
    code, out, err = run_cli(capsys, ["train", "--resume", "--out-dir", str(run), "--no-progress"])
    assert code == 0 and "final epoch 2" in out, err


def test_the_resume_command_of_a_ddp_run_names_torchrun_with_its_process_count(tmp_path):
    """Continuing a DDP run with plain `dsrnet train --resume` trains the rest on one process: another run (BatchNorm
    statistics are per process). The messages that say how to continue name torchrun and the process count."""
    from types import SimpleNamespace

    from dsrnet.train import loop

    trainer = loop._Trainer.__new__(loop._Trainer)
    trainer.out = tmp_path / "run"
    trainer.dist = SimpleNamespace(world_size=4)
    assert trainer._resume_command() == f"torchrun --nproc_per_node 4 -m dsrnet train --resume --out-dir {trainer.out}"
    trainer.dist = SimpleNamespace(world_size=1)
    assert trainer._resume_command() == f"dsrnet train --resume --out-dir {trainer.out}"


def test_a_config_file_inside_the_run_folder_is_not_overwritten(cifar10_dir, tmp_path, capsys):
    """An experiment folder holding a hand-written config.yaml, trained into: the run would rewrite that file with
    every setting resolved (comments lost). Refused, file kept; a run folder's own config.yaml (dsrnet wrote it)
    still restarts its run."""
    run = tmp_path / "exp"
    run.mkdir()
    own = run / "config.yaml"
    text = "# my experiment: wider stem next time\nrecipe: fast\nepochs: 1\n"
    own.write_text(text)
    argv = tiny_args(cifar10_dir, run, "--config", str(own))
    plain = "recipe: fast\nepochs: 1\n"  # no comment, in YAML's own format: still the user's few settings
    for content in (text, plain):
        own.write_text(content)
        for extra in ((), ("--resume",)):  # --resume of a folder without a checkpoint starts a run too
            code, _, err = run_cli(capsys, [*argv, *extra])
            assert code == 2 and "is the run folder's own config.yaml" in err and "fix: keep your file outside" in err
            assert own.read_text() == content and sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    done = tmp_path / "done"
    assert run_cli(capsys, tiny_args(cifar10_dir, done, "--epochs", "1"))[0] == 0
    code, out, err = run_cli(capsys, ["train", "--config", str(done / "config.yaml"), "--resume", "--out-dir", str(done),
                                      "--data-dir", str(cifar10_dir), "--progress"])  # (changes its resolved text)
    assert code == 0, err  # a finished run's restart with its own config: nothing to train, nothing refused
    (done / "checkpoint.pt").unlink(), (done / "final.json").unlink()  # as if killed before its first checkpoint
    older = yaml.safe_load((done / "config.yaml").read_text())
    del older["pad_fill"]  # as an older dsrnet wrote it, before a setting existed
    (done / "config.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    code, out, err = run_cli(capsys, ["train", "--config", str(done / "config.yaml"), "--out-dir", str(done),
                                      "--no-progress"])  # fmt: skip
    assert code == 0 and "final epoch 1" in out, err


def test_interrupted_resume_into_another_folder_and_a_restart_from_its_config(cifar10_dir, tmp_path, capsys,
                                                                             monkeypatch, caplog):  # fmt: skip
    from dsrnet.train import loop

    real = loop._Trainer.train_epoch
    stop_at = {"epoch": 1}

    def interrupt(self, epoch):
        if epoch == stop_at["epoch"]:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(loop._Trainer, "train_epoch", interrupt)
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli(capsys, tiny_args(cifar10_dir, a, "--epochs", "3"))  # A: checkpoint at epoch 1, stopped in epoch 2
    with caplog.at_level("INFO", logger="dsrnet"):
        run_cli(capsys, ["train", "--resume", str(a), "--out-dir", str(b), "--no-progress"])  # stopped in B's first
    assert "interrupted in epoch 2/3 before the first checkpoint" in caplog.text  # B holds none (A's is A's)
    assert not (b / "checkpoint.pt").exists() and (b / "config.yaml").is_file()
    # --resume on a folder with a config.yaml but no checkpoint: that run's settings, not the recipe's defaults
    code, out, _ = run_cli(capsys, ["train", "--resume", "--out-dir", str(b), "--print-config"])
    printed = yaml.safe_load(out)
    assert code == 0 and printed["epochs"] == 3 and printed["recipe"] == "fast" and printed["batch_size"] == 20
