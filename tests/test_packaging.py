"""What ``pip install dsrnet`` gives a user: the wheel and sdist built from this checkout hold the package data
(weights, shipped configs, ``py.typed``, the licence), the installed wheel runs from outside the checkout, and the
torch.hub entry loads the checkout it sits in. Builds with the installed setuptools (no download)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("setuptools", minversion="77")  # SPDX licence and license-files (pyproject)

SKIP = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".gpu-data", "runs", ".timm-sdist", ".pytest_cache",
    ".ruff_cache", ".lock",
)  # fmt: skip


def _run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    full_env.pop("PYTHONPATH", None)
    done = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pkg")
    copy = root / "checkout"
    shutil.copytree(REPO, copy, ignore=SKIP)
    out = root / "dist"
    build = (
        "import sys; from setuptools import build_meta as b; "
        "d = sys.argv[1]; s = b.build_sdist(d); w = b.build_wheel(d); print('BUILT', s, w)"  # build_* rewrite sys.argv
    )
    names = _run([sys.executable, "-c", build, str(out)], cwd=copy).stdout.split("BUILT")[-1].split()
    return {"sdist": out / names[0], "wheel": out / names[1], "root": root}


def test_wheel_holds_the_package_data_and_nothing_else(dists):
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    for want in ("dsrnet/configs/fast.yaml", "dsrnet/configs/paper.yaml", "dsrnet/configs/cpu-smoke.yaml",
                 "dsrnet/weights/dsrnet50_cifar.c10.safetensors", "dsrnet/weights/README.md",  # its model card
                 "dsrnet/py.typed"):  # fmt: skip
        assert want in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "results") or "__pycache__" in n]


def test_sdist_is_the_whole_project(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for want in ("LICENSE", "README.md", "BENCHMARKS.md", "hubconf.py", "tests/conftest.py", "tests/test_infer.py",
                 "benchmarks/gpu_campaign.py", "src/dsrnet/configs/fast.yaml", "results/gpu/dsrnet/config.yaml"):  # fmt: skip
        assert want in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_wheel_runs_from_outside_the_checkout(dists):
    venv = dists["root"] / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=dists["root"])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(dists["wheel"])], cwd=dists["root"])
    outside = dists["root"] / "elsewhere"
    outside.mkdir()
    where = _run([str(python), "-c", "import dsrnet; print(dsrnet.__file__)"], cwd=outside).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not this checkout
    # A shipped config by name, read from the installed package.
    printed = _run([str(python), "-m", "dsrnet", "train", "--config", "cpu-smoke", "--print-config"], cwd=outside)
    assert "subset_per_class: 50" in printed.stdout and "out_dir: runs/cpu-smoke" in printed.stdout
    version = _run([str(python), "-m", "dsrnet", "--version"], cwd=outside).stdout
    from dsrnet import __version__

    assert version.startswith(f"dsrnet {__version__} ")


def test_torch_hub_loads_the_checkout_it_sits_in(tmp_path):
    # A checkout whose version differs from the installed dsrnet: the hub entry must run the checkout's code.
    copy = tmp_path / "checkout"
    shutil.copy(REPO / "hubconf.py", copy.parent / "hubconf.py")
    shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))
    shutil.move(copy.parent / "hubconf.py", copy / "hubconf.py")
    init = copy / "src" / "dsrnet" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+checkout-', 1))
    script = (
        "import sys, torch; m = torch.hub.load(sys.argv[1], 'dsrnet50', source='local', num_classes=10); "
        "import dsrnet; print(dsrnet.__version__, type(m).__name__, sum(p.numel() for p in m.parameters()))"
    )
    out = _run([sys.executable, "-c", script, str(copy)], cwd=tmp_path).stdout.split()
    assert out[0].startswith("9.9.9+checkout-") and out[1] == "DSRNet" and int(out[2]) > 1_000_000
