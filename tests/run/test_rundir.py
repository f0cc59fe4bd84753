"""RunDir: the one owner of the run-folder rules (finished, resumable, compatible, writable, locked)."""

from __future__ import annotations

import json

import pytest

from dsrnet.errors import DsrnetError
from dsrnet.run.rundir import RunDir, differences


def test_states(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.holds_run and not run.finished and not run.resumable
    run.path.mkdir()
    run.checkpoint.write_bytes(b"x")
    assert run.holds_run and run.resumable and not run.finished
    run.final.write_text("{}")
    assert run.finished and not run.resumable


def test_check_compatible_names_the_difference(tmp_path):
    run = RunDir(tmp_path)
    run.config.write_text("epochs: 2\nlr: 0.1\nmodel_kwargs: {widths: [8, 16]}\nout_dir: a\n")
    run.check_compatible({"epochs": 2, "lr": 0.1, "model_kwargs": {"widths": (8, 16)}, "out_dir": "b"}, {"out_dir"})
    with pytest.raises(DsrnetError, match=r"other settings: epochs=2 \(asked 3\)"):
        run.check_compatible({"epochs": 3})


def test_milestones_are_compared_as_they_apply(tmp_path):
    """A 1-epoch step run written before 2026-11-27 recorded milestones [1] (now []): the same schedule, so
    `reproduce --quick` on its folder reuses it instead of refusing it."""
    run = RunDir(tmp_path)
    run.config.write_text("epochs: 1\nmilestones: [1]\n")
    run.check_compatible({"epochs": 1, "milestones": []})
    # a resume compares one setting at a time: the saved run's epochs decide for both sides
    assert differences({"epochs": 3, "milestones": [3]}, {"milestones": [3]}) == []
    assert differences({"epochs": 1, "milestones": [1]}, {"milestones": []}) == []
    run.config.write_text("epochs: 4\nmilestones: [2]\n")
    with pytest.raises(DsrnetError, match=r"milestones=\[2\] \(asked \[3\]\)"):
        run.check_compatible({"epochs": 4, "milestones": [3]})


def test_a_file_where_the_folder_should_be_is_refused_at_once(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    with pytest.raises(DsrnetError, match="is a file"):
        RunDir(blocker / "run").check_writable()


def test_a_link_to_nothing_or_a_folder_that_takes_no_file_is_refused_at_once(tmp_path, monkeypatch):
    """`dsrnet bench --out-dir LINK` (a link to a missing folder) timed every model, then lost the table in a
    FileExistsError traceback; a folder whose permission bits allow writing but that takes no file (root, /proc)
    likewise. Writability is tried, not judged from the bits."""
    import tempfile

    link = tmp_path / "scratch"
    link.symlink_to(tmp_path / "gone" / "scratch")
    with pytest.raises(DsrnetError, match=r"is a link to .*gone/scratch, which does not exist; fix: pass another"):
        RunDir(link / "run").check_writable()

    def refuses(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuses)
    with pytest.raises(DsrnetError, match=r"is not writable \(Read-only file system\); fix: pass another --out-dir"):
        RunDir(tmp_path / "new" / "run").check_writable()


def test_lock_is_exclusive_and_released(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.lock():
        assert run.lock_file.exists()
        with pytest.raises(DsrnetError, match="in use by another dsrnet process"), run.lock():
            pass
    with run.lock():  # released: can be taken again (the lock file stays; see RunDir.lock)
        (run.path / "config.yaml").write_text("a: 1\n")
    assert run.path.is_dir()


def test_in_use_probes_the_lock_without_taking_it(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.in_use and not run.path.exists()  # no folder, no lock file: nothing created by asking
    with run.lock():
        (run.path / "metrics.jsonl").write_text("{}\n")
        assert run.in_use
        with pytest.raises(DsrnetError, match="in use"), run.lock():  # the probe left the holder's lock alone
            pass
    assert run.lock_file.exists() and not run.in_use  # the holder is gone; its lock file stays
    with run.lock():  # the probes kept no lock of their own
        pass


def test_lock_removes_the_folder_it_created_when_the_work_fails_early(tmp_path):
    run = RunDir(tmp_path / "new")
    with pytest.raises(RuntimeError), run.lock():
        raise RuntimeError("bad data")
    assert not run.path.exists()


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


def test_a_refused_lock_leaves_the_holders_temp_files_alone(tmp_path):
    # A temp file whose writer PID looks dead from here (another PID namespace, another host) may be the lock
    # holder's checkpoint in flight: only the holder cleans up.
    run = RunDir(tmp_path / "r")
    with run.lock():
        in_flight = run.path / ".checkpoint.pt.999999.tmp"
        in_flight.write_bytes(b"half a checkpoint")
        with pytest.raises(DsrnetError, match="in use"), run.lock():
            pass
        assert in_flight.exists()
    with run.lock():  # the holder, now: stale temp files go
        assert not in_flight.exists()
