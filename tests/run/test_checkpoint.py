"""Checkpoints are checked before anything is built from them: damaged bytes, hand-edited fields, weights that
do not fit, non-finite weights, a full disk -- each one clear error, nothing allocated, nothing lost."""

from __future__ import annotations

import errno

import pytest
import torch

from dsrnet.errors import DsrnetError
from dsrnet.infer import model_from_checkpoint
from dsrnet.models import create_model
from dsrnet.run.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import RunsCode, checkpoint_payload

TINY = {"widths": [4, 8, 8, 16], "layers": [1, 1, 1, 1]}


def _payload(**over) -> dict:
    return checkpoint_payload(create_model("dsrnet50_cifar", num_classes=10, **TINY), TINY, **over)


@pytest.fixture
def ckpt_path(tmp_path):
    return save_checkpoint(tmp_path / "checkpoint.pt", _payload())


def test_round_trip_rebuilds_the_model(ckpt_path):
    model, ckpt = model_from_checkpoint(ckpt_path)
    assert ckpt["model"] == "dsrnet50_cifar" and not model.training
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_flipped_bytes_are_refused(ckpt_path):
    data = bytearray(ckpt_path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 2000):
        data[i] ^= 0xFF
    ckpt_path.write_bytes(bytes(data))
    with pytest.raises(DsrnetError, match="damaged|cannot be read safely") as err:
        load_checkpoint(ckpt_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"image_size": 100000}, "bad 'image_size' field"),
        ({"classes": ["a", "b"]}, "bad 'classes' field"),
        ({"num_classes": "ten"}, "bad 'num_classes' field"),
        ({"mean": [0.5, float("nan"), 0.5]}, "bad 'mean' field"),
        ({"std": [0.2, 0.0, 0.2]}, "bad 'std' field"),
        ({"model": None}, "bad 'model' field"),
        ({"model_state": {}}, "bad 'model_state' field"),
    ],
)
def test_hand_edited_fields_are_refused_before_anything_is_built(tmp_path, edit, match):
    path = save_checkpoint(tmp_path / "c.pt", _payload(**edit))
    with pytest.raises(DsrnetError, match=match):
        model_from_checkpoint(path)


def test_missing_field_is_one_line_not_a_keyerror(tmp_path):
    payload = _payload()
    del payload["classes"]
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(DsrnetError, match="bad 'classes' field"):
        model_from_checkpoint(path)


def test_huge_widths_are_refused_without_allocating(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", _payload(model_kwargs={**TINY, "widths": [100000, 8, 8, 16]}))
    built = []
    from dsrnet.models import _registry  # model_from_checkpoint builds through _registry.build_model

    real = _registry.build_model
    monkeypatch.setattr(
        _registry, "build_model", lambda *a, **k: built.append(str(torch.get_default_device())) or real(*a, **k)
    )
    with pytest.raises(DsrnetError, match="does not fit model"):
        model_from_checkpoint(path)
    assert built == ["meta"]  # only the memory-free skeleton was built


def test_known_dataset_and_its_image_size_are_required(tmp_path):
    with pytest.raises(DsrnetError, match="unknown dataset"):
        model_from_checkpoint(save_checkpoint(tmp_path / "a.pt", _payload(dataset="imagenet")))
    with pytest.raises(DsrnetError, match="cifar10 has 10 at 32 px"):
        model_from_checkpoint(save_checkpoint(tmp_path / "b.pt", _payload(image_size=96)))


def test_non_finite_weights_are_refused(tmp_path):
    payload = _payload()
    key = next(k for k, v in payload["model_state"].items() if v.is_floating_point())
    payload["model_state"][key] = payload["model_state"][key].clone().fill_(float("nan"))
    with pytest.raises(DsrnetError, match="non-finite weights"):
        model_from_checkpoint(save_checkpoint(tmp_path / "nan.pt", payload))


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(ckpt_path, monkeypatch):
    before = ckpt_path.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(DsrnetError, match="could not write checkpoint .*No space left") as err:
        save_checkpoint(ckpt_path, _payload(epoch=2))
    assert "\n" not in str(err.value) and ckpt_path.read_bytes() == before
    assert [p.name for p in ckpt_path.parent.iterdir()] == ["checkpoint.pt"]


def test_a_short_write_reported_by_torchs_zip_writer_names_the_free_space(ckpt_path, monkeypatch):
    """On a full disk torch's zip writer may raise its own internal error (no errno): the line says how much
    space is left, the likely cause."""
    before = ckpt_path.read_bytes()

    def short_write(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1231296 vs 1231184")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(DsrnetError, match=r"could not write checkpoint .*unexpected pos.*, [0-9.]+ MiB free there"):
        save_checkpoint(ckpt_path, _payload(epoch=2))
    assert ckpt_path.read_bytes() == before


@pytest.mark.parametrize("content", [b'{"epoch": 3}', b"\x89PNG\r\n\x1a\n", b""])
def test_a_file_that_is_no_checkpoint_is_called_so(tmp_path, content):
    """final.json, an image or an empty file: "not a checkpoint", not "cannot be read safely ... a run killed
    mid-write", which sends the user looking for damage."""
    path = tmp_path / "final.json"
    path.write_bytes(content)
    with pytest.raises(DsrnetError, match=r"final\.json is not a checkpoint .*fix: pass a run folder"):
        load_checkpoint(path)


def test_a_legacy_torch_save_file_is_named_so(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"model_state": {}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(DsrnetError, match=r"old\.pt is in torch\.save's legacy \(non-zip\) format"):
        load_checkpoint(path)


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path):
    # Checkpoints are read with weights_only=True: a pickle calling any function is refused, never run.
    evil = tmp_path / "checkpoint.pt"
    marker = tmp_path / "PWNED"
    torch.save({**_payload(), "extra": RunsCode(marker)}, evil)
    with pytest.raises(DsrnetError, match="cannot be read safely: it holds pickled objects .* could run code") as err:
        load_checkpoint(evil)
    assert "weights_only` set to `False`" not in str(err.value)  # torch's advice, cut before its own warning
    with pytest.raises(DsrnetError, match="cannot be read safely"):
        model_from_checkpoint(evil)
    with pytest.raises(DsrnetError, match="cannot be read safely"):
        create_model("dsrnet50", checkpoint_path=evil)
    assert not marker.exists()


def test_ctrl_c_during_the_write_is_an_interrupt_not_a_full_disk(tmp_path, monkeypatch):
    # torch's zip writer turns a KeyboardInterrupt inside write() into a RuntimeError: it was reported as "free disk".
    import dsrnet.run.checkpoint as checkpoint

    def interrupted(payload, f):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None

    path = save_checkpoint(tmp_path / "checkpoint.pt", _payload())
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _payload())
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
