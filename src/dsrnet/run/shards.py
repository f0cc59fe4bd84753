"""Split a large file into parts of bounded size, and join them back with every checksum verified.

Why: files that travel between machines often have a size cap per file (a trained checkpoint of tens of MB, brought
back from a GPU machine that returns files of at most 16 MiB each). :func:`split_file` writes ``<name>.part00``,
``<name>.part01``, ... and ``<name>.manifest.json``::

    {"format": "dsrnet-shards", "version": 1, "name": "<name>", "size": N, "sha256": "<whole file>",
     "parts": [{"file": "<name>.part00", "size": n0, "sha256": "..."}, ...]}

:func:`join_parts` reads the manifest, checks each part's size and SHA-256 and the whole file's, and writes the
result atomically (:mod:`dsrnet.run.atomic`), so a missing, truncated or corrupted part is one clear error and never a
half-written output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from dsrnet.errors import DsrnetError
from dsrnet.run.atomic import atomic_write, atomic_write_bytes, atomic_write_json

__all__ = ["DEFAULT_MAX_BYTES", "join_parts", "split_file"]

FORMAT = "dsrnet-shards"
VERSION = 1
#: 15 MiB: under a 16 MiB per-file cap with room to spare.
DEFAULT_MAX_BYTES = 15 * 2**20
_CHUNK = 2**20
_PART_NAME = re.compile(r"^[A-Za-z0-9._-]+\.part\d{2,}$")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def split_file(path: str | os.PathLike, out_dir: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Split ``path`` into parts of at most ``max_bytes`` in ``out_dir`` (``<name>.partNN``) plus
    ``<name>.manifest.json`` (sizes and SHA-256 of every part and of the whole file); returns the manifest path.
    An empty file gives one empty part, so every manifest lists at least one."""
    path = Path(path)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise DsrnetError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    if not path.is_file():
        raise DsrnetError(f"cannot split {path}: no such file; fix: pass an existing file")
    if not _PART_NAME.match(f"{path.name}.part00"):  # join_parts reads back only parts named this way
        raise DsrnetError(f"cannot split {path}: join_parts takes names of letters, digits, '.', '_' and '-' only; "
                          f"fix: rename the file")  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size
    n_parts = max(1, -(-size // max_bytes))
    width = max(2, len(str(n_parts - 1)))
    whole = hashlib.sha256()
    parts = []
    with open(path, "rb") as f:
        for i in range(n_parts):
            data = f.read(max_bytes)
            whole.update(data)
            name = f"{path.name}.part{i:0{width}d}"
            atomic_write_bytes(out / name, data)
            parts.append({"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if sum(p["size"] for p in parts) != size:
        raise DsrnetError(f"{path} changed size while it was being split; fix: split it again once it is written")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "name": path.name,
        "size": size,
        "sha256": whole.hexdigest(),
        "max_part_bytes": max_bytes,
        "parts": parts,
    }
    return atomic_write_json(out / f"{path.name}.manifest.json", manifest)


def _read_manifest(manifest: Path) -> dict:
    if not manifest.is_file():
        raise DsrnetError(f"shard manifest {manifest} not found; fix: pass the <name>.manifest.json split_file wrote")
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        raise DsrnetError(f"shard manifest {manifest} is not readable JSON ({err}); fix: use an intact copy") from None
    ok = (
        isinstance(m, dict)
        and m.get("format") == FORMAT
        and m.get("version") == VERSION
        and isinstance(m.get("size"), int)
        and isinstance(m.get("sha256"), str)
        and isinstance(m.get("parts"), list)
        and m["parts"]
        and all(
            isinstance(p, dict)
            and isinstance(p.get("file"), str)
            and _PART_NAME.match(p["file"])  # a bare name: a manifest cannot point outside its folder
            and isinstance(p.get("size"), int)
            and isinstance(p.get("sha256"), str)
            for p in m["parts"]
        )
    )
    if not ok:
        raise DsrnetError(
            f"{manifest} is not a dsrnet shard manifest (format {FORMAT} v{VERSION}); fix: pass the manifest "
            f"split_file wrote"
        )
    return m


def join_parts(manifest: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Reassemble the file that :func:`split_file` split, from the parts next to ``manifest``, into ``out_path``
    (written atomically). Every part's size and SHA-256 and the whole file's SHA-256 are checked first; a missing or
    corrupted part raises :class:`DsrnetError` naming it, and ``out_path`` is then left as it was."""
    manifest = Path(manifest)
    m = _read_manifest(manifest)
    folder = manifest.parent
    out = Path(out_path)
    if out.is_dir():
        raise DsrnetError(f"{out} is a folder; fix: name the file to write, e.g. {out / m['name']}")
    inputs = [manifest, *(folder / p["file"] for p in m["parts"])]
    if out.exists() and any(q.exists() and out.samefile(q) for q in inputs):  # it would replace what it reads
        raise DsrnetError(f"{out} is one of the shards or their manifest; fix: write the joined file elsewhere")
    for p in m["parts"]:
        part = folder / p["file"]
        if not part.is_file():
            raise DsrnetError(
                f"shard {part} is missing ({len(m['parts'])} parts listed in {manifest.name}); fix: copy every "
                f"part next to the manifest"
            )
        if part.stat().st_size != p["size"]:
            raise DsrnetError(
                f"shard {part} has {part.stat().st_size} bytes, the manifest says {p['size']} (truncated or "
                f"wrong file); fix: copy that part again"
            )
        if _sha256_file(part) != p["sha256"]:
            raise DsrnetError(f"shard {part} is corrupted (SHA-256 mismatch); fix: copy that part again")
    if sum(p["size"] for p in m["parts"]) != m["size"]:
        raise DsrnetError(f"{manifest} is inconsistent (part sizes do not add up to {m['size']}); fix: split again")
    whole = hashlib.sha256()

    def write(f) -> None:
        for p in m["parts"]:
            with open(folder / p["file"], "rb") as src:
                for block in iter(lambda: src.read(_CHUNK), b""):  # noqa: B023 - consumed at once
                    whole.update(block)
                    f.write(block)
        if whole.hexdigest() != m["sha256"]:  # raising here discards the temp file: out_path is untouched
            raise DsrnetError(
                f"the parts of {manifest.name} join into a file whose SHA-256 differs from the manifest's; fix: "
                f"copy the parts again"
            )

    return atomic_write(out_path, write)
