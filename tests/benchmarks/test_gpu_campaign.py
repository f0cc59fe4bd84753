"""The GPU campaign script (issue 9), rehearsed on a CPU: its ``dsrnet`` stage's dry run end to end, as the GPU
machine would run it (a subprocess from the repository root, ``PYTHONPATH=src``), within the device tool's limits on
returned files, with weight shards that reassemble into a loadable, weights-only checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from dsrnet.errors import DsrnetError
from dsrnet.infer import model_from_checkpoint
from dsrnet.run.checkpoint import load_checkpoint
from dsrnet.run.shards import join_parts
from dsrnet.train import resume_config, train
from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_campaign.py"
SHARD_BYTES = 256 * 1024  # the tiny model's ~0.9 MB checkpoint comes back in 4 parts, as the real one would


@pytest.fixture(scope="module")
def dry_run(cifar10_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("campaign")
    out, work = tmp / "out", tmp / "work"
    # --dwconv triton: on this CPU the Triton ops' PyTorch fallback (no interpreter: that would take minutes).
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, str(SCRIPT), "--stage", "dsrnet", "--dry-run", "--data-dir", str(cifar10_dir),
           "--out", str(out), "--work", str(work), "--budget-s", "120", "--shard-bytes", str(SHARD_BYTES),
           "--dwconv", "triton"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return out, work, summary


def test_dsrnet_stage_dry_run_files_within_the_device_limits(dry_run):
    out, _, summary = dry_run
    assert summary["status"] == "ok" and summary["left_out"] == []
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and sorted(p.name for p in files) == sorted(summary["files"])
    assert all(p.stat().st_size <= 15 * 2**20 for p in files)
    assert all(p.parent == out for p in files)  # flat: nothing deeper than the tool brings back
    parts = sorted(p.name for p in out.glob("dsrnet50_cifar.c10.pt.part*"))
    assert parts == [f"dsrnet50_cifar.c10.pt.part{i:02d}" for i in range(4)]
    assert all((out / p).stat().st_size <= SHARD_BYTES for p in parts)
    final = json.loads((out / "final.json").read_text())
    plan = summary["plan"]
    assert final["stopped_early"] is False and final["epochs_done"] == final["epochs"] == plan["epochs"] >= 1
    assert plan["epochs_from"] == "warm-up" and plan["timing"]["s_per_epoch"] > 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == final["epochs"]
    assert "model: dsrnet50_cifar" in (out / "config.yaml").read_text()
    assert "dwconv: triton" in (out / "config.yaml").read_text()  # warm-up and run both trained with it
    assert summary["dwconv"] == summary["final"]["dwconv"] == final["dwconv"] == "triton"
    assert summary["wall_s"] < 120


def test_shards_reassemble_into_the_trained_weights(dry_run, tmp_path):
    out, work, _ = dry_run
    joined = join_parts(out / "dsrnet50_cifar.c10.pt.manifest.json", tmp_path / "weights.pt")
    ckpt = load_checkpoint(joined)
    trained = load_checkpoint(work / "runs" / "dsrnet50_cifar")
    assert not {"optimizer_state", "scheduler_state", "scaler_state", "rng_state"} & set(ckpt)
    assert ckpt["model_state"].keys() == trained["model_state"].keys()
    for key, value in trained["model_state"].items():
        assert torch.equal(value, ckpt["model_state"][key]), key
    model, _ = model_from_checkpoint(joined)  # eval/predict rebuild the network from it alone
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(DsrnetError, match="holds weights only"):
        train(resume_config(joined, out_dir=str(tmp_path / "resumed"), progress=False))


def test_dwconv_is_for_the_dsrnet_stage_only(capsys):
    campaign = _campaign_module()
    base = ["--out", "o", "--budget-s", "60"]
    assert campaign.parse_args(["--stage", "dsrnet", *base]).dwconv == "torch"
    assert campaign.parse_args(["--stage", "dsrnet", "--dwconv", "triton", *base]).dwconv == "triton"
    with pytest.raises(SystemExit):
        campaign.parse_args(["--stage", "baselines", "--dwconv", "triton", *base])
    assert "--dwconv is for the dsrnet stage only" in capsys.readouterr().err
    assert campaign.parse_args(["--stage", "dsrnet", *base]).compile_mode == "default"
    args = campaign.parse_args(["--stage", "dsrnet", "--compile-mode", "reduce-overhead", *base])
    assert args.compile_mode == "reduce-overhead"
    with pytest.raises(SystemExit):
        campaign.parse_args(["--stage", "baselines", "--compile-mode", "reduce-overhead", *base])
    assert "--compile-mode is for the dsrnet stage only" in capsys.readouterr().err


def _campaign_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_epoch_planning_and_like_settings(tmp_path):
    campaign = _campaign_module()
    timing = {"s_per_epoch": 4.0, "first_epoch_extra_s": 60.0}
    # (360 s - 60 s of compilation) / (4 s * 1.05) = 71.4 -> 71 epochs; nothing fits in less than the extra.
    assert campaign.epochs_that_fit(360.0, timing, 0.05) == 71
    assert campaign.epochs_that_fit(50.0, timing, 0.05) == 0
    # The warm-up scored each epoch (0.5 s of its 4 s): scored every 5th, an epoch costs 3.6 s, plus the last's
    # test pass once: (360 - 60 - 0.5) / (3.6 * 1.05) = 79.2; only after the last: (299.5) / (3.5 * 1.05) = 81.5.
    timed = {**timing, "eval_s": 0.5}
    assert campaign.epochs_that_fit(360.0, timed, 0.05, eval_every=1) == 71
    assert campaign.epochs_that_fit(360.0, timed, 0.05, eval_every=5) == 79
    assert campaign.epochs_that_fit(360.0, timed, 0.05, eval_every=0) == 81
    config = tmp_path / "config.yaml"
    config.write_text("recipe: fast\nepochs: 71\nbatch_size: 512\nlr: 0.4\nmodel: dsrnet50_cifar\ndevice: cuda\n"
                      "subset_per_class: null\npad_fill: zero\nema_decay: 0.995\nzero_init_residual: true\n"
                      "eval_every: 5\n")  # fmt: skip
    # The recipe values travel (the weight average too: the baselines' reported model must be the same kind);
    # where and when it ran does not.
    assert campaign.like_settings(config) == {
        "recipe": "fast", "epochs": 71, "batch_size": 512, "lr": 0.4, "pad_fill": "zero", "ema_decay": 0.995,
        "zero_init_residual": True,
    }  # fmt: skip
    final = tmp_path / "final.json"
    final.write_text(json.dumps({"recipe": "fast", "epochs": 71, "epochs_done": 30, "stopped_early": True}))
    with pytest.raises(DsrnetError, match="stopped early"):
        campaign.like_settings(final)
    with pytest.raises(DsrnetError, match="no such file"):
        campaign.like_settings(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def baselines_dry_run(dry_run, cifar10_dir, tmp_path_factory):
    """The ``baselines`` stage rehearsed with the dsrnet stage's dry-run settings: ResNet-50 trained, DSRNet timed."""
    out = tmp_path_factory.mktemp("baselines") / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--stage", "baselines", "--dry-run", "--data-dir", str(cifar10_dir),
           "--like", str(dry_run[0] / "config.yaml"), "--models", "resnet50", "--out", str(out), "--budget-s",
           "200"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_baselines_call_returns_one_bundle_with_dsrnet_timed_alike(baselines_dry_run):
    out, summary = baselines_dry_run
    assert summary["status"] == "ok" and summary["left_out"] == []
    assert sorted(p.name for p in out.iterdir()) == ["campaign.json", "runs.json"] == sorted(summary["files"])
    bundle = json.loads((out / "runs.json").read_text())
    assert bundle["call_id"] == summary["call_id"] and bundle["dry_run"] is True
    assert sorted(bundle["runs"]["resnet50_cifar"]) == ["bench.json", "config.yaml", "final.json", "metrics.jsonl"]
    assert list(bundle["runs"]["dsrnet50_cifar"]) == ["bench.json"]  # timed in this call, trained elsewhere
    dsrnet, resnet = (json.loads(bundle["runs"][a]["bench.json"]) for a in ("dsrnet50_cifar", "resnet50_cifar"))
    assert dsrnet["request"] == resnet["request"] and dsrnet["request"]["precision"] == "fp32"
    assert dsrnet["row"]["model_kwargs"] == {"widths": [8, 16, 32, 64]} and dsrnet["row"]["compile"] is False
    assert summary["timed"] == ["resnet50_cifar", "dsrnet50_cifar"]
    assert "warmups" not in summary and summary["skipped"] == []  # trained once, straight away


def _assemble(*argv):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--assemble", *map(str, argv)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_assemble_writes_the_paper_table_from_both_stages(dry_run, baselines_dry_run, tmp_path):
    out = tmp_path / "cifar10"
    proc = _assemble(dry_run[0], baselines_dry_run[0], "--out-dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DSRNet (cifar stem)" in proc.stdout and "ResNet50 (cifar stem)" in proc.stdout
    assert "ResNeXt" not in proc.stdout  # not trained: no column
    table = (out / "table.md").read_text()
    assert "--quick run" in table  # a dry run's table says it is no result
    summary = json.loads((out / "summary.json").read_text())
    dsrnet_final = json.loads((dry_run[0] / "final.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["dsrnet50_cifar", "resnet50_cifar"]
    assert summary["models"][0]["final"]["top1_error"] == dsrnet_final["top1_error"]
    bundle = json.loads((baselines_dry_run[0] / "runs.json").read_text())
    timed = json.loads(bundle["runs"]["dsrnet50_cifar"]["bench.json"])["row"]
    assert summary["models"][0]["bench"]["latency_ms"] == timed["latency_ms"]
    # DSRNet without a call that timed it: refused in one line, nothing written.
    proc = _assemble(dry_run[0], "--out-dir", tmp_path / "alone")
    assert proc.returncode == 2 and "no single call timed all of dsrnet50_cifar" in proc.stderr
    assert proc.stderr.count("error:") == 1 and not (tmp_path / "alone").exists()


# ------------------------------------------------------------------------------------------------ recipe stage


@pytest.fixture(scope="module")
def recipe_dry_run(cifar10_dir, tmp_path_factory):
    """The ``recipe`` stage rehearsed as the GPU machine would run it, with the shipped run's recipe (--like), three
    arms that this checkout supports: ``ema`` reports a weight average, ``no_dilation`` is another architecture."""
    tmp = tmp_path_factory.mktemp("recipe")
    out, work = tmp / "out", tmp / "work"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--stage", "recipe", "--dry-run", "--data-dir", str(cifar10_dir),
           "--like", str(REPO / "results" / "gpu" / "dsrnet" / "config.yaml"), "--epochs", "20",
           "--arms", "base", "ema", "no_dilation", "--seed", "3", "--out", str(out), "--work", str(work),
           "--budget-s", "120"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_recipe_stage_reports_each_arms_final_epoch(recipe_dry_run):
    out, summary = recipe_dry_run
    assert summary["status"] == "ok" and summary["left_out"] == [] and summary["skipped"] == []
    names = ["recipe.md", "recipe.json", "runs.json", "campaign.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names) == sorted(summary["files"])
    recipe = json.loads((out / "recipe.json").read_text())
    bundle = json.loads((out / "runs.json").read_text())
    assert bundle["call_id"] == recipe["call_id"] == summary["call_id"]
    arms = ["base", "ema", "no_dilation"]
    assert [r["arm"] for r in recipe["rows"]] == arms == list(bundle["runs"])
    md = (out / "recipe.md").read_text()
    base = recipe["rows"][0]
    for row in recipe["rows"]:
        metrics = bundle["runs"][row["arm"]]["metrics.jsonl"].splitlines()
        last = json.loads(metrics[-1])
        assert len(metrics) == row["epochs"] == 2  # --epochs 20 capped by the dry run
        assert (row["top1_error"], row["top3_error"], row["train_top1"]) == (
            last["test_top1_error"], last["test_top3_error"], last["train_top1"])  # fmt: skip
        assert row["delta_top1_vs_base_pp"] == round(row["top1_error"] - base["top1_error"], 2)
        assert row["raw_top1_error"] == last.get("raw_test_top1_error")  # the ema arm's plain weights, else None
        assert [line.startswith(f"| {row['arm']} | ") for line in md.splitlines()].count(True) == 1
        assert f"| {row['top1_error']:.2f} |" in md
        config = bundle["runs"][row["arm"]]["config.yaml"]
        assert "seed: 3\n" in config and "epochs: 2\n" in config and "warmup_epochs: 1.0\n" in config
    configs = {a: bundle["runs"][a]["config.yaml"] for a in arms}
    assert "ema_decay: 0.995" in configs["ema"] and "ema_decay: 0.0" in configs["base"]
    assert recipe["rows"][1]["raw_top1_error"] is not None and base["raw_top1_error"] is None
    ema_line = next(line for line in md.splitlines() if line.startswith("| ema | "))
    assert f"| {recipe['rows'][1]['raw_top1_error']:.2f} |" in ema_line
    assert "stem_dilation: 1" in configs["no_dilation"] and "stem_dilation" not in configs["base"]
    assert "widths:" in configs["no_dilation"]  # the dry run's tiny widths kept under the arm's kwargs
    assert list(recipe["arms"]) == arms and "warmups" not in summary  # no warm-up run before the arms
    assert "is a lead, not a result" in md and "DRY RUN" in md and "--stage recipe" in md
    assert f"seed {recipe['seed']} for every arm" in md and recipe["seed"] == 3


@pytest.fixture
def campaign_in_process():
    """The campaign module, run in this process (its main() installs a SIGALRM watchdog: put pytest's back)."""
    import signal

    before = signal.getsignal(signal.SIGALRM)
    yield _campaign_module()
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


def test_flags_that_would_be_ignored_or_lose_the_weights_are_refused_up_front(campaign_in_process, tmp_path, capsys):
    """--shard-bytes 0 was refused only after training (the weights lost); above the 15 MiB cap the parts were left
    out of OUT with rc 0; --assemble ignored --out (and wrote into the repository's results) and other stage flags."""
    campaign = campaign_in_process
    base = ["--stage", "dsrnet", "--dry-run", "--out", str(tmp_path / "out"), "--budget-s", "60"]
    for bad in ("0", str(campaign.MAX_FILE_BYTES + 1)):
        with pytest.raises(SystemExit) as stop:
            campaign.parse_args([*base, "--shard-bytes", bad])
        assert stop.value.code == 2
        assert f"--shard-bytes must be in 1..{campaign.MAX_FILE_BYTES}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        campaign.parse_args(["--assemble", str(tmp_path), "--out", str(tmp_path / "x"), "--epochs", "3"])
    err = capsys.readouterr().err
    assert "--assemble runs no stage, so --out, --epochs would be ignored" in err and "--out-dir" in err
    assert campaign.parse_args(["--assemble", str(tmp_path), "--out-dir", str(tmp_path / "x")]).assemble
    assert not (tmp_path / "out").exists()


def test_baselines_time_dsrnet_with_the_model_arguments_of_the_run_they_are_like(campaign_in_process, tmp_path):
    """With an arm that changes the model (drop_path_rate), DSRNet was timed without it and --assemble refused."""
    campaign = campaign_in_process
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: dsrnet50_cifar\nepochs: 3\nmodel_kwargs:\n  drop_path_rate: 0.1\n")
    assert campaign.like_model_kwargs(run / "config.yaml") == {"drop_path_rate": 0.1}
    assert campaign.like_model_kwargs(run) == {"drop_path_rate": 0.1}
    args = campaign.parse_args(["--stage", "baselines", "--dry-run", "--like", str(run / "config.yaml"), "--out",
                                str(tmp_path / "o"), "--budget-s", "60"])  # fmt: skip
    assert campaign.dsrnet_model_kwargs(args, baselines=True) == {"drop_path_rate": 0.1}
    # The ablation stage trains its variants with its own arguments: --like's would make its runs "other settings".
    assert campaign.dsrnet_model_kwargs(args, baselines=False) == campaign.DRY_DSRNET_KWARGS
    (run / "config.yaml").write_text("model: dsrnet50_cifar\nepochs: 3\nmodel_kwargs: {}\n")
    assert campaign.dsrnet_model_kwargs(args, baselines=True) == campaign.DRY_DSRNET_KWARGS  # full width: dry's
    (run / "config.yaml").unlink()
    (run / "final.json").write_text(json.dumps({"model": "dsrnet50_cifar", "epochs": 3}))
    assert campaign.like_model_kwargs(run) is None


def test_recipe_arms_are_refused_before_anything_runs(campaign_in_process, monkeypatch, tmp_path, capsys):
    campaign = campaign_in_process
    monkeypatch.setitem(campaign.RECIPE_ARMS, "knob", campaign.Arm({"no_such_knob": 1}, {}, "t", "r"))
    monkeypatch.setitem(campaign.RECIPE_ARMS, "kwarg", campaign.Arm({}, {"no_such_kwarg": 1}, "t", "r"))
    monkeypatch.setitem(campaign.RECIPE_ARMS, "reseed", campaign.Arm({"seed": 1}, {}, "t", "r"))
    work = tmp_path / "work"
    # No data and no decoder: a refusal that came after the data step would name the data instead.
    base = ["--stage", "recipe", "--dry-run", "--epochs", "2", "--data-dir", str(tmp_path / "none"),
            "--decoder", str(tmp_path / "none.py"), "--work", str(work), "--budget-s", "60"]  # fmt: skip
    cases = {
        "nope": "unknown recipe arm(s) nope; fix: choose from base combo",
        "knob": "knob sets no_such_knob, which this checkout's TrainConfig lacks",
        "kwarg": "kwarg: model 'dsrnet50_cifar' does not take that argument",
        "reseed": "reseed changes seed, which every arm shares",
    }
    for arm, message in cases.items():
        out = tmp_path / arm
        assert campaign.main([*base, "--arms", "base", arm, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and message in lines[0], err
        if arm != "nope":
            assert "(--arms base)" in lines[0]  # the fix names the arms that pass
        assert json.loads((out / "campaign.json").read_text())["status"].startswith("refused: ")
        assert not work.exists()  # nothing warmed up or trained
    no_epochs = [a for a in base if a not in ("--epochs", "2")]
    assert campaign.main([*no_epochs, "--arms", "base", "--out", str(tmp_path / "no-epochs")]) == 2
    assert "the recipe stage needs the arms' epochs; fix: pass --epochs N" in capsys.readouterr().err
    assert not work.exists()


def test_recipe_arms_that_cannot_finish_are_skipped_with_the_reason(campaign_in_process, cifar10_dir, tmp_path,
                                                                    capsys, monkeypatch):  # fmt: skip
    """An arm whose schedule cannot end by the deadline stops and counts as not trained (no truncated row), with
    its pace; an arm that would start with less than --min-run-s left is not started."""
    import dsrnet.train.loop as loop

    campaign = campaign_in_process
    # A clock 10^6 s ahead: every run looks past the deadline at its first check and stops after epoch 1.
    monkeypatch.setattr(loop, "_wall_clock", lambda: time.time() + 1e6)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--stage", "recipe", "--dry-run", "--data-dir", str(cifar10_dir), "--epochs", "2", "--arms", "base",
            "mean_pad", "--out", str(out), "--work", str(work), "--budget-s", "60"]  # fmt: skip
    assert campaign.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["rows"] == [] and summary["done"] == [] and json.loads((out / "runs.json").read_text())["runs"] == {}
    assert [s["arm"] for s in recipe["skipped"]] == ["base", "mean_pad"] == [s["arm"] for s in summary["skipped"]]
    for skipped in recipe["skipped"]:
        assert "cannot finish 2 epochs in the" in skipped["why"] and "stopped by the deadline after 1" in skipped["why"]
    assert not any((work / "recipe" / "runs").iterdir())  # a truncated run's folder is not kept
    md = (out / "recipe.md").read_text()
    assert "(no arm trained)" in md and "- `mean_pad`: cannot finish 2 epochs" in md
    # Less than --min-run-s left: the run does not start (its folder is left as it was).
    cfg = campaign.train_config("dsrnet50_cifar", tmp_path / "late", {"data_dir": str(cifar10_dir)})
    why = campaign.train_to_the_end(cfg, time.time() + 30, min_run_s=60)
    assert why.endswith("s left, less than --min-run-s 60 (a compilation and two epochs)")
    assert not (tmp_path / "late").exists()


def test_dsrnet_stage_trains_with_the_arms_it_is_given(campaign_in_process, cifar10_dir, tmp_path, capsys):  # fmt: skip
    """``--stage dsrnet --arms A B``: the shipped weights' run with the recipe stage's winners applied together;
    contradicting arms are refused before the data step."""
    campaign = campaign_in_process
    base = ["--stage", "dsrnet", "--dry-run", "--epochs", "1", "--budget-s", "120"]
    out = tmp_path / "out"
    # --like the shipped run (2 warm-up epochs): the arms are checked at --epochs, not at a placeholder length
    argv = [*base, "--arms", "cutout16", "no_dw_wd", "no_dilation", "ema", "--data-dir", str(cifar10_dir),
            "--like", str(REPO / "results/gpu/dsrnet/config.yaml"), "--epochs", "4",
            "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    assert campaign.main(argv) == 0, capsys.readouterr().err
    config = (out / "config.yaml").read_text()
    assert "cutout: 16" in config and "dw_weight_decay: false" in config and "block_dilations:\n  - 1" in config
    summary = json.loads((out / "campaign.json").read_text())
    assert summary["arms"]["names"] == ["cutout16", "no_dw_wd", "no_dilation", "ema"]
    # With a weight average the shipped weights are the average alone: the raw weights would double the parts.
    weights = load_checkpoint(tmp_path / "work" / campaign.WEIGHTS_NAME)
    assert "model_state" in weights and "train_model_state" not in weights and "ema_updates" not in weights
    clash = [*base, "--arms", "mean_pad", "reflect_pad", "--data-dir", str(tmp_path / "none"),
             "--decoder", str(tmp_path / "none.py"), "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2")]
    assert campaign.main(clash) == 2
    assert "set pad_fill differently; fix: keep one of them" in capsys.readouterr().err
    assert not (tmp_path / "w2").exists()


def test_ship_weights_turns_the_returned_shards_into_a_loadable_weights_file(dry_run, tmp_path):
    import hashlib
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("ship_weights", REPO / "benchmarks" / "ship_weights.py")
    ship_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship_weights)
    out, _, _ = dry_run
    info = ship_weights.ship(out, "dsrnet50_cifar.c10", tmp_path / "weights")
    path = tmp_path / "weights" / "dsrnet50_cifar.c10.safetensors"
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == info["shipped_entry"]["sha256"]
    final = json.loads((out / "final.json").read_text())
    assert info["top1"] == pytest.approx(final["top1"]) and info["epochs"] == final["epochs"]
    meta = info["shipped_entry"]["metadata"]
    assert meta["model"] == "dsrnet50_cifar" and meta["num_classes"] == 10 and meta["model_kwargs"]["widths"]
    # The shipped file is never replaced silently; new weights get a tag of their own (the shards keep theirs).
    with pytest.raises(DsrnetError, match=r"dsrnet50_cifar\.c10\.safetensors exists .* fix: pass another --tag, or --force"):
        ship_weights.ship(out, "dsrnet50_cifar.c10", tmp_path / "weights")
    other = ship_weights.ship(out, "dsrnet50_cifar.c10_ema", tmp_path / "weights")
    assert other["sha256"] == info["sha256"] and other["file"].endswith("dsrnet50_cifar.c10_ema.safetensors")
    with pytest.raises(DsrnetError, match=r"tag 'resnet50_cifar\.x' is not <model>\.<name> for this run's model"):
        ship_weights.ship(out, "resnet50_cifar.x", tmp_path / "w1")
    # config.yaml and metrics.jsonl are left out of OUT when the shards need the room: not needed (the checkpoint
    # holds both).
    lean = tmp_path / "lean"
    shutil.copytree(out, lean)
    (lean / "config.yaml").unlink()
    (lean / "metrics.jsonl").unlink()
    assert ship_weights.ship(lean, "dsrnet50_cifar.c10", tmp_path / "w2")["sha256"] == info["sha256"]
    # A run a deadline cut short, another run's final.json, or no final.json: refused, nothing written.
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "final.json").write_text(json.dumps({**final, "stopped_early": True}))
    with pytest.raises(DsrnetError, match="stopped early"):
        ship_weights.ship(cut, "dsrnet50_cifar.c10", tmp_path / "w3")
    (cut / "final.json").write_text(json.dumps({**final, "epochs_done": final["epochs_done"] + 60}))
    with pytest.raises(DsrnetError, match="final.json is of another run than the checkpoint"):
        ship_weights.ship(cut, "dsrnet50_cifar.c10", tmp_path / "w3")
    (cut / "final.json").unlink()
    with pytest.raises(DsrnetError, match="lacks final.json"):
        ship_weights.ship(cut, "dsrnet50_cifar.c10", tmp_path / "w3")
    assert not (tmp_path / "w3").exists() or not any((tmp_path / "w3").iterdir())


def test_a_watchdog_stop_wrapped_by_the_compiler_is_still_a_budget_stop(campaign_in_process, monkeypatch, tmp_path,
                                                                       capsys):  # fmt: skip
    """The alarm's exception raised inside an Inductor compile comes back wrapped in the compiler's own error: the
    call is a budget stop (rc 3, what was measured is written), not a failure of the stage."""
    campaign = campaign_in_process

    def compiling(*args, **kwargs):
        try:
            raise campaign.BudgetExceeded("budget of 60 s spent")
        except campaign.BudgetExceeded as err:
            raise RuntimeError("InductorError: compile worker interrupted") from err

    monkeypatch.setattr(campaign, "stage_bench", compiling)
    out = tmp_path / "out"
    argv = ["--stage", "bench", "--dry-run", "--budget-s", "60", "--out", str(out), "--work", str(tmp_path / "w")]
    assert campaign.main(argv) == 3
    summary = json.loads((out / "campaign.json").read_text())
    assert summary["status"].startswith("stopped by the watchdog: budget of 60 s spent (inside RuntimeError)")


def test_a_watchdog_stop_is_not_taken_for_a_failed_group_or_bad_input(campaign_in_process, monkeypatch, tmp_path):
    """A bench group's ``except Exception`` recorded the stop as a failed group and went on (rc 0); a reader that
    turns any error into a DsrnetError reported it as bad input (rc 2)."""
    import dsrnet.bench.measure as measure
    from dsrnet.errors import DsrnetError

    campaign = campaign_in_process

    def stopped(*args, **kwargs):
        raise campaign.BudgetExceeded("budget of 60 s spent")

    monkeypatch.setattr(measure, "run_bench", stopped)
    argv = ["--stage", "bench", "--dry-run", "--budget-s", "60", "--work", str(tmp_path / "w")]
    assert campaign.main([*argv, "--out", str(tmp_path / "o1")]) == 3

    def reader(*args, **kwargs):
        try:
            stopped()
        except BaseException:
            raise DsrnetError("checkpoint x cannot be read safely (BudgetExceeded)") from None  # context kept

    monkeypatch.setattr(campaign, "stage_bench", reader)
    assert campaign.main([*argv, "--out", str(tmp_path / "o2")]) == 3
    summary = json.loads((tmp_path / "o2" / "campaign.json").read_text())
    assert summary["status"].startswith("stopped by the watchdog: budget of 60 s spent (inside DsrnetError)")
