from __future__ import annotations

import json
import os

import pytest

from dsrnet.errors import DsrnetError
from dsrnet.run.shards import join_parts, split_file


@pytest.fixture
def blob(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(os.urandom(2500))
    return path


def test_split_and_join_round_trip(blob, tmp_path):
    manifest = split_file(blob, tmp_path / "shards", max_bytes=1000)
    m = json.loads(manifest.read_text())
    assert manifest.name == "weights.pt.manifest.json"
    assert [p["file"] for p in m["parts"]] == ["weights.pt.part00", "weights.pt.part01", "weights.pt.part02"]
    assert [p["size"] for p in m["parts"]] == [1000, 1000, 500]
    assert all((tmp_path / "shards" / p["file"]).stat().st_size <= 1000 for p in m["parts"])
    assert m["size"] == 2500
    out = join_parts(manifest, tmp_path / "joined.pt")
    assert out.read_bytes() == blob.read_bytes()


def test_exact_multiple_and_empty_file(tmp_path):
    exact = tmp_path / "exact.bin"
    exact.write_bytes(b"x" * 2000)
    m = json.loads(split_file(exact, tmp_path / "a", max_bytes=1000).read_text())
    assert [p["size"] for p in m["parts"]] == [1000, 1000]
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    manifest = split_file(empty, tmp_path / "b", max_bytes=1000)
    assert join_parts(manifest, tmp_path / "empty2.bin").read_bytes() == b""


def test_missing_part_is_named_and_output_untouched(blob, tmp_path):
    manifest = split_file(blob, tmp_path / "shards", max_bytes=1000)
    (tmp_path / "shards" / "weights.pt.part01").unlink()
    target = tmp_path / "joined.pt"
    target.write_bytes(b"old")
    with pytest.raises(DsrnetError, match=r"weights\.pt\.part01 is missing"):
        join_parts(manifest, target)
    assert target.read_bytes() == b"old"


def test_corrupted_part_is_named(blob, tmp_path):
    manifest = split_file(blob, tmp_path / "shards", max_bytes=1000)
    part = tmp_path / "shards" / "weights.pt.part02"
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(DsrnetError, match=r"part02 is corrupted") as err:
        join_parts(manifest, tmp_path / "joined.pt")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "joined.pt").exists()


def test_truncated_part_is_named(blob, tmp_path):
    manifest = split_file(blob, tmp_path / "shards", max_bytes=1000)
    part = tmp_path / "shards" / "weights.pt.part00"
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(DsrnetError, match=r"part00 has 999 bytes"):
        join_parts(manifest, tmp_path / "joined.pt")


def test_bad_manifest_and_bad_arguments(blob, tmp_path):
    manifest = split_file(blob, tmp_path / "shards", max_bytes=1000)
    m = json.loads(manifest.read_text())
    m["parts"][0]["file"] = "../escape.part00"  # a manifest must not point outside its folder
    manifest.write_text(json.dumps(m))
    with pytest.raises(DsrnetError, match="not a dsrnet shard manifest"):
        join_parts(manifest, tmp_path / "joined.pt")
    with pytest.raises(DsrnetError, match="not found"):
        join_parts(tmp_path / "nope.manifest.json", tmp_path / "joined.pt")
    with pytest.raises(DsrnetError, match="no such file"):
        split_file(tmp_path / "nope.pt", tmp_path / "x")
    with pytest.raises(DsrnetError, match="max_bytes"):
        split_file(blob, tmp_path / "x", max_bytes=0)
    odd = tmp_path / "my ckpt+1.pt"  # split, then refused by join_parts as "not a dsrnet shard manifest"
    odd.write_bytes(b"x" * 100)
    with pytest.raises(DsrnetError, match="letters, digits, '.', '_' and '-' only; fix: rename the file"):
        split_file(odd, tmp_path / "odd")
    assert not (tmp_path / "odd").exists()


def test_join_never_writes_over_its_own_inputs(blob, tmp_path):
    """Joined onto its first part (or the manifest), it replaced the only copy of that part."""
    manifest = split_file(blob, tmp_path / "shards", max_bytes=1000)
    part0 = tmp_path / "shards" / json.loads(manifest.read_text())["parts"][0]["file"]
    before = part0.read_bytes(), manifest.read_bytes()
    for target in (part0, manifest):
        with pytest.raises(DsrnetError, match="is one of the shards or their manifest; fix: write the joined file"):
            join_parts(manifest, target)
    with pytest.raises(DsrnetError, match="is a folder; fix: name the file to write"):
        join_parts(manifest, tmp_path)
    assert (part0.read_bytes(), manifest.read_bytes()) == before


def test_whole_file_checksum_is_checked(blob, tmp_path):
    manifest = split_file(blob, tmp_path / "shards", max_bytes=1000)
    m = json.loads(manifest.read_text())
    m["sha256"] = "0" * 64
    manifest.write_text(json.dumps(m))
    with pytest.raises(DsrnetError, match="SHA-256 differs"):
        join_parts(manifest, tmp_path / "joined.pt")
    assert not (tmp_path / "joined.pt").exists()
