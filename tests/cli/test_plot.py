"""``dsrnet plot`` end to end: run folders in, the files written printed, bad input as one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

from dsrnet.cli.main import main
from tests.report.test_runs import make_run, read_summary


def test_plot_end_to_end(tmp_path, capsys):
    a = make_run(tmp_path / "runs" / "a", [60.0, 30.0, 40.0])
    b = make_run(tmp_path / "runs" / "b", [70.0, 50.0], planned=5, final=False)
    out = tmp_path / "report"
    code = main(["plot", str(a), str(b), "--out-dir", str(out), "--labels", "base", "ours", "--title", "Ablation"])
    printed = capsys.readouterr().out.split()
    assert code == 0
    assert printed == [str(out / name) for name in ("curves.png", "lr.png", "summary.md", "summary.csv")]
    rows = read_summary(out)
    assert float(rows["base"]["top1_error"]) == 40.0 and rows["ours"]["status"] == "interrupted"
    assert (out / "summary.md").read_text().startswith("# Ablation\n")


def test_plot_bad_input_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run", [50.0])
    (run / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    code = main(["plot", str(run), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{run / 'metrics.jsonl'} line 2 is not valid JSON" in err
    assert not (tmp_path / "out").exists()
    code = main(["plot", str(run), str(run), "--out-dir", str(tmp_path / "out"), "--labels", "x"])
    assert code == 2 and "--labels gives 1 label(s) for 2 run(s)" in capsys.readouterr().err


def test_plot_does_not_import_torch(tmp_path):
    make_run(tmp_path / "run", [50.0])
    code = (
        "import sys\nfrom dsrnet.cli.main import main\n"
        f"assert main(['plot', {str(tmp_path / 'run')!r}, '--out-dir', {str(tmp_path / 'out')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'dsrnet plot imported torch'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "summary.csv").is_file()
