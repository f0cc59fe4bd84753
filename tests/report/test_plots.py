"""Figures: the Pareto front, and that every plot writes a real PNG atomically."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dsrnet.report import plots
from dsrnet.report.plots import pareto_front, plot_confusion, plot_curves, plot_params, plot_tradeoff


def test_pareto_front():
    assert pareto_front([(1.0, 5.0), (2.0, 4.0), (3.0, 6.0), (0.5, 9.0)]) == [3, 0, 1]


def _png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_every_plot_writes_a_png(tmp_path):
    plot_params({"dsrnet50": 12_245_258, "resnet50": 23_528_522}, tmp_path / "p.png", paper_dsrnet=2.19e7)
    pts = [{"label": "a", "latency_ms": 1.0, "error": 10.0, "params": 1e6},
           {"label": "b", "latency_ms": 2.0, "error": 8.0, "params": 2e6}]  # fmt: skip
    plot_tradeoff(pts, tmp_path / "t.png", title="t", xlabel="ms")
    curves = {"dsrnet50": [{"epoch": 1, "test_top1_error": 50.0, "train_loss": 2.0},
                           {"epoch": 2, "test_top1_error": 40.0, "train_loss": 1.5}]}  # fmt: skip
    plot_curves(curves, tmp_path / "c.png", title="c")
    conf = np.array([[5, 1], [2, 7]])
    plot_confusion(conf, ["cat", "dog"], tmp_path / "m.png", "m")
    for name in ("p", "t", "c", "m"):
        w, h = _png(tmp_path / f"{name}.png")
        assert w > 100 and h > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "m.png", "p.png", "t.png"]  # no temp files


def test_curves_of_a_weight_averaged_run_show_the_trained_weights_dashed(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    rows = [{"epoch": e, "test_top1_error": 50.0 - e, "raw_test_top1_error": 52.0 - e, "train_loss": 2.0 / e}
            for e in (1, 2, 3)]  # fmt: skip
    plot_curves({"ema run": rows, "plain run": [{k: v for k, v in r.items() if not k.startswith("raw")} for r in rows]},
                tmp_path / "c.png", title="c", pretty_names=False)  # fmt: skip
    ax_err = figures[0].axes[0]
    lines = {line.get_label(): line for line in ax_err.get_lines()}
    assert sorted(lines) == ["ema run", "ema run (without EMA)", "plain run"]
    dashed = lines["ema run (without EMA)"]
    assert list(dashed.get_ydata()) == [51.0, 50.0, 49.0] and dashed.get_linestyle() == "--"
    assert dashed.get_color() == lines["ema run"].get_color()


def test_curves_of_a_run_scored_every_few_epochs_join_the_scored_epochs(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    rows = [{"epoch": e, "train_loss": 2.0 / e} for e in (1, 2, 3, 4)]
    for r in rows[1::2]:  # eval_every=2: epochs 2 and 4 scored
        r.update(test_top1_error=50.0 - r["epoch"], raw_test_top1_error=52.0 - r["epoch"])
    plot_curves({"run": rows}, tmp_path / "c.png", title="c", pretty_names=False)
    err, loss = figures[0].axes[:2]
    lines = {line.get_label(): line for line in err.get_lines()}
    assert list(lines["run"].get_xdata()) == [2, 4] and list(lines["run"].get_ydata()) == [48.0, 46.0]
    assert list(lines["run (without EMA)"].get_ydata()) == [50.0, 48.0]
    assert list(loss.get_lines()[0].get_xdata()) == [1, 2, 3, 4]  # the training loss of every epoch


def test_tradeoff_shows_the_papers_error_and_a_log_axis_for_spread_times(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    points = [
        {"label": "DSRNet", "latency_ms": 10.0, "error": 7.6, "params": 12e6, "paper_error": 9.2},
        {"label": "ResNet50", "latency_ms": 50.0, "error": 6.0, "params": 23e6, "paper_error": 11.85},
        {"label": "MobileNetV2", "latency_ms": 3.0, "error": 9.0, "params": 2e6},  # no paper number
    ]
    plot_tradeoff(points, tmp_path / "t.png", title="t")
    ax = figures[0].axes[0]
    hollow = [c for c in ax.collections if c.get_label() == "the paper's error (at our time)"]
    assert len(hollow) == 1 and list(hollow[0].get_offsets()[0]) == [10.0, 9.2]
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "the paper's error (at our time)"
    assert ax.get_xscale() == "log" and ax.get_xlabel().endswith("log scale")  # 3 to 50 ms: > 4x


def test_more_than_ten_runs_on_one_figure_stay_distinguishable(tmp_path, monkeypatch):
    """The 11th run had the 1st one's colour and style (matplotlib's colour cycle has 10)."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    rows = [{"epoch": e, "test_top1_error": 50.0 - e, "train_loss": 2.0 / e, "lr": 0.1} for e in (1, 2)]
    curves = {f"run{i}": rows for i in range(12)}
    plot_curves(curves, tmp_path / "c.png", title="c", pretty_names=False)
    plots.plot_lr(curves, tmp_path / "lr.png", title="lr")
    for fig in figures:
        looks = [(str(line.get_color()), line.get_linestyle()) for line in fig.axes[0].get_lines()]
        assert len(looks) == 12 and len(set(looks)) == 12


def test_seed_bands_draw_the_mean_and_the_min_max_of_each_epoch(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    runs = [[{"epoch": 1, "test_top1_error": 50.0}, {"epoch": 2, "test_top1_error": e}] for e in (30.0, 34.0, 35.0)]
    plots.plot_seed_bands({"DSRNet": runs}, tmp_path / "s.png", title="s")
    ax = figures[0].axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [50.0, 33.0]
    assert line.get_label() == "DSRNet (mean of 3 seeds)"
    (band,) = ax.collections
    ys = sorted({round(float(y), 6) for y in band.get_paths()[0].vertices[:, 1]})
    assert ys == [30.0, 35.0, 50.0]  # min and max of epoch 2, both 50 at epoch 1


def test_tradeoff_labels_of_coinciding_points_are_stacked_not_overprinted(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    points = [
        {"label": "DSRNet", "latency_ms": 10.0, "error": 7.6, "params": 12e6},
        {"label": "DSRNet (EMA)", "latency_ms": 10.0, "error": 7.6, "params": 12e6},  # the same point
        {"label": "ResNet50", "latency_ms": 11.0, "error": 6.0, "params": 23e6},
        {"label": "ResNeXt50", "latency_ms": 20.0, "error": 6.5, "params": 23e6},
    ]
    plot_tradeoff(points, tmp_path / "t.png", title="t")
    offsets = {t.get_text().split("\n")[0]: tuple(t.xyann) for t in figures[0].axes[0].texts}
    assert offsets["DSRNet"] != offsets["DSRNet (EMA)"]
    assert offsets["DSRNet"] == offsets["ResNet50"] == offsets["ResNeXt50"] == (6, 6)  # apart: as before
