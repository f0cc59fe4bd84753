"""Atomic file writes: a crash or SIGKILL at any moment leaves either the old file or the new one, never half.

Every file is written to ``.<name>.<pid>.tmp`` in the target's folder, flushed, fsynced and renamed over the target
with ``os.replace``, and the folder is fsynced so that the rename survives a power loss. A process killed mid-write
leaves its temp file behind; :func:`remove_stale_temp_files` deletes those of processes that no longer exist (called
wherever dsrnet writes into a folder again).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], Any]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable: without it a power loss can bring the previous file back."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where a folder cannot be opened (nor needs to be)
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder: the file itself is already synced
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """JSON for what results hold besides plain types: tuples, sets, paths, NumPy/torch scalars and arrays."""
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, scalars -> numbers, paths -> strings): the one
    normaliser for comparing saved settings with asked ones."""
    return json.loads(json.dumps(obj, default=json_default))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files (``.<name>.<pid>.tmp``) that killed dsrnet processes left in ``folder``; files of
    processes still running are left alone. Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP_NAME.match(p.name)
        if m and p.is_file() and not _process_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
