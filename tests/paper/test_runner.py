"""``dsrnet reproduce`` / ``dsrnet ablate``: a tiny real CIFAR-10 run writes every table and figure, re-runs skip
finished work, and bad arguments fail with one clear line before any work starts."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import dsrnet
from dsrnet.cli.main import main
from dsrnet.paper import runner as reproduce
from dsrnet.report.markdown import read_json

TINY = json.dumps({"widths": [8, 16, 32, 64]})
REPRODUCE_FILES = ("table.md", "table.csv", "summary.json", "params.png", "pareto.png", "curves.png",
                   "confusion_dsrnet.png")  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _quick(cifar10_dir, out, *extra):
    return ["--quick", "--data-dir", str(cifar10_dir), "--out-dir", str(out), "--bench-batch-size", "4", *extra]


def _assert_png(path, min_side=200):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > min_side, (path, im.size)


@pytest.fixture(scope="module")
def quick_run(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    rc = main(
        ["reproduce", "--dataset", "cifar10", "--models", "dsrnet50", "resnet50", *_quick(cifar10_dir, out)]
    )
    assert rc == 0
    return out


def test_reproduce_quick_writes_every_table_and_figure(quick_run):
    out = quick_run
    for name in REPRODUCE_FILES:
        assert (out / name).is_file(), name
    for name in REPRODUCE_FILES:
        if name.endswith(".png"):
            _assert_png(out / name)
    md = (out / "table.md").read_text()
    assert "| Top1-error, ours (paper) |" in md and "(9.20%)" in md and "(11.85%)" in md
    assert "| params (M), ours (paper) | 12.25 (21.9) | 23.53 (–) |" in md
    assert "--quick" in md and "Command: `dsrnet reproduce --dataset cifar10" in md

    with open(out / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == ["dsrnet50", "resnet50"]
    for r in rows:
        assert 0 <= float(r["top1_error"]) <= 100 and float(r["top3_error"]) <= float(r["top1_error"])
        assert float(r["latency_ms"]) > 0
        assert int(r["params"]) == sum(p.numel() for p in dsrnet.create_model(r["model"], 10).parameters())
    summary = read_json(out / "summary.json")
    assert summary["env"]["torch"] == torch.__version__ and summary["seed"] == 0 and summary["quick"] is True
    assert summary["models"][0]["paper"]["top1_error"] == 9.20

    # Training ran on 20 per class and tested on 10 per class; the confusion matrix is of the same test images.
    final = read_json(out / "runs" / "dsrnet50" / "final.json")
    assert (final["epochs"], final["train_images"], final["test_images"]) == (1, 200, 100)
    evaluated = read_json(out / "runs" / "dsrnet50" / "eval" / "metrics.json")
    assert evaluated["test_images"] == 100 and evaluated["top1_error"] == pytest.approx(final["top1_error"])


def test_rerun_skips_finished_work(quick_run, cifar10_dir, capsys):
    out = quick_run
    runs = [out / "runs" / m for m in ("dsrnet50", "resnet50")]
    before = {p: p.stat().st_mtime_ns for run in runs for p in (run / "final.json", run / "checkpoint.pt",
                                                                   run / "bench.json")}  # fmt: skip
    rc = main(
        ["reproduce", "--dataset", "cifar10", "--models", "dsrnet50", "resnet50", *_quick(cifar10_dir, out)]
    )
    err = capsys.readouterr().err
    assert rc == 0
    assert "skip dsrnet50: finished run" in err and "skip resnet50: finished run" in err
    assert "skip bench of dsrnet50" in err and "skip eval of dsrnet50" in err
    assert "training " not in err
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_saved_timing_of_another_setup_is_taken_again(quick_run, cifar10_dir, capsys):
    """One table, one setup: a bench.json timed with another thread count (or machine, or torch) is re-timed."""
    out = quick_run
    path = out / "runs" / "resnet50" / "bench.json"
    saved = read_json(path)
    saved["env"]["torch_threads"] += 7
    path.write_text(json.dumps(saved))
    rc = main(["reproduce", "--dataset", "cifar10", "--models", "dsrnet50", "resnet50", *_quick(cifar10_dir, out)])
    err = capsys.readouterr().err
    assert rc == 0 and "skip bench of dsrnet50" in err
    assert f"re-time resnet50: its saved timing had another setup (torch_threads {saved['env']['torch_threads']}" in err
    assert read_json(path)["env"]["torch_threads"] == saved["env"]["torch_threads"] - 7


def test_rerun_with_fewer_models_keeps_the_finished_columns(quick_run, cifar10_dir, capsys):
    out = quick_run
    rc = main(["reproduce", "--dataset", "cifar10", "--models", "resnet50", *_quick(cifar10_dir, out)])
    captured = capsys.readouterr()
    assert rc == 0 and "also include the finished runs of dsrnet50" in captured.err
    md = (out / "table.md").read_text()
    assert "| DSRNet | ResNet50 |" in md  # DSRNet's column is kept, in the paper's order
    with open(out / "table.csv", newline="") as fh:
        assert [r["model"] for r in csv.DictReader(fh)] == ["dsrnet50", "resnet50"]


def test_report_only_rewrites_the_tables_and_trains_nothing(quick_run, cifar10_dir, tmp_path, capsys):
    out = quick_run
    table = (out / "table.md").read_text()
    (out / "table.md").unlink()
    runs = [out / "runs" / m for m in ("dsrnet50", "resnet50")]
    before = {p: p.stat().st_mtime_ns for run in runs for p in run.iterdir() if p.is_file()}
    rc = main(["reproduce", "--dataset", "cifar10", "--report-only", *_quick(cifar10_dir, out)])
    captured = capsys.readouterr()
    assert rc == 0 and "training " not in captured.err
    rewritten = (out / "table.md").read_text()
    assert captured.out.strip() and captured.out.strip() in rewritten
    rows = [line for line in rewritten.splitlines() if line.startswith("|")]
    assert rows and rows == [line for line in table.splitlines() if line.startswith("|")]  # the same numbers
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # A folder with no finished run of these settings: one line, nothing written.
    rc = main(["reproduce", "--dataset", "cifar10", "--report-only", *_quick(cifar10_dir, tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds no finished, benchmarked run" in err and len(err.strip().splitlines()) == 1
    # Finished runs of other settings: the error names what differs.
    rc = main(["reproduce", "--dataset", "cifar10", "--report-only", *_quick(cifar10_dir, out), "--seed", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and "finished runs differ: dsrnet50:" in err and "seed" in err and len(err.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_report_only_reports_every_finished_model_or_those_of_models(quick_run, cifar10_dir, capsys, monkeypatch):
    """--report-only left out finished runs of models outside the paper's comparison (reproduce --models takes any
    registered model), and recorded a --models it did not follow. Every finished run of this stem is reported, or
    exactly those of --models; a named model without a finished run is one error."""
    from dsrnet.paper import runner

    out = quick_run
    argv = ["reproduce", "--dataset", "cifar10", "--report-only", *_quick(cifar10_dir, out)]
    monkeypatch.setattr(runner, "PAPER_COMPARISON", ("dsrnet50",))  # resnet50: a model outside the comparison
    assert main(argv) == 0
    capsys.readouterr()
    with open(out / "table.csv", newline="") as fh:
        assert [r["model"] for r in csv.DictReader(fh)] == ["dsrnet50", "resnet50"]
    command = read_json(out / "summary.json")["command"]
    assert "--report-only" in command and "--models" not in command
    monkeypatch.undo()
    assert main([*argv, "--models", "resnet50"]) == 0
    capsys.readouterr()
    with open(out / "table.csv", newline="") as fh:
        assert [r["model"] for r in csv.DictReader(fh)] == ["resnet50"]
    rc = main([*argv, "--models", "resnet50", "mobilenet_v2"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds no finished, benchmarked run of mobilenet_v2" in err
    assert main(argv) == 0  # the fixture's tables as they were
    capsys.readouterr()


def test_report_only_refuses_timings_of_two_setups_and_damaged_run_files(quick_run, cifar10_dir, tmp_path, capsys):
    """--report-only put a timing of another machine beside ours under our machine's name; a damaged final.json or
    bench.json was a JSONDecodeError traceback."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(quick_run, out)
    argv = ["reproduce", "--dataset", "cifar10", "--report-only", *_quick(cifar10_dir, out)]
    path = out / "runs" / "resnet50" / "bench.json"
    saved = read_json(path)
    other = {**saved, "env": {**saved["env"], "torch_threads": saved["env"]["torch_threads"] + 95}}
    path.write_text(json.dumps(other))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bench.json was timed on another setup than" in err and "torch_threads" in err
    path.write_text(json.dumps(saved)[:40])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bench.json is damaged" in err and len(err.strip().splitlines()) == 1
    path.write_text(json.dumps(saved))
    table = (out / "table.md").read_text()
    (out / "runs" / "resnet50" / "final.json").write_text('{"model": "resnet50", "top1')
    assert main(argv) == 2  # named, not a traceback, and not a table silently without that column
    err = capsys.readouterr().err
    assert "resnet50/final.json is damaged (not a JSON object); fix: repair it, or delete it" in err
    assert len(err.strip().splitlines()) == 1 and (out / "table.md").read_text() == table


def test_report_only_takes_the_bench_settings_it_is_not_given_from_the_saved_timings(quick_run, cifar10_dir,
                                                                                     tmp_path, capsys):  # fmt: skip
    """Runs timed on a GPU (bench.json: cuda, 10 warm-up, 30 repeats) could not be reported on a CPU: the defaults
    were this machine's, and no flag names a bench device (--device cuda: "torch sees no CUDA GPU")."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(quick_run, out)
    for model in ("dsrnet50", "resnet50"):
        path = out / "runs" / model / "bench.json"
        saved = read_json(path)
        path.write_text(json.dumps({**saved, "request": {**saved["request"], "device": "cuda", "warmup": 10,
                                                         "repeats": 30}}))  # fmt: skip
    argv = ["reproduce", "--dataset", "cifar10", "--report-only", *_quick(cifar10_dir, out)]  # batch 4: as saved
    assert main(argv) == 0
    assert "| DSRNet | ResNet50 |" in capsys.readouterr().out
    assert main([*argv, "--bench-repeats", "3"]) == 2  # asked for: checked against the saved timings, not adopted
    assert "bench.json was timed with other settings" in capsys.readouterr().err


def test_table_csv_keeps_the_papers_time_to_its_setting_and_names_the_models_arguments(quick_run):
    """The CSV carried the paper's time beside ours timed at batch 4 (the markdown shows "–"), and had no column
    that told a narrowed DSRNet from the paper's network, nor a quick run from a full one."""
    with open(quick_run / "table.csv", newline="") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert json.loads(rows["dsrnet50"]["model_kwargs"]) == {} and rows["dsrnet50"]["quick"] == "True"
    assert rows["dsrnet50"]["paper_time"] == "" and rows["resnet50"]["paper_time"] == ""
    assert rows["dsrnet50"]["paper_top1_error"] == "9.2"


def test_rerun_with_other_settings_is_refused(quick_run, cifar10_dir, capsys):
    argv = [
        "reproduce",
        "--dataset",
        "cifar10",
        "--models",
        "dsrnet50",
        *_quick(cifar10_dir, quick_run),
        "--epochs",
        "2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsrnet: error: ") and "holds a finished run with other settings: epochs=1" in err


def test_unfinished_run_is_resumed(cifar10_dir, tmp_path, capsys):
    argv = ["reproduce", "--dataset", "cifar10", "--models", "dsrnet50", "--model-kwargs", TINY,
            *_quick(cifar10_dir, tmp_path)]  # fmt: skip
    assert main(argv) == 0
    final = tmp_path / "runs" / "dsrnet50" / "final.json"
    first = read_json(final)
    final.unlink()  # as if the run had been killed after its last checkpoint
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "resume dsrnet50 from" in captured.err and "resumed" in captured.err
    # stdout is the table alone: `dsrnet reproduce > table.md` captures no progress lines
    assert captured.out.startswith("|") and "resumed" not in captured.out and "epoch" not in captured.out
    assert read_json(final)["top1_error"] == pytest.approx(first["top1_error"])


def test_ablate_quick_writes_table_and_plot(cifar10_dir, tmp_path, capsys):
    rc = main(["ablate", "--dataset", "cifar10", "--model-kwargs", TINY, *_quick(cifar10_dir, tmp_path)])
    assert rc == 0
    for name in ("table.md", "table.csv", "summary.json", "ablation.png"):
        assert (tmp_path / name).is_file(), name
    _assert_png(tmp_path / "ablation.png")
    with open(tmp_path / "table.csv", newline="") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    assert list(rows) == [v.name for v in reproduce.ablation_variants("paper")]
    assert float(rows["dsrnet"]["delta_top1_vs_dsrnet"]) == 0.0
    # The variants really are different networks: a full 3x3 conv has more parameters, the cifar stem more MACs.
    assert int(rows["full_3x3"]["params"]) > int(rows["dsrnet"]["params"])
    assert float(rows["stem_cifar"]["gmacs_per_image"]) > 4 * float(rows["dsrnet"]["gmacs_per_image"])
    assert json.loads(rows["no_dilation"]["model_kwargs"])["block_dilations"] == [1]
    md = (tmp_path / "table.md").read_text()
    assert "| no_dilation |" in md and "| stride_1x1 |" in md
    # --report-only: the same table from the runs' files, nothing trained or timed
    runs = sorted(p for p in (tmp_path / "runs").rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in runs}
    (tmp_path / "table.md").unlink()
    argv = ["ablate", "--dataset", "cifar10", "--model-kwargs", TINY, "--report-only", *_quick(cifar10_dir, tmp_path)]
    assert main(argv) == 0
    rows_of = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert rows_of((tmp_path / "table.md").read_text()) == rows_of(md)
    assert {p: p.stat().st_mtime_ns for p in runs} == before
    assert main([*argv, "--seed", "3"]) == 2  # runs of other settings: refused, naming the difference
    assert "finished runs differ: dsrnet:" in capsys.readouterr().err


def test_ablate_of_some_variants_keeps_the_finished_ones(cifar10_dir, tmp_path, capsys):
    """A rerun with --variants X into a folder of finished variants replaced the whole table, baseline included."""
    base = ["ablate", "--dataset", "cifar10", "--model-kwargs", TINY, *_quick(cifar10_dir, tmp_path)]
    assert main([*base, "--variants", "dsrnet", "no_dilation"]) == 0
    assert main([*base, "--variants", "stride_1x1"]) == 0
    assert "also include the finished variants dsrnet, no_dilation" in capsys.readouterr().err
    with open(tmp_path / "table.csv", newline="") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    order = [v.name for v in reproduce.ablation_variants("paper")]
    assert list(rows) == sorted(["dsrnet", "no_dilation", "stride_1x1"], key=order.index)
    assert rows["stride_1x1"]["delta_top1_vs_dsrnet"] != ""  # the baseline is there to compare with


def test_ablate_refuses_model_kwargs_that_a_variant_overrides(tmp_path, capsys):
    rc = main(["ablate", "--dataset", "cifar10", "--variants", "full_3x3", "--model-kwargs", '{"separable": true}',
               "--out-dir", str(tmp_path / "a")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and not (tmp_path / "a").exists()
    assert "variant full_3x3 sets separable=False, and --model-kwargs sets separable=True; fix: drop separable" in err


def test_ablation_variants_build():
    for v in reproduce.ablation_variants("paper"):
        name = "dsrnet50_cifar" if v.stem == "cifar" else "dsrnet50"
        model = dsrnet.create_model(name, 10, widths=(8, 16, 32, 64), **v.kwargs)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [v.name for v in reproduce.ablation_variants("cifar")][-1] == "stem_paper"
    # Section 3's three dilation claims, each with a variant that changes that rate alone (besides "every rate 1")
    single = {v.name: v.kwargs for v in reproduce.ablation_variants("paper") if v.name != "no_dilation"}
    assert all(len(kwargs) <= 1 for kwargs in single.values()), single
    assert single["no_stem_dilation"] == {"stem_dilation": 1} and single["no_down_dilation"] == {"down_dilation": 1}
    assert single["no_block_dilation"] == {"block_dilations": [1]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reproduce", "--dataset", "cifar10", "--models", "resnet5"], "unknown model(s) resnet5"),
        # a cifar-stem name under the default --stem paper used to train the paper-stem model, silently
        (["reproduce", "--dataset", "cifar10", "--models", "dsrnet50_cifar", "resnet50"],
         "dsrnet50_cifar has the cifar stem, but --stem is paper; fix: --stem cifar --models dsrnet50 resnet50"),
        (["reproduce", "--dataset", "cifar10", "--epochs", "0"], "epochs"),
        # a name twice gave two identical columns (rows)
        (["reproduce", "--dataset", "cifar10", "--models", "dsrnet50", "resnet50", "dsrnet50"],
         "--models names dsrnet50 more than once; fix: name each once"),
        (["ablate", "--dataset", "cifar10", "--variants", "no_dilation", "no_dilation"],
         "--variants names no_dilation more than once"),
        (
            ["ablate", "--dataset", "cifar10", "--variants", "no_dilation", "wide"],
            "unknown ablation variant(s) wide",
        ),
        (
            ["reproduce", "--dataset", "cifar10", "--bench-repeats", "0"],
            "bench repeats must be an integer >= 1",
        ),
        (
            ["reproduce", "--dataset", "cifar10", "--model-kwargs", "[1]"],
            "--model-kwargs must be a JSON object",
        ),
    ],
)
def test_bad_arguments_fail_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*argv, "--data-dir", str(tmp_path), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsrnet: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "--dataset", "cifar10", "--quick", "--data-dir", str(tmp_path / "none"), "--out-dir",
                 str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("dsrnet: error: ") and "cifar10" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["reproduce", "ablate"])
def test_download_flag_reaches_the_data_check(command, tmp_path, capsys, monkeypatch):
    # The missing-data error says "rerun with --download": both commands take it and pass it on to the data.
    import torchvision.datasets as tvd

    calls = []

    def no_network(root, **kwargs):
        calls.append(kwargs)
        raise OSError("no network in tests")

    monkeypatch.setattr(tvd, "CIFAR10", no_network)
    out = tmp_path / "out"
    argv = [command, "--dataset", "cifar10", "--quick", "--download", "--data-dir", str(tmp_path / "none"),
            "--out-dir", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert calls and calls[0]["download"] is True
    err = capsys.readouterr().err
    assert "download of cifar10" in err and "fix: check the network" in err
    assert not out.exists()


def test_unknown_dataset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--dataset", "mnist"])
    assert exc.value.code == 2
    assert "invalid choice: 'mnist'" in capsys.readouterr().err


def test_config_file_gives_every_model_its_settings_and_flags_win(cifar10_dir, tmp_path, capsys):
    import yaml

    config = tmp_path / "recipe.yaml"
    # A recipe file as configs/fast.yaml is: it names the model it was written for (ignored here) and the dataset.
    # device and progress: the flags' defaults used to override the file's (a `device: cpu` file trained on a GPU)
    config.write_text("model: dsrnet50_cifar\ndataset: cifar10\nrecipe: fast\ncutout: 8\nema-decay: 0.9\nlr: 0.2\n"
                      "seed: 5\nepochs: 40\nbatch_size: 512\ndevice: cpu\nprogress: false\n")
    out = tmp_path / "out"
    argv = ["reproduce", "--dataset", "cifar10", "--models", "dsrnet50", "--model-kwargs", TINY, "--config",
            str(config), "--lr", "0.05", *_quick(cifar10_dir, out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    saved = yaml.safe_load((out / "runs" / "dsrnet50" / "config.yaml").read_text())
    assert (saved["recipe"], saved["cutout"], saved["ema_decay"], saved["seed"]) == ("fast", 8, 0.9, 5)
    assert (saved["device"], saved["progress"]) == ("cpu", False)
    assert saved["lr"] == 0.05  # the flag beats the file
    assert (saved["epochs"], saved["batch_size"]) == (1, 32)  # and --quick's sizes beat the file's
    assert "--recipe fast" in (out / "table.md").read_text() and "--seed 5" in (out / "table.md").read_text()
    # What reproduce sets per model cannot come from the file: one line, before any work.
    for line, message in [("dwconv: triton\n", "sets dwconv, which every model"),
                          ("out-dir: elsewhere\n", "sets out_dir, which every model"),
                          ("dataset: cifar100\n", "is for another dataset than --dataset cifar10")]:
        config.write_text(line)
        other = tmp_path / "other"
        assert main([*argv[:-len(_quick(cifar10_dir, out))], *_quick(cifar10_dir, other)]) == 2
        err = capsys.readouterr().err
        assert f"config file {config} {message}" in err and len(err.strip().splitlines()) == 1
        assert not other.exists()
