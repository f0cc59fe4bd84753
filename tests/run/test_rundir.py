from __future__ import annotations

import json

import pytest

from dsrnet.errors import DsrnetError
from dsrnet.run.rundir import RunDir


def test_run_saved_before_a_setting_existed_matches_its_legacy_value(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "config.yaml").write_text("model: dsrnet50\nepochs: 5\n")  # written before pad_fill existed
    wanted = {"model": "dsrnet50", "epochs": 5, "pad_fill": "zero"}
    run.check_compatible(wanted, legacy={"pad_fill": "zero"})
    with pytest.raises(DsrnetError, match="pad_fill=None"):
        run.check_compatible(wanted)
    with pytest.raises(DsrnetError, match="pad_fill='zero' \\(asked 'mean'\\)"):
        run.check_compatible({**wanted, "pad_fill": "mean"}, legacy={"pad_fill": "zero"})


def test_a_run_stopped_early_is_resumable_not_finished(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "final.json").write_text(json.dumps({"stopped_early": True}))
    assert run.stopped_early and not run.finished and run.resumable and run.holds_run
    (tmp_path / "final.json").write_text(json.dumps({"stopped_early": False}))
    assert run.finished and not run.resumable
