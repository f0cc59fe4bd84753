"""Assembling a reproduce folder from GPU campaign returns (dsrnet.paper.assemble): the paper table from runs
trained in other calls, timings of one call only, refusals with one line, and a folder ``reproduce`` then treats
as finished (it neither trains nor times those models again). The run files are written here, small and by hand
(the campaign's dry run in tests/benchmarks makes real ones)."""

from __future__ import annotations

import json

import pytest
import yaml

from dsrnet.bench.measure import environment
from dsrnet.errors import DsrnetError
from dsrnet.paper import runner
from dsrnet.paper.assemble import BUNDLE_NAME, assemble, read_bundle, write_bundle
from dsrnet.train import TrainConfig

EPOCHS = 3
REQUEST = {"image_size": 32, "batch_size": 128, "device": "cpu", "precision": "fp32", "num_classes": 10,
           "warmup": 0, "repeats": 1}  # fmt: skip
TOP1 = {"dsrnet50_cifar": 7.5, "resnet50_cifar": 6.25, "resnext50_32x4d_cifar": 5.75, "resnet50": 9.0}
LATENCY = {"dsrnet50_cifar": 11.0, "resnet50_cifar": 22.0, "resnext50_32x4d_cifar": 33.0, "resnet50": 5.0}
PARAMS = {"dsrnet50_cifar": 12_237_578, "resnet50_cifar": 23_520_842, "resnext50_32x4d_cifar": 22_980_938,
          "resnet50": 23_528_522}


def run_files(arch: str, **config) -> dict[str, str]:
    """final.json / config.yaml / metrics.jsonl of a finished fast-recipe run, as a campaign returns them."""
    settings = {"epochs": EPOCHS, "seed": 0, "precision": "bf16", "channels_last": True, "compile": True,
                "out_dir": f"/tmp/campaign-x/runs/{arch}", "deadline": 1795677036.6, "data_dir": "/root/data",
                "progress": False, "tensorboard": False, **config}  # fmt: skip
    cfg = TrainConfig.from_recipe("fast", model=arch, dataset="cifar10", **settings)
    final = {"model": arch, "model_kwargs": {}, "dataset": "cifar10", "recipe": "fast", "epochs": cfg.epochs,
             "epochs_done": cfg.epochs, "stopped_early": False, "top1_error": TOP1[arch], "top3_error": 1.0,
             "top5_error": 0.5, "train_time_s": 100.0, "eval_time_s": 5.0, "s_per_epoch": 30.0, "batch_size": 512,
             "precision": "bf16", "train_images": 50000, "test_images": 10000, "seed": cfg.seed,
             "device": "cuda:0 (NVIDIA H200)"}  # fmt: skip
    metrics = "".join(json.dumps({"epoch": e, "test_top1_error": 50.0 / e, "train_loss": 2.0 / e}) + "\n"
                      for e in range(1, cfg.epochs + 1))  # fmt: skip
    return {"final.json": json.dumps(final), "config.yaml": cfg.to_yaml(), "metrics.jsonl": metrics}


def bench_file(arch: str, device_name: str = "NVIDIA H200", **row) -> str:
    env = {**environment("cpu"), "device_name": device_name}
    row = {"model": arch, "arch": arch, "device": "cpu", "latency_ms": LATENCY[arch], "latency_p25_ms": 1.0,
           "latency_p75_ms": 2.0, "images_per_s": 1000.0, "params": PARAMS[arch], "gmacs_per_image": 1.0,
           "warmup": 0, "repeats": 1, **row}  # fmt: skip
    return json.dumps({"request": REQUEST, "row": row, "env": env})


def dsrnet_stage(tmp_path, **config):
    out = tmp_path / "dsrnet"
    out.mkdir()
    for name, text in run_files("dsrnet50_cifar", **config).items():
        (out / name).write_text(text)
    return out


def baselines_call(tmp_path, name, call_id, trained, timed, started="2026-11-27T10:00:00Z", device="NVIDIA H200"):
    folder = tmp_path / name
    runs = {}
    for arch in dict.fromkeys([*trained, *timed]):
        run = tmp_path / "work" / name / arch
        run.mkdir(parents=True)
        for file, text in (trained.get(arch) or {}).items():
            (run / file).write_text(text)
        if arch in timed:
            (run / "bench.json").write_text(bench_file(arch, device))
        runs[arch] = run
    write_bundle(folder / BUNDLE_NAME, runs, {"call_id": call_id, "started": started, "device_name": device,
                                              "dry_run": False})  # fmt: skip
    return folder


@pytest.fixture
def returns(tmp_path):
    dsrnet = dsrnet_stage(tmp_path)
    call = baselines_call(tmp_path, "b1", "call-1", {"resnet50_cifar": run_files("resnet50_cifar")},
                          ["dsrnet50_cifar", "resnet50_cifar"])  # fmt: skip
    return dsrnet, call


def test_bundle_keeps_the_run_files_verbatim(tmp_path):
    files = run_files("resnet50_cifar")
    run = tmp_path / "run"
    run.mkdir()
    for name, text in files.items():
        (run / name).write_text(text)
    (run / "checkpoint.pt").write_bytes(b"not carried")
    bundle = read_bundle(write_bundle(tmp_path / "runs.json", {"resnet50_cifar": run}, {"call_id": "c"}))
    assert bundle["call_id"] == "c" and bundle["runs"] == {"resnet50_cifar": files}
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(DsrnetError, match="not a campaign bundle"):
        read_bundle(tmp_path / "bad.json")


def test_assembled_folder_has_the_paper_table_from_the_returned_numbers(returns, tmp_path):
    out = tmp_path / "cifar10"
    result = assemble(returns, out, command="assemble test")
    assert [r["job"].key for r in result["rows"]] == ["dsrnet50_cifar", "resnet50_cifar"]
    table = (out / "table.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    # Every cell of the paper-layout table, exactly: ours (the paper's Table 2 value for the same model).
    assert rows["Top1-error, ours (paper)"] == "| Top1-error, ours (paper) | 7.50% (9.20%) | 6.25% (11.85%) |"
    assert rows["Top3-error, ours (paper)"] == "| Top3-error, ours (paper) | 1.00% (–) | 1.00% (–) |"
    # Both timings from call-1; the paper's times and ratios are not shown beside the cifar stem (not its network)
    assert rows["time ÷ DSRNet's, ours (paper)"].endswith("| 1.00x (–) | 2.00x (–) |")
    assert rows["params (M), ours (paper)"].endswith("| 12.24 (21.9) | 23.52 (–) |")
    assert " | 11.0 (–) | 22.0 (–) |" in table
    assert "resnext" not in table.lower()  # not run: no column
    csv = (out / "table.csv").read_text().splitlines()
    assert len(csv) == 3 and csv[0].startswith("model,")
    for name in ("summary.json", "params.png", "pareto.png", "curves.png", "assembled.json"):
        assert (out / name).stat().st_size > 0, name
    cfg = yaml.safe_load((out / "runs" / "dsrnet50_cifar" / "config.yaml").read_text())
    assert cfg["deadline"] is None and cfg["out_dir"] == str(out / "runs" / "dsrnet50_cifar")
    assert cfg["epochs"] == EPOCHS and cfg["channels_last"] is True
    provenance = json.loads((out / "assembled.json").read_text())
    assert provenance["timings"]["call_id"] == "call-1"
    assert provenance["trained"]["dsrnet50_cifar"]["from"] == str(returns[0])
    assert not (out / "confusion_dsrnet.png").exists()  # no checkpoint, no saved evaluation: no figure
    again = assemble(returns, out)  # idempotent
    assert [r["job"].key for r in again["rows"]] == ["dsrnet50_cifar", "resnet50_cifar"]


def test_saved_evaluation_gives_the_confusion_figure_and_other_timing_settings_are_refused(returns, tmp_path):
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    of_this_run = {"checkpoint": "dsrnet50_cifar.c10", "model": "dsrnet50_cifar", "dataset": "cifar10",
                   "test_images": 10000, "top1_error": TOP1["dsrnet50_cifar"] + 0.01}  # fmt: skip
    (evaluation / "confusion.png").write_bytes(b"png bytes of a dsrnet eval")
    out = tmp_path / "cifar10"
    # An evaluation of other weights (or none at all) is refused before anything is written.
    for other in ({**of_this_run, "top1_error": TOP1["dsrnet50_cifar"] + 5}, {**of_this_run, "test_images": 20}):
        (evaluation / "metrics.json").write_text(json.dumps(other))
        with pytest.raises(DsrnetError, match="is not an evaluation of this DSRNet run"):
            assemble(returns, out, dsrnet_eval=evaluation)
    with pytest.raises(DsrnetError, match="is not an evaluation folder"):
        assemble(returns, out, dsrnet_eval=tmp_path / "nowhere")
    (evaluation / "metrics.json").write_text("[1]")
    with pytest.raises(DsrnetError, match="metrics.json is not a `dsrnet eval` metrics file"):
        assemble(returns, out, dsrnet_eval=evaluation)
    assert not out.exists()
    (evaluation / "metrics.json").write_text(json.dumps(of_this_run))
    assemble(returns, out, dsrnet_eval=evaluation)
    assert (out / "confusion_dsrnet.png").read_bytes() == b"png bytes of a dsrnet eval"
    assert json.loads((out / "assembled.json").read_text())["dsrnet_eval"]["checkpoint"] == "dsrnet50_cifar.c10"
    with pytest.raises(DsrnetError, match="timed with other settings"):
        runner.report_finished("cifar10", stem="cifar", out=out, train={"recipe": "fast", "epochs": EPOCHS,
                               "precision": "bf16", "channels_last": True}, bench_settings={**REQUEST, "repeats": 30})


def test_reproduce_treats_the_assembled_runs_as_finished(returns, tmp_path, cifar10_dir, monkeypatch):
    out = tmp_path / "cifar10"
    assemble(returns, out)

    def no(what: str):
        def work(*args, **kwargs):
            raise AssertionError(f"reproduce {what} an assembled model again")

        return work

    monkeypatch.setattr(runner, "train", no("trained"))
    monkeypatch.setattr(runner, "benchmark_model", no("timed"))
    monkeypatch.setattr(runner, "evaluate_checkpoint", no("evaluated"))
    # On the machine that timed them (the same card, torch and threads), the assembled timings are reused too.
    saved_env = json.loads((out / "runs" / "dsrnet50_cifar" / "bench.json").read_text())["env"]
    monkeypatch.setattr(runner, "environment", lambda device: dict(saved_env))
    train = {"recipe": "fast", "epochs": EPOCHS, "seed": 0, "precision": "bf16", "channels_last": True,
             "device": "cpu", "data_dir": str(cifar10_dir)}  # fmt: skip
    bench = {k: REQUEST[k] for k in ("batch_size", "warmup", "repeats")}
    result = runner.reproduce("cifar10", models=["dsrnet50", "resnet50"], stem="cifar", out=out, train=train,
                              bench_settings=bench)  # fmt: skip
    assert [r["final"]["top1_error"] for r in result["rows"]] == [7.5, 6.25]
    # Elsewhere (another card) the runs stay finished, but the timings are taken again: one table, one setup.
    monkeypatch.setattr(runner, "environment", lambda device: {**saved_env, "device_name": "another card"})
    with pytest.raises(AssertionError, match="reproduce timed an assembled model again"):
        runner.reproduce("cifar10", models=["dsrnet50", "resnet50"], stem="cifar", out=out, train=train,
                         bench_settings=bench)  # fmt: skip
    # Other epochs: the finished runs are not silently mixed with a new recipe.
    with pytest.raises(DsrnetError, match="other settings"):
        runner.reproduce("cifar10", models=["resnet50"], stem="cifar", out=out, train={**train, "epochs": 4},
                         bench_settings=bench)  # fmt: skip


def test_newest_call_that_timed_every_model_gives_the_timings(returns, tmp_path):
    dsrnet, first = returns
    second = baselines_call(tmp_path, "b2", "call-2", {"resnext50_32x4d_cifar": run_files("resnext50_32x4d_cifar")},
                            ["dsrnet50_cifar", "resnet50_cifar", "resnext50_32x4d_cifar"],
                            started="2026-11-28T10:00:00Z", device="NVIDIA H100 80GB HBM3")  # fmt: skip
    out = tmp_path / "cifar10"
    result = assemble([dsrnet, first, second], out)
    assert [r["job"].key for r in result["rows"]] == ["dsrnet50_cifar", "resnet50_cifar", "resnext50_32x4d_cifar"]
    assert json.loads((out / "assembled.json").read_text())["timings"]["call_id"] == "call-2"
    with pytest.raises(DsrnetError, match="no single call timed all"):
        assemble([dsrnet, first, second], tmp_path / "other", bench_call="call-1")


def _refusal(tmp_path, case):
    dsrnet = dsrnet_stage(tmp_path, **({"epochs": EPOCHS + 1} if case == "epochs" else {}))
    base = {"resnet50_cifar": run_files("resnet50_cifar", **({"seed": 1} if case == "seed" else {}))}
    timed = ["dsrnet50_cifar", "resnet50_cifar"]
    if case == "stopped_early":
        final = json.loads(base["resnet50_cifar"]["final.json"])
        base["resnet50_cifar"]["final.json"] = json.dumps({**final, "stopped_early": True, "epochs_done": 1})
    if case == "stem":
        base = {"resnet50": run_files("resnet50")}
        timed = ["dsrnet50_cifar", "resnet50"]
    if case == "two_calls":  # DSRNet timed in one call, ResNet-50 in another
        one = baselines_call(tmp_path, "b1", "call-1", base, ["resnet50_cifar"])
        two = baselines_call(tmp_path, "b2", "call-2", {}, ["dsrnet50_cifar"])
        return [dsrnet, one, two]
    if case == "trained_twice":
        base["dsrnet50_cifar"] = run_files("dsrnet50_cifar")
    call = baselines_call(tmp_path, "b1", "call-1", base, timed)
    if case == "dry_timing":  # a dry run's DSRNet (tiny widths) timed beside a real run's
        bundle = json.loads((call / BUNDLE_NAME).read_text())
        bundle["runs"]["dsrnet50_cifar"]["bench.json"] = bench_file("dsrnet50_cifar", model_kwargs={"widths": [8]})
        (call / BUNDLE_NAME).write_text(json.dumps(bundle))
    damage = {  # a damaged bundle: tracebacks (KeyError, AttributeError) before
        "no_runs": lambda b: b.pop("runs"), "runs_list": lambda b: b.update(runs=[]),
        "file_not_text": lambda b: b["runs"]["resnet50_cifar"].update({"final.json": {"model": "x"}}),
        "final_list": lambda b: b["runs"]["resnet50_cifar"].update({"final.json": "[]"}),
        "bench_row_list": lambda b: b["runs"]["resnet50_cifar"].update(
            {"bench.json": json.dumps({"row": [], "request": {}})}),
    }  # fmt: skip
    if case in damage:
        bundle = json.loads((call / BUNDLE_NAME).read_text())
        damage[case](bundle)
        (call / BUNDLE_NAME).write_text(json.dumps(bundle))
    if case == "both_in_one_folder":  # the dsrnet stage's files beside a bundle: one of them was dropped
        for name in ("final.json", "config.yaml", "metrics.jsonl"):
            (call / name).write_text((dsrnet / name).read_text())
        return [call]
    return [dsrnet, call]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("epochs", r"cannot put resnet50_cifar .*epochs=3 \(asked 4\)"),
        ("seed", r"cannot put resnet50_cifar .*seed=1 \(asked 0\)"),
        ("stopped_early", "stopped early"),
        ("stem", "mix stems"),
        ("two_calls", "no single call timed all of dsrnet50_cifar, resnet50_cifar"),
        ("trained_twice", "trained in both"),
        ("dry_timing", "model_kwargs"),
        ("no_runs", "is damaged"),
        ("runs_list", "is damaged"),
        ("file_not_text", "is damaged"),
        ("final_list", "final.json is not a run's final.json"),
        ("bench_row_list", "bench.json of resnet50_cifar is malformed"),
        ("both_in_one_folder", "holds both runs.json .* and final.json"),
    ],
)
def test_refuses_to_mix_runs_or_timings(tmp_path, case, message):
    sources = _refusal(tmp_path, case)
    with pytest.raises(DsrnetError, match=message) as err:
        assemble(sources, tmp_path / "out")
    assert "\n" not in str(err.value) and "fix:" in str(err.value)
    assert not (tmp_path / "out" / "table.md").exists()


def test_refuses_an_output_folder_holding_other_runs(returns, tmp_path):
    out = tmp_path / "cifar10"
    (out / "runs" / "resnet101_cifar").mkdir(parents=True)
    with pytest.raises(DsrnetError, match="not part of this assembly"):
        assemble(returns, out)
