"""The one owner of a run folder's rules: its file names, when it is finished or resumable, whether a saved run
matches the settings asked for, and the lock that keeps two processes out of one folder.

A run folder (written by ``dsrnet train``)::

    config.yaml     the fully resolved config (``dsrnet train --config config.yaml`` repeats the run)
    metrics.jsonl   one JSON object per epoch
    checkpoint.pt   the last checkpoint (written atomically)
    final.json      the FINAL epoch's metrics; exists only once the run has finished
    tb/             TensorBoard events (when tensorboard is installed)
    eval/           what ``dsrnet eval`` writes
    .lock           held (flock) while a process trains into the folder
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from dsrnet.errors import DsrnetError
from dsrnet.run.atomic import plain, remove_stale_temp_files

#: The checkpoint's file name in a run folder (defined here, not in :mod:`.checkpoint`, so that reading a run
#: folder's metrics does not import torch).
CHECKPOINT_NAME = "checkpoint.pt"


def differences(saved: dict, wanted: dict, ignore: Iterable[str] = ()) -> list[str]:
    """``key=saved (asked wanted)`` for every key of ``wanted`` outside ``ignore`` whose value differs. Milestones
    are compared as they apply: one at the last epoch never does (runs before 2026-11-27 recorded [1] for 1-epoch
    step runs, which now get none)."""
    ignore = frozenset(ignore)
    # each side's milestones against its epochs, or the other side's where it names none (a resume compares one
    # setting at a time)
    saved, wanted = (_applied_milestones(saved, saved.get("epochs", wanted.get("epochs"))),
                     _applied_milestones(wanted, wanted.get("epochs", saved.get("epochs"))))  # fmt: skip
    return [
        f"{key}={plain(saved.get(key))!r} (asked {plain(value)!r})"
        for key, value in wanted.items()
        if key not in ignore and plain(saved.get(key)) != plain(value)
    ]


def _applied_milestones(config: dict, epochs: object) -> dict:
    """``config`` with only the milestones that lower the rate (below ``epochs``)."""
    ms = config.get("milestones")
    if not isinstance(ms, list) or not isinstance(epochs, int):
        return config
    return {**config, "milestones": [m for m in ms if not (isinstance(m, int) and m >= epochs)]}


def export_target(out: str | os.PathLike, suffixes: tuple[str, ...], flag: str, source: object = None) -> Path:
    """``out`` checked as the file an export writes (``flag`` names it in errors): not a folder, ending in one of
    ``suffixes``, not one of a run folder's own files and not ``source`` itself, when that is a file (a checkpoint
    is never overwritten by its export)."""
    out = Path(out).expanduser()
    src = Path(source).expanduser() if isinstance(source, str | os.PathLike) else None
    if src is not None and out.exists() and src.is_file() and out.samefile(src):
        raise DsrnetError(f"{flag} {out} is the file being exported; fix: write the export to another file")
    if out.is_dir():
        raise DsrnetError(f"{flag} {out} is a folder; fix: name the file to write, e.g. {out / 'model'}{suffixes[0]}")
    if out.suffix.lower() not in suffixes:
        raise DsrnetError(
            f"{flag} {out} does not end in {' or '.join(suffixes)}; fix: name it e.g. {out.with_suffix(suffixes[0])}"
        )
    run = RunDir(out.parent)
    if run.holds_run and out.name in {run.checkpoint.name, run.config.name, run.metrics.name, run.final.name}:
        raise DsrnetError(f"{flag} {out} is a file of the run in {out.parent}; fix: write the export elsewhere")
    return out


class RunDir:
    """A run folder: file names and the rules for finished / resumable / compatible / locked."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / CHECKPOINT_NAME
        self.final = self.path / "final.json"
        self.tensorboard = self.path / "tb"
        self.eval = self.path / "eval"
        self.lock_file = self.path / ".lock"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def _final(self) -> dict | None:
        """``final.json`` as a mapping; None where there is none or it is unreadable (not JSON, not an object)."""
        try:
            final = json.loads(self.final.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # (UnicodeDecodeError is a ValueError)
            return None
        return final if isinstance(final, dict) else None

    @property
    def finished(self) -> bool:
        """The run ended its planned schedule: ``final.json`` exists, is readable and does not say
        ``stopped_early`` (a run a deadline cut short is resumable, not finished; a damaged ``final.json`` is not a
        result)."""
        final = self._final()
        return final is not None and not final.get("stopped_early")

    def check_final_readable(self) -> None:
        """Raise unless ``final.json`` is absent or a readable JSON object: a damaged one is neither a result nor
        something to train over silently."""
        if self.final.is_file() and self._final() is None:
            raise DsrnetError(f"{self.final} is damaged (not a JSON object); fix: repair it, or delete it (a run "
                              f"with its checkpoint.pt is then resumed, one without is trained again)")  # fmt: skip

    @property
    def stopped_early(self) -> bool:
        """``final.json`` says a deadline stopped the run before its last epoch (its schedule is truncated)."""
        return bool((self._final() or {}).get("stopped_early"))

    @property
    def resumable(self) -> bool:
        """A run started and can be continued: a checkpoint and no ``final.json``."""
        return self.checkpoint.is_file() and not self.finished

    @property
    def in_use(self) -> bool:
        """A process holds the folder's lock right now (a run is training into it). Only probes: takes a shared
        lock for an instant and never creates the lock file."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's own lock
        return False

    @property
    def holds_run(self) -> bool:
        return self.checkpoint.exists() or self.final.exists()

    def saved_config(self) -> dict:
        """The saved ``config.yaml`` as a mapping (empty if there is none)."""
        import yaml

        if not self.config.is_file():
            return {}
        try:
            values = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raise DsrnetError(
                f"{self.config} is not valid YAML; fix: restore it or delete {self.path} to start again"
            ) from None
        return values if isinstance(values, dict) else {}

    def check_compatible(self, wanted: dict, ignore: Iterable[str] = (), legacy: dict | None = None) -> None:
        """A finished run with other settings than ``wanted`` is an error: a table would mix recipes. ``legacy``:
        the values of settings that a run saved before they existed had implicitly."""
        diff = differences({**(legacy or {}), **self.saved_config()}, wanted, ignore)
        if diff:
            raise DsrnetError(
                f"{self.path} holds a finished run with other settings: {'; '.join(diff[:3])}; fix: pass another "
                f"--out-dir, or delete {self.path} to train it again"
            )

    def check_writable(self) -> None:
        """Fail before any work starts if the folder cannot be created or written: the nearest existing folder on
        its path takes a file (tried, not judged from permission bits, which root and /proc-like file systems
        ignore), and no link on the way points nowhere."""
        import tempfile

        for p in (self.path, *self.path.parents):
            if p.is_symlink() and not p.exists():
                raise DsrnetError(f"run folder {self.path}: {p} is a link to {os.readlink(p)}, which does not exist; "
                                  f"fix: pass another --out-dir")  # fmt: skip
            if p.exists():
                if not p.is_dir():
                    raise DsrnetError(f"run folder {self.path}: {p} is a file; fix: pass another --out-dir")
                try:
                    with tempfile.TemporaryFile(dir=p):
                        pass
                except OSError as err:
                    raise DsrnetError(f"run folder {self.path}: {p} is not writable ({err.strerror}); fix: pass "
                                      f"another --out-dir") from None  # fmt: skip
                return

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder; a second process asking for it fails at once (the kernel drops
        the lock when a process dies, so a killed run never leaves the folder locked). A folder this call created
        is removed again if the work inside fails before writing anything."""
        self.check_writable()
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DsrnetError(
                    f"run folder {self.path} is in use by another dsrnet process; fix: wait for it to finish, or "
                    f"pass another --out-dir"
                ) from None
            # Only the lock's holder cleans up: a temp file whose writer's PID looks dead from here (another PID
            # namespace, another host on shared storage) may belong to the process that holds the lock.
            remove_stale_temp_files(self.path)
            try:
                yield
            finally:
                # The lock file stays: deleting it while locked would let a process that opened the old file and
                # one that creates a new file both get a lock. Only a folder this call created and left empty goes.
                if created and [p.name for p in self.path.iterdir()] == [self.lock_file.name]:
                    self.lock_file.unlink()
                    self.path.rmdir()
        finally:
            os.close(fd)
