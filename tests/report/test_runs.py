"""``plot_runs``: figures and summary of run folders written by hand (no training): the summary reports the FINAL
epoch, unfinished runs are marked, labels are unique, and bad input fails before anything is written."""

from __future__ import annotations

import csv
import json
import logging

import pytest
from PIL import Image

from dsrnet.errors import DsrnetError
from dsrnet.report.runs import default_labels, plot_runs
from dsrnet.run.rundir import RunDir


def make_run(path, errors, *, planned=None, final=True, stopped_early=False, model="dsrnet50_cifar", seed=None):
    """A run folder like ``dsrnet train`` leaves: one metrics row per entry of ``errors`` (test top-1 error)."""
    planned = planned or len(errors)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model: {model}\ndataset: cifar10\nepochs: {planned}\ndevice: cpu\n"
                                      + (f"seed: {seed}\nout_dir: {path}\n" if seed is not None else ""))  # fmt: skip
    rows = [
        {"epoch": i + 1, "lr": 0.1 * (1 - i / planned), "train_loss": 2.0 - 0.1 * i, "test_top1_error": e,
         "test_top3_error": e / 3, "epoch_time_s": 10.0}
        for i, e in enumerate(errors)
    ]  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if final:
        last = rows[-1]
        (path / "final.json").write_text(json.dumps({
            "model": model, "dataset": "cifar10", "epochs": planned, "epochs_done": len(rows),
            "stopped_early": stopped_early, "params": 1_234_567, "top1_error": last["test_top1_error"],
            "top3_error": last["test_top3_error"], "train_time_s": 10.0 * len(rows), "s_per_epoch": 10.0,
            "device": "cuda:0 (NVIDIA H200)", "recipe": "fast", "seed": 3 if seed is None else seed, "test_images": 1000,
        }))  # fmt: skip
    return path


def read_summary(out):
    with open(out / "summary.csv", newline="") as fh:
        return {row["label"]: row for row in csv.DictReader(fh)}


def test_writes_figures_and_summary(tmp_path):
    a = make_run(tmp_path / "a", [60.0, 40.0, 30.0])
    b = make_run(tmp_path / "b", [70.0, 50.0], planned=4, final=False)
    out = tmp_path / "report"
    written = plot_runs([a, b], out, title="My runs")
    assert [p.name for p in written] == ["curves.png", "lr.png", "summary.md", "summary.csv"]
    # no temp files; the hidden list of plot's own files beside them
    assert sorted(p.name for p in out.iterdir()) == sorted([".dsrnet-plot.json", *(p.name for p in written)])
    assert json.loads((out / ".dsrnet-plot.json").read_text()) == sorted(p.name for p in written)
    for png in ("curves.png", "lr.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
    rows = read_summary(out)
    assert rows["a"]["status"] == "finished" and rows["a"]["epochs_done"] == "3" and rows["a"]["epochs"] == "3"
    assert float(rows["a"]["params"]) == 1_234_567 and rows["a"]["device"] == "cuda:0 (NVIDIA H200)"
    assert rows["b"]["epochs_done"] == "2" and rows["b"]["epochs"] == "4" and rows["b"]["device"] == "cpu"
    # b has no final.json: time from its epoch rows
    assert float(rows["b"]["train_time_s"]) == 20.0 and float(rows["b"]["s_per_epoch"]) == 10.0
    md = (out / "summary.md").read_text()
    assert md.startswith("# My runs\n") and "| a | dsrnet50_cifar | cifar10 | fast | 3 | 3/3 | finished | 30.00 | 10.00 | 1000 |" in md
    header, delimiter = [line for line in md.splitlines() if line.startswith("|")][:2]
    assert header.count("|") == delimiter.count("|") == 15  # 14 columns: GitHub renders only a consistent table


def test_summary_is_the_final_epoch_not_the_best(tmp_path):
    run = make_run(tmp_path / "run", [50.0, 20.0, 35.0])  # best epoch 2 (20 %), final epoch 3 (35 %)
    plot_runs([run], tmp_path / "out")
    row = read_summary(tmp_path / "out")["run"]
    assert float(row["top1_error"]) == 35.0 and row["errors_from"] == "final.json"
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "35.00" in md and "20.00" not in md


def test_a_weight_averaged_run_shows_its_trained_weights_error_too(tmp_path):
    plain = make_run(tmp_path / "plain", [50.0, 30.0])
    averaged = make_run(tmp_path / "ema", [48.0, 28.0])
    final = json.loads((averaged / "final.json").read_text())
    (averaged / "final.json").write_text(json.dumps({**final, "ema_decay": 0.995, "raw_top1_error": 29.5}))
    plot_runs([plain, averaged], tmp_path / "out")
    rows = read_summary(tmp_path / "out")
    assert (rows["ema"]["ema_decay"], rows["ema"]["raw_top1_error"]) == ("0.995", "29.5")
    assert rows["ema"]["top1_error"] == "28.0" and rows["plain"]["raw_top1_error"] == ""
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "their trained weights' top-1 error: ema 29.50." in md


def test_unfinished_runs_are_marked(tmp_path):
    interrupted = make_run(tmp_path / "interrupted", [50.0, 20.0, 35.0], planned=10, final=False)
    running = make_run(tmp_path / "running", [60.0, 45.0], planned=10, final=False)
    stopped = make_run(tmp_path / "stopped", [60.0, 40.0], planned=10, stopped_early=True)
    with RunDir(running).lock():  # a trainer holds the lock while it runs
        plot_runs([interrupted, running, stopped], tmp_path / "out")
    rows = read_summary(tmp_path / "out")
    assert rows["interrupted"]["status"] == "interrupted" and rows["running"]["status"] == "running"
    assert rows["stopped"]["status"] == "stopped early" and rows["stopped"]["errors_from"] == "final.json"
    # without final.json: the LAST logged epoch (35), not the best (20), and said so
    assert float(rows["interrupted"]["top1_error"]) == 35.0 and float(rows["running"]["top1_error"]) == 45.0
    assert "last logged epoch" in rows["interrupted"]["errors_from"]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| 35.00† |" in md and "| 45.00† |" in md and "| 40.00 |" in md
    assert "not a final result" in md and "stopped early: a deadline" in md


def test_an_unfinished_run_scored_every_few_epochs_reports_its_last_scored_epoch(tmp_path):
    run = make_run(tmp_path / "run", [60.0, 40.0], planned=10, final=False)
    with open(run / "metrics.jsonl", "a") as fh:  # eval_every=2: epoch 3 trained, not scored
        fh.write(json.dumps({"epoch": 3, "train_loss": 1.0, "eval_time_s": 0.0}) + "\n")
    plot_runs([run], tmp_path / "out")
    row = read_summary(tmp_path / "out")["run"]
    assert float(row["top1_error"]) == 40.0 and row["epochs_done"] == "3"
    assert row["errors_from"] == "epoch 2, the last scored (interrupted, not a final result)"


def test_stale_final_json_of_a_resumed_run_is_ignored(tmp_path):
    run = make_run(tmp_path / "run", [60.0, 40.0], planned=4, stopped_early=True)
    with open(run / "metrics.jsonl", "a") as fh:  # resumed without a deadline: epoch 3 logged since
        fh.write(json.dumps({"epoch": 3, "test_top1_error": 25.0, "test_top3_error": 8.0, "train_loss": 1.0}) + "\n")
    plot_runs([run], tmp_path / "out")
    row = read_summary(tmp_path / "out")["run"]
    assert row["status"] == "interrupted" and float(row["top1_error"]) == 25.0 and row["epochs_done"] == "3"


def test_labels(tmp_path):
    assert default_labels(["x/a/dsrnet50", "x/b/dsrnet50", "x/c/resnet50"]) == ["a/dsrnet50", "b/dsrnet50", "resnet50"]
    assert default_labels(["runs/a", "runs/a/"]) == ["a", "a-2"]  # the same folder twice
    a = make_run(tmp_path / "one" / "run", [50.0])
    b = make_run(tmp_path / "two" / "run", [40.0])
    plot_runs([a, b], tmp_path / "out")
    assert set(read_summary(tmp_path / "out")) == {"one/run", "two/run"}
    plot_runs([a, b], tmp_path / "out2", labels=["baseline", "ours"])
    assert set(read_summary(tmp_path / "out2")) == {"baseline", "ours"}


def test_confusion_figure_from_eval_folder(tmp_path, caplog):
    run = make_run(tmp_path / "run", [50.0])
    (run / "eval").mkdir()
    (run / "eval" / "confusion.csv").write_text("true\\predicted,cat,dog\ncat,5,1\ndog,2,7\n")
    broken = make_run(tmp_path / "broken", [50.0])
    (broken / "eval").mkdir()
    (broken / "eval" / "confusion.csv").write_text("true\\predicted,cat,dog\ncat,5\n")
    with caplog.at_level(logging.WARNING, logger="dsrnet"):
        written = plot_runs([run, broken], tmp_path / "out", labels=["my run", "broken"])
    assert "confusion_my_run.png" in [p.name for p in written]
    assert not (tmp_path / "out" / "confusion_broken.png").exists() and "not a confusion matrix" in caplog.text
    with Image.open(tmp_path / "out" / "confusion_my_run.png") as im:
        assert im.format == "PNG"


def _bad_metrics(tmp_path, text):
    run = make_run(tmp_path / "run", [50.0])
    (run / "metrics.jsonl").write_text(text)
    return [run]


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (lambda t: [t / "missing"], {}, "does not exist"),
        (lambda t: [t / "FILE"], {}, "is not a folder"),
        (lambda t: [(t / "empty").mkdir() or t / "empty"], {}, "has no metrics.jsonl, so it is not a run folder"),
        (lambda t: _bad_metrics(t, ""), {}, "metrics.jsonl is empty"),
        (lambda t: _bad_metrics(t, '{"epoch": 1}\n{"epoch": 2,\n'), {}, "metrics.jsonl line 2 is not valid JSON"),
        (lambda t: _bad_metrics(t, '{"epoch": 1}\n[1, 2]\n'), {}, "metrics.jsonl line 2 is not an epoch row"),
        (lambda t: [make_run(t / "run", [50.0])], {"labels": ["a", "b"]}, "--labels gives 2 label(s) for 1 run(s)"),
        (lambda t: [make_run(t / "r1", [5.0]), make_run(t / "r2", [5.0])], {"labels": ["a", "a"]}, "gives 'a' to 2"),
        (lambda t: [make_run(t / "run", [50.0])], {"out": "FILE"}, "FILE is a file; fix: pass another --out-dir"),
        (lambda t: [make_run(t / "run", [50.0])], {"out": "FILE/sub"}, "FILE is a file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, setup, kwargs, message):
    (tmp_path / "FILE").write_text("a file")
    good = make_run(tmp_path / "good", [50.0])
    runs = [good, *setup(tmp_path)]  # a good run first: the bad one must still stop everything
    labels = kwargs.get("labels")
    out = tmp_path / kwargs.get("out", "out")
    with pytest.raises(DsrnetError) as err:
        plot_runs(runs[1:] if labels else runs, out, labels=labels)
    assert message in str(err.value) and "fix:" in str(err.value) and "\n" not in str(err.value)
    if "out" not in kwargs:
        assert not out.exists()
    assert (tmp_path / "FILE").read_text() == "a file"


def test_figures_name_unfinished_runs_and_a_stale_confusion_matrix(tmp_path, caplog, monkeypatch):
    from dsrnet.report import plots

    finished = make_run(tmp_path / "done", [50.0, 30.0])
    stopped = make_run(tmp_path / "cut", [60.0, 40.0], planned=10, stopped_early=True)
    (finished / "eval").mkdir()
    (finished / "eval" / "confusion.csv").write_text("true\\predicted,cat,dog\ncat,5,1\ndog,2,7\n")
    (finished / "eval" / "metrics.json").write_text(json.dumps({"epoch": 1}))  # scored before the last epoch
    seen = {}
    real_curves, real_confusion = plots.plot_curves, plots.plot_confusion
    monkeypatch.setattr(plots, "plot_curves", lambda curves, *a, **k: seen.update(curves=list(curves))
                        or real_curves(curves, *a, **k))  # fmt: skip
    monkeypatch.setattr(plots, "plot_confusion", lambda *a: seen.update(title=a[3]) or real_confusion(*a))
    with caplog.at_level(logging.WARNING, logger="dsrnet"):
        plot_runs([finished, stopped], tmp_path / "out", labels=["a|b", "cut"])
    assert seen["curves"] == ["a|b", "cut (stopped early, 2/10 epochs)"]
    assert seen["title"] == "a|b: confusion matrix at epoch 1, not the last (2)" and "rerun `dsrnet eval`" in caplog.text
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| a\\|b | dsrnet50_cifar |" in md  # the label's "|" does not open a column


def test_summary_says_what_makes_runs_comparable(tmp_path):
    run = make_run(tmp_path / "run", [50.0, 30.0])
    final = json.loads((run / "final.json").read_text())
    (run / "final.json").write_text(json.dumps({**final, "precision": "bf16", "batch_size": 512, "lr": 0.4,
                                                "seed": 3, "torch": "2.11.0+cu130"}))  # fmt: skip
    plot_runs([run], tmp_path / "out")
    row = read_summary(tmp_path / "out")["run"]
    assert (row["precision"], row["batch_size"], row["lr"], row["seed"], row["torch"]) == (
        "bf16", "512", "0.4", "3", "2.11.0+cu130")


def test_runs_that_differ_only_by_their_seed_are_aggregated_honestly(tmp_path):
    """Several seeds of one experiment were two unrelated rows: now also their mean, sample std, min-max and n;
    another model, or an unfinished run, is no part of it."""
    import statistics

    finals = {0: 30.0, 1: 32.0, 2: 34.5}
    seeds = [make_run(tmp_path / f"s{k}", [50.0, v], seed=k) for k, v in finals.items()]
    other = make_run(tmp_path / "other", [50.0, 20.0], model="resnet50_cifar", seed=0)
    running = make_run(tmp_path / "running", [50.0, 10.0], planned=4, final=False, seed=9)
    out = tmp_path / "report"
    written = plot_runs([*seeds, other, running], out)
    assert {"seeds.csv", "curves_seeds.png"} <= {p.name for p in written}
    with Image.open(out / "curves_seeds.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    with open(out / "seeds.csv", newline="") as fh:
        (group,) = list(csv.DictReader(fh))
    assert group["model"] == "dsrnet50_cifar" and group["n"] == "3" and json.loads(group["seeds"]) == [0, 1, 2]
    assert float(group["top1_error_mean"]) == pytest.approx(statistics.fmean(finals.values()))
    assert float(group["top1_error_std"]) == pytest.approx(statistics.stdev(finals.values()))  # n - 1
    assert (float(group["top1_error_min"]), float(group["top1_error_max"])) == (30.0, 34.5)
    md = (out / "summary.md").read_text()
    assert "## Across seeds" in md and "| dsrnet50_cifar | cifar10 | fast | 2 | 3 | 0, 1, 2 | 32.17 ± 2.25 | 30.00–34.50 |" in md
    # One seed each: nothing to aggregate, no seeds.csv; into the same folder, the earlier seeds.csv goes too.
    assert "seeds.csv" not in [p.name for p in plot_runs([seeds[0], other], tmp_path / "r2")]
    again = plot_runs([seeds[0], other], out)
    assert sorted(p.name for p in out.iterdir()) == sorted([".dsrnet-plot.json", *(p.name for p in again)])


def test_seed_groups_of_one_model_keep_a_band_each(tmp_path, monkeypatch):
    """curves_seeds.png keyed its bands by model: two groups of one model (here 2 and 3 epochs) drew one band while
    seeds.csv listed both. Each band's label now names what its group differs in."""
    from dsrnet.report import plots

    runs = [make_run(tmp_path / f"e{n}s{s}", [50.0, 40.0, 30.0][:n], seed=s) for n in (2, 3) for s in (0, 1)]
    seen = {}
    monkeypatch.setattr(plots, "plot_seed_bands", lambda bands, path, **k: seen.update(bands=bands) or path)
    plot_runs(runs, tmp_path / "out")
    assert {label: len(rows) for label, rows in seen["bands"].items()} == {
        "dsrnet50_cifar (epochs=2)": 2, "dsrnet50_cifar (epochs=3)": 2}
    with open(tmp_path / "out" / "seeds.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2


def test_plot_never_overwrites_or_deletes_files_it_did_not_write(tmp_path):
    """Into a `dsrnet reproduce` folder, plot replaced its curves.png and deleted its confusion_*.png: a folder
    holding files of those names that plot did not write is refused; a folder plot wrote is rewritten, and only
    plot's own files there are replaced or removed."""
    run = make_run(tmp_path / "a", [50.0, 40.0], seed=0)
    report = tmp_path / "reproduce-report"
    report.mkdir()
    for name, data in (("table.md", "# table\n"), ("curves.png", "theirs"), ("confusion_dsrnet.png", "theirs")):
        (report / name).write_text(data)
    with pytest.raises(DsrnetError, match=r"holds curves\.png, which `dsrnet plot` did not write; fix: pass another"):
        plot_runs([run], report)
    assert sorted(p.name for p in report.iterdir()) == ["confusion_dsrnet.png", "curves.png", "table.md"]
    assert (report / "curves.png").read_text() == "theirs"
    out = tmp_path / "plots"
    plot_runs([run, make_run(tmp_path / "b", [50.0, 45.0], seed=1)], out)
    (out / "notes.txt").write_text("mine")
    plot_runs([run], out)  # the seed files of the earlier call go; the user's own file stays
    assert "seeds.csv" not in {p.name for p in out.iterdir()} and (out / "notes.txt").read_text() == "mine"


def test_a_repeated_seed_counts_once_and_groups_name_what_they_differ_in(tmp_path, caplog):
    """A rerun of one seed dropped the whole group's statistics without a word; two groups differing only in a
    setting had identical descriptive columns in the seed table."""
    runs = [make_run(tmp_path / f"s{s}", [50.0, 30.0 + s], seed=s) for s in (0, 1, 2)]
    rerun = make_run(tmp_path / "s0-again", [50.0, 99.0], seed=0)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        plot_runs([*runs, rerun], out)
    assert "repeats seed 0 of" in caplog.text
    with open(out / "seeds.csv", newline="") as fh:
        (group,) = list(csv.DictReader(fh))
    assert json.loads(group["seeds"]) == [0, 1, 2] and float(group["top1_error_max"]) == 32.0  # not the rerun's 99
    wide = [make_run(tmp_path / f"w{s}", [50.0, 20.0 + s], seed=s) for s in (0, 1)]
    for path in wide:
        (path / "config.yaml").write_text((path / "config.yaml").read_text() + "pad_fill: mean\n")
    plot_runs([*runs, *wide], tmp_path / "two")
    with open(tmp_path / "two" / "seeds.csv", newline="") as fh:
        labels = [g["group"] for g in csv.DictReader(fh)]
    assert labels == ["dsrnet50_cifar (pad_fill=None)", "dsrnet50_cifar (pad_fill=mean)"]
    assert "dsrnet50_cifar (pad_fill=mean)" in (tmp_path / "two" / "summary.md").read_text()


def test_a_plot_stopped_half_way_can_be_run_again(tmp_path, monkeypatch):
    """The list of plot's files was written last: a call stopped after curves.png left a folder its own rerun
    refused as holding foreign files."""
    from dsrnet.report import plots

    run = make_run(tmp_path / "a", [50.0, 40.0], seed=0)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_lr", stopped)
    with pytest.raises(KeyboardInterrupt):
        plot_runs([run], tmp_path / "out")
    assert (tmp_path / "out" / "curves.png").is_file()
    monkeypatch.undo()
    assert "lr.png" in [p.name for p in plot_runs([run], tmp_path / "out")]
