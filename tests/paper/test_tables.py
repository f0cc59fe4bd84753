"""``dsrnet.paper.tables``: a run that a time limit stopped early is marked in every table, never shown as a result."""

from __future__ import annotations

from dsrnet.paper.runner import Job
from dsrnet.paper.tables import details_table, paper_layout_table

BENCH = {"latency_ms": 10.0, "latency_p25_ms": 9.0, "latency_p75_ms": 11.0, "images_per_s": 12800.0, "repeats": 3, "warmup": 1,
         "params": 12_240_000, "gmacs_per_image": 0.7}  # fmt: skip


def _row(key, arch, **final):
    base = {"top1_error": 20.0, "top3_error": 5.0, "top5_error": 2.0, "epochs": 8, "train_time_s": 80.0,
            "s_per_epoch": 10.0}  # fmt: skip
    return {"job": Job(key, arch), "final": {**base, **final}, "bench": dict(BENCH)}


def test_stopped_early_runs_are_marked_in_every_cell():
    rows = [_row("dsrnet50", "dsrnet50"),
            _row("resnet50", "resnet50", top1_error=84.0, stopped_early=True, epochs_done=1)]  # fmt: skip
    paper = paper_layout_table(rows, "cifar10")
    assert "| 20.00% (9.20%) | 84.00%‡ (11.85%) |" in paper
    details = details_table(rows)
    assert "| 84.00%‡ | 5.00%‡ | 2.00%‡ |" in details and "| 1/8‡ |" in details
    assert "| 20.00% | 5.00% | 2.00% |" in details and "| 8 |" in details


def test_runs_trained_on_different_cards_name_each_card():
    """Runs assembled from several GPU calls (the shipped DSRNet on an H200, a baseline on an H100): every row
    names its card and the settings line says the seconds compare only on one card (it named the first row's
    card for all)."""
    from types import SimpleNamespace

    from dsrnet.paper.tables import _settings_lines

    rows = [_row("dsrnet50", "dsrnet50_cifar", device="cuda:0 (NVIDIA H200)"),
            _row("resnet50", "resnet50_cifar", device="cuda:0 (NVIDIA H100 80GB HBM3)")]  # fmt: skip
    details = details_table(rows)
    assert "| trained on |" in details.splitlines()[0]
    assert details.splitlines()[2].endswith("| cuda:0 (NVIDIA H200) |")
    assert details.splitlines()[3].endswith("| cuda:0 (NVIDIA H100 80GB HBM3) |")
    settings = SimpleNamespace(command="x", bench={"precision": "fp32", "batch_size": 128, "image_size": 32})
    env = {"device": "cpu", "torch": "2.14.1", "device_name": "Xeon", "torch_threads": 2, "date": "2026-11-26"}
    training = _settings_lines(settings, rows, env)[1]
    assert "devices cuda:0 (NVIDIA H200), cuda:0 (NVIDIA H100 80GB HBM3) (see \"trained on\"" in training
    one_card = [_row("dsrnet50", "dsrnet50_cifar", device="cpu"), _row("resnet50", "resnet50_cifar", device="cpu")]
    assert "trained on" not in details_table(one_card) and ", device cpu;" in _settings_lines(settings, one_card, env)[1]


def test_the_papers_times_stand_only_beside_its_setting():
    """The paper's time ratio and 21.9 M were printed beside a narrowed, cifar-stem DSRNet timed at batch 8."""
    paper = [_row("dsrnet50", "dsrnet50"), _row("resnet50", "resnet50")]
    rows = {line.split(" | ")[0].strip("| "): line for line in paper_layout_table(paper, "cifar10").splitlines()}
    assert rows["time ÷ DSRNet's, ours (paper)"].endswith("| 1.00x (1.00x) | 1.00x (4.86x) |")
    assert rows["params (M), ours (paper)"].endswith("| 12.24 (21.9) | 12.24 (–) |")
    assert "| 10.0 (0.719) |" in paper_layout_table([_row("resnet50", "resnet50")], "cifar10")  # no DSRNet column
    for case in ({"batch_size": 8}, {"stem": "cifar"}, {"kwargs": {"widths": [8, 8, 8, 8]}}):
        rows_in = [_row("dsrnet50" + ("_cifar" if "stem" in case else ""), "dsrnet50" + ("_cifar" if "stem" in case else "")),
                   _row("resnet50", "resnet50" + ("_cifar" if "stem" in case else ""))]  # fmt: skip
        if "kwargs" in case:
            rows_in[0]["job"] = Job("dsrnet50", "dsrnet50", case["kwargs"])
        table = paper_layout_table(rows_in, "cifar10", case.get("batch_size", 128))
        assert "(4.86x)" not in table and "(0.719)" not in table, case
        if "kwargs" in case:
            assert "(21.9)" not in table and 'DSRNet {"widths":[8,8,8,8]}' in table.splitlines()[0]
