"""Atomic writes and the clean-up of temp files that killed processes leave behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dsrnet.run.atomic import atomic_write, atomic_write_json, plain, remove_stale_temp_files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f".train.npz.{_dead_pid()}.tmp"
    mine = tmp_path / f".checkpoint.pt.{os.getpid()}.tmp"
    other = tmp_path / "train.npz"
    for p in (dead, mine, other):
        p.write_bytes(b"x" * 10)
    assert remove_stale_temp_files(tmp_path) == [dead]
    assert not dead.exists() and mine.exists() and other.exists()
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = atomic_write_json(tmp_path / "a.json", {"v": 1})

    def dies(f):
        f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, dies)
    assert target.read_text().strip().endswith("}") and "1" in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_plain_normalises_like_json():
    from pathlib import PurePosixPath

    import numpy as np

    assert plain({"a": (1, 2), "b": np.int64(3), "p": PurePosixPath("x/y")}) == {"a": [1, 2], "b": 3, "p": "x/y"}


def test_write_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    """The rename is made durable too: after the file's own fsync comes one of the folder it was renamed into."""
    import stat

    synced = []
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append(("folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = atomic_write_json(tmp_path / "sub" / "a.json", {"v": 1})
    assert synced == [("file", target.stat().st_ino), ("folder", target.parent.stat().st_ino)]
