"""``precompile``: a throw-away pass in which every kernel launch compiles its autotune configs instead of running.
The compilation itself needs a GPU; here the routing is checked with a stand-in kernel: launches turn into
``warmup`` calls only inside the pass, a failing one is recorded rather than raised, and nothing leaks out of it."""

from __future__ import annotations  # noqa: I001 (interp must be imported before anything imports Triton)

from tests.kernels import interp  # first: sets TRITON_INTERPRET=1 before anything imports Triton

import threading

import pytest

pytest.importorskip("triton")

from dsrnet.kernels import _triton as tk  # noqa: E402
from dsrnet.kernels import ops  # noqa: E402


class StandIn:
    """What ``triton.autotune(...)(triton.jit(fn))`` offers a launch: ``[grid](...)`` runs, ``warmup`` compiles."""

    def __init__(self, calls: list, fail: bool = False) -> None:
        self.calls, self.fail = calls, fail

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(("run", grid, args, kwargs))

    def warmup(self, *args, grid, **kwargs):
        if self.fail:
            raise RuntimeError("ptxas says no")
        self.calls.append(("compile", grid, args, kwargs))


@pytest.fixture
def compiled_mode(monkeypatch):
    """As on a GPU: kernels would be compiled, not interpreted."""
    monkeypatch.setattr(tk, "interpreting", lambda: False)


def _lazy(monkeypatch, stand_in: StandIn) -> tk._LazyKernel:
    lazy = tk._LazyKernel(tk._dw_fwd, [tk._DW_INTERP], ["P"], tk._DW_INTERP)
    monkeypatch.setattr(lazy, "build", lambda: stand_in)
    return lazy


def test_launches_compile_inside_the_pass_and_run_outside(compiled_mode, monkeypatch):
    calls = []
    lazy = _lazy(monkeypatch, StandIn(calls))
    with tk.precompiling(workers=2) as pass_:
        lazy[(4, 1)](1, 2, STRIDE=1)
        # another thread, as autograd's CUDA device thread runs the backward kernels: the pass sees it too
        other = threading.Thread(target=lambda: lazy[(8, 1)](3, 4, STRIDE=2))
        other.start()
        other.join()
    lazy[(4, 1)](1, 2, STRIDE=1)
    assert calls == [
        ("compile", (4, 1), (1, 2), {"STRIDE": 1}),
        ("compile", (8, 1), (3, 4), {"STRIDE": 2}),
        ("run", (4, 1), (1, 2), {"STRIDE": 1}),
    ]
    assert pass_.launches == ["_dw_fwd", "_dw_fwd"] and pass_.errors == []
    assert tk._PRECOMPILE is None


def test_a_failing_compilation_is_recorded_not_raised(compiled_mode, monkeypatch):
    lazy = _lazy(monkeypatch, StandIn([], fail=True))
    with tk.precompiling(workers=1) as pass_:
        lazy[(1,)](0)
    assert pass_.launches == [] and pass_.errors == ["_dw_fwd: RuntimeError: ptxas says no"]


def test_an_exception_in_the_pass_leaves_no_pass_behind(compiled_mode, monkeypatch):
    calls = []
    lazy = _lazy(monkeypatch, StandIn(calls))
    with pytest.raises(ValueError, match="boom"), tk.precompiling(workers=1):
        raise ValueError("boom")
    lazy[(1,)](0)
    assert calls == [("run", (1,), (0,), {})]


def test_nested_passes_and_the_interpreter_run_launches_as_usual(monkeypatch):
    calls = []
    lazy = _lazy(monkeypatch, StandIn(calls))
    monkeypatch.setattr(tk, "interpreting", lambda: True)
    with tk.precompiling() as pass_:  # the interpreter compiles nothing
        lazy[(1,)](0)
    assert pass_ is None and calls == [("run", (1,), (0,), {})]
    monkeypatch.setattr(tk, "interpreting", lambda: False)
    with tk.precompiling(workers=1) as outer, tk.precompiling(workers=1) as inner:
        lazy[(2,)](0)
    assert inner is None and outer.launches == ["_dw_fwd"]


def test_precompile_skips_the_call_where_nothing_compiles(monkeypatch):
    called = []
    monkeypatch.setattr(tk, "interpreting", lambda: True)
    assert ops.precompile(lambda: called.append(1)) is None  # the interpreter
    monkeypatch.setattr(tk, "interpreting", lambda: False)
    monkeypatch.setattr(ops.torch.cuda, "is_available", lambda: False)
    assert ops.precompile(lambda: called.append(1)) is None  # no GPU: the PyTorch fallback would run
    assert called == []
    monkeypatch.setattr(ops.torch.cuda, "is_available", lambda: True)
    assert ops.precompile(lambda: called.append(1)).errors == [] and called == [1]


interpreter = interp.interpreter  # autouse: Triton interpreter, one thread


# Run in a fresh process (this one runs Triton's interpreter): the real JIT / autotune / compile path, for an H100
# target, with a stand-in driver instead of a GPU. Workers compile into a private on-disk cache; afterwards the
# process's own compilation of the same configs (what a real launch does) finds every one of them there, even
# though the ptxas the workers would find on their own reports another version than the one this process keys on.
REAL_COMPILE = """
import json, os, pathlib, torch, triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from dsrnet.kernels._precompile_worker import OfflineDriver
driver.set_active(OfflineDriver(GPUTarget("cuda", 90, 32)))
from dsrnet.kernels import _triton as tk, ops
# As on a GPU after torch.compile's first compilation: this process read ptxas's version (part of every cache key)
# before TRITON_PTXAS_PATH was pointed at another ptxas (torch 2.11 ships its own), so a worker started now would
# read a different version; the pass must hand it this process's.
import triton.backends.nvidia.compiler as nvc
real = triton.knobs.nvidia.ptxas.path
nvc.get_ptxas_version(90)
stand_in = pathlib.Path(os.environ["TRITON_CACHE_DIR"]).parent / "other-ptxas"
stand_in.write_text(f'#!/bin/sh\\n[ "$1" = --version ] && {real} --version && echo another build && exit 0\\nexec {real} "$@"\\n')
stand_in.chmod(0o755)
os.environ["TRITON_PTXAS_PATH"] = str(stand_in)
ops.triton_usable = lambda t, out_numel=0: True  # CPU tensors to the kernels: compiled, never run
cubins = lambda: sorted(p.name for p in pathlib.Path(os.environ["TRITON_CACHE_DIR"]).rglob("*.cubin"))
x = torch.randn(2, 20, 7, 9).contiguous(memory_format=torch.channels_last)
w = torch.randn(20, 1, 3, 3)
with tk.precompiling(workers=2) as first:
    ops.dwconv2d(x, w, None, 2, 3, True)
    ops.dwconv2d(x, w, None, 2, 3, True)  # the same kernel again: nothing new to compile
after_pass = cubins()
tk.Precompile.record = lambda self, **kw: None  # a pass that compiles in this process, as a real launch would
with tk.precompiling(workers=2) as second:
    ops.dwconv2d(x, w, None, 2, 3, True)
print(json.dumps({"launches": first.launches, "specs": len(first.specs), "compiled": first.compiled,
                  "loaded": first.loaded, "recompiled": first.recompiled,
                  "errors": first.errors + second.errors, "after_pass": after_pass, "after_launch": cubins(),
                  "second_specs": len(second.specs),
                  "configs": len(tk._rows_fit(tk._DW_FWD_CONFIGS, {}, STRIDE=2, DIL=3))}))
"""


def test_workers_compile_every_config_into_the_cache_the_launch_then_reads(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DSRNET_TRITON_AUTOTUNE")}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    out = subprocess.run([sys.executable, "-c", REAL_COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["errors"] == [], got["errors"]
    assert got["launches"] == ["_dw_fwd", "_dw_fwd"]
    assert got["specs"] == got["compiled"] == got["configs"] > 1  # every config this launch may use, each once
    assert got["loaded"] == got["configs"] and got["recompiled"] == 0  # this process's keys: the workers' entries
    assert len(got["after_pass"]) == got["configs"]
    assert got["after_launch"] == got["after_pass"] and got["second_specs"] == 0  # all read from the cache


def test_autotune_picks_lists_each_kernels_winning_config_per_key(monkeypatch):
    import triton

    class Tuner:
        cache = {(4096, 64, 8, 8, 1, 2, False, "torch.bfloat16", "torch.bfloat16"): triton.Config(
            {"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=8, num_stages=2)}

    monkeypatch.setitem(tk.dw_fwd._built, (False, True), Tuner())
    picks = tk.autotune_picks()
    assert set(picks) == {"dw_fwd", "dw_bwd_input", "dw_bwd_weight", "pw_gemm", "pw_gemm_tma", "pw_chain", "dw_pw",
                          "dsr_block", "direct_conv"}
    assert picks["dw_fwd"] == [{
        "key": {"TUNE_SIZE": "4096", "C": "64", "HO": "8", "WO": "8", "STRIDE": "1", "DIL": "2", "AFFINE": "False",
                "dtypes": ["torch.bfloat16", "torch.bfloat16"]},
        "config": {"BLOCK_P": 64, "BLOCK_C": 32, "num_warps": 8, "num_stages": 2},
    }]  # fmt: skip


def test_workers_that_cannot_start_are_an_error_in_the_record_not_an_exception(compiled_mode, monkeypatch):
    lazy = _lazy(monkeypatch, StandIn([]))

    def no_processes(pass_, workers):
        raise OSError("fork refused")

    monkeypatch.setattr(tk, "_compile_in_workers", no_processes)
    with tk.precompiling(workers=2) as pass_:
        lazy[(1,)](0)
        pass_.specs["spec"] = ("dsrnet.kernels._triton", "_dw_fwd")  # what Triton's hook would have recorded
    assert pass_.errors == ["precompile workers: OSError: fork refused"] and tk._PRECOMPILE is None


def test_only_what_the_workers_compiled_is_loaded_and_a_miss_is_counted(compiled_mode, monkeypatch):
    """After the workers, this process loads each kernel they compiled (a disk-cache hit, or compiled again here
    when the keys differ: counted), and leaves alone what a failed or stopped worker did not compile, which the
    first real launch compiles as before (the pass must not compile every config serially in its place)."""
    import triton

    loaded, listener_before = [], triton.knobs.compilation.listener

    class Function:  # a JITFunction's preload: Triton's compile() tells the listener whether the disk cache hit
        def preload(self, spec):
            loaded.append(spec)
            triton.knobs.compilation.listener(src=None, metadata={}, metadata_group={}, times=None,
                                              cache_hit=spec == "hit")  # fmt: skip

    def workers(pass_, n):  # the worker with "lost" was stopped: it reported nothing
        pass_.done.update({"hit", "miss"})

    monkeypatch.setattr(tk, "_compile_in_workers", workers)
    lazy = _lazy(monkeypatch, StandIn([]))
    with tk.precompiling(workers=2) as pass_:
        lazy[(1,)](0)
        for spec in ("hit", "miss", "lost"):  # what Triton's hook would have recorded
            pass_.specs[spec], pass_.functions[spec] = ("dsrnet.kernels._triton", "_dw_fwd"), Function()
    assert loaded == ["hit", "miss"] and (pass_.loaded, pass_.recompiled) == (1, 1) and pass_.errors == []
    assert triton.knobs.compilation.listener is listener_before
