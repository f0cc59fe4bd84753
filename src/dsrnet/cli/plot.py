"""``dsrnet plot``: run folders -> :func:`dsrnet.report.runs.plot_runs` -> the files written."""

from __future__ import annotations

import argparse


def configure(name: str, p: argparse.ArgumentParser) -> None:
    p.description = (
        "Figures and a summary table of `dsrnet train` run folders, for a report: curves.png (test top-1 error and "
        "train loss per epoch), lr.png (learning rate per epoch), confusion_<label>.png (runs with an eval/ folder "
        "from `dsrnet eval`), summary.md and summary.csv (one row per run: final-epoch top-1/top-3 error, epochs, "
        "finished / stopped early / running / interrupted, train time, params, device; finished runs that differ only "
        "by their seed also as one row each group: mean ± sample std, min-max, n, in summary.md and seeds.csv, and "
        "curves_seeds.png: each group's mean test error per epoch with its min-max band). A run "
        "that has not ended reports its last logged epoch, marked as such; never the best epoch."
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (the --out-dir of `dsrnet train`)")
    p.add_argument("--out-dir", required=True, help="folder for the figures and tables (created if missing)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", default=None,
                   help="one name per run for legends and tables (default: the run folders' names)")  # fmt: skip
    p.add_argument("--title", default=None, help="title of the figures and of summary.md")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from dsrnet.report.runs import plot_runs

    for path in plot_runs(args.runs, args.out_dir, labels=args.labels, title=args.title):
        print(path)
    return 0
