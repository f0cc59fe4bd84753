"""Triton kernels for DSRNet's blocks, all on channels-last (NHWC) activations.

Why NHWC: a depthwise 3x3 does 9 multiply-adds per element it reads, so it is bound by memory traffic, not
arithmetic; with channels innermost every tap of a tile is one contiguous, coalesced load of ``BLOCK_C`` channels,
and a 1x1 conv is a plain ``[pixels, Cin] @ [Cin, Cout]`` GEMM on the same memory.

Kernels (each one program per output tile; weights pre-packed by the caller, see ``dsrnet.kernels.ops``):

* ``dw_fwd``: depthwise 3x3, any dilation and stride (padding = dilation), bias + optional ReLU in the epilogue;
  ``AFFINE``: ``relu((x - centre) * scale + shift)`` per channel applied to the taps as they are loaded
  (training: the BatchNorm before the conv, whose statistics are known, so its output is never written);
  ``ROWS`` (autotune option): sliding rows, each program walking a strip of output rows and loading each input row
  once (:func:`slides` says where). With the taps read in reverse it is also a stride-1 conv's input gradient.
* ``dw_bwd_input`` / ``dw_bwd_weight``: the two backward passes of the depthwise conv (weight grad written as
  per-program partial sums and reduced by the caller, so it is deterministic); with ``AFFINE`` the input grad is
  taken back through the ReLU and the scale (with per-program partial sums for the scale's and shift's grads),
  and the weight grad recomputes the conv's input from ``x``.
* ``pw_gemm``: a 1x1 conv (optionally strided) as a GEMM with ``tl.dot``; bias, residual add and ReLU in the
  epilogue (``PER_SM``: persistent programs looping over tiles, a sweep candidate).
* ``pw_chain``: a block's second 1x1 (+ bias, shortcut, ReLU) and the next block's first 1x1 (+ bias, ReLU) from
  the same tile, two ``tl.dot`` chains: the block output is written and multiplied into the next 1x1's accumulator
  chunk by chunk, so nobody reads it back for that 1x1 (``CHAIN``); ``DW``: the block's depthwise conv computed
  in the kernel, once per pixel tile, as the A operand of every chunk; ``RESIDENT`` (autotune option): the tile's
  rows of a depthwise output read from memory held for every chunk.
* ``dw_pw``: the second half of a folded DSR block in one kernel: depthwise 3x3 + bias + ReLU computed tile by tile
  in registers and fed straight into ``tl.dot`` with the pointwise weights, then + bias + shortcut (identity tensor,
  or the strided 1x1 downsample GEMM accumulated into the same tile) + ReLU. The depthwise output never touches
  global memory.
* ``dsr_block``: a whole folded DSR block in one persistent kernel (first 1x1 -> depthwise 3x3 -> 1x1 + shortcut,
  each + bias + ReLU); the two intermediates pass through a per-program scratch slot (L2-resident, visible across
  the program's threads after a CTA barrier), so the block reads its input once and writes its output once.
* ``direct_conv``: a KxK conv of an input with few channels (the stem: 3) as an implicit GEMM, ``[pixels, Cin *
  K * K taps] @ [taps, Cout]`` with ``tl.dot``, the A tile gathered from the input as it is loaded; bias + ReLU in
  the epilogue. Its input is read at any strides (NCHW or NHWC: with 3 channels neither is a coalesced tile); its
  output is channels-last like every other kernel's.

The kernels are built lazily (:class:`_LazyKernel`) on first launch, so whether they run compiled on a GPU or in
Triton's CPU interpreter is decided by ``TRITON_INTERPRET`` at launch time, not at import time: Triton reads that
variable when ``@triton.jit`` is applied (``triton.knobs.runtime.interpret`` in Triton 3.6-3.8).

Activations (``direct_conv``'s input aside) are addressed by per-pixel strides (n, h, w) with channels contiguous
(stride 1, which lets Triton vectorise the channel loads) and 32-bit offsets; the wrappers guarantee both
(channels-last copies of other layouts, the PyTorch fallback for tensors of 2**31 elements or more).

GEMM-like kernels use a 1-D grid with the output-channel blocks of one pixel tile adjacent, so the programs that
share an input tile (and, in ``dw_pw``, its depthwise halo) run together and hit L2.

Only APIs present in both Triton 3.6 and 3.8 are used.
"""

from __future__ import annotations

import contextlib
import os

import triton
import triton.language as tl


def interpreting() -> bool:
    """Whether Triton would build interpreter kernels now (``TRITON_INTERPRET=1``)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def helpers_interpreted() -> bool:
    """Whether ``triton.language``'s own jitted helpers (``tl.zeros``, ``tl.sum``, ...) were built for the
    interpreter, i.e. ``TRITON_INTERPRET`` was set when Triton was first imported: an interpreted kernel can only
    call helpers of its own mode, so setting the variable later does not make the kernels runnable on a CPU."""
    import triton.language.standard as standard

    return type(standard.zeros).__name__ == "InterpretedFunction"


def autotuning() -> bool:
    """Whether to autotune block sizes (``DSRNET_TRITON_AUTOTUNE=0``: the first config only, no tuning runs)."""
    return os.environ.get("DSRNET_TRITON_AUTOTUNE", "1") != "0"


#: Autotuning's timing of each config, in ms of warm-up and of repeats (Triton's defaults: 25 and 100). A fused
#: DSRNet-50's first call at batch 1024 took ~74 s after precompiling on an H200 (2026-11-27), ~20 s of it timing
#: ~150 (key, config) pairs at the defaults; a 0.2 ms kernel still gets ~100 timed runs in 25 ms.
AUTOTUNE_WARMUP_MS, AUTOTUNE_REP_MS = 5, 25


def _time_config(kernel_call, quantiles):
    """The autotuner's benchmark (Triton's ``do_bench``, L2 flushed before each run) with the shorter budgets above."""
    import triton.testing

    return triton.testing.do_bench(kernel_call, warmup=AUTOTUNE_WARMUP_MS, rep=AUTOTUNE_REP_MS, quantiles=quantiles)


def _autotune_options() -> dict:
    """``triton.autotune`` options where this Triton has them (3.6 and 3.8 do): the shorter timing above, and the
    picks kept in Triton's on-disk cache (``cache_results``, keyed by the kernel's source, the tuning key, the
    GPU's architecture and Triton's version), so that a new process with the same shapes is not timed again."""
    import inspect

    params = inspect.signature(triton.autotune).parameters
    options: dict = {}
    if "do_bench" in params:
        options["do_bench"] = _time_config
    if "cache_results" in params:
        options["cache_results"] = True
    return options


class _LazyKernel:
    """``triton.jit`` (+ ``triton.autotune``) applied on first launch, once per (interpreter, autotuning) mode.

    On a GPU the autotuner picks block sizes per ``key`` (each config is compiled, then timed, on the first call of
    each new key, and the pick kept on disk for later processes: :func:`_autotune_options`; the kernels'
    ``TUNE_SIZE`` argument, unused by the kernel itself, is the pixel count rounded up to a
    power of two, so a new batch size within the same bucket, e.g. a test set's last partial batch, is not tuned
    again); the interpreter gets one small config because it would otherwise time every config on the CPU.
    ``reset_to_zero``: arguments the autotuner zeroes before each timed run and once after timing, before the real
    run (buffers of per-program partial sums whose rows depend on the block size: a config with fewer programs must
    not find the rows another config wrote); later calls, and a pick found in the disk cache, time nothing, so the
    ops allocate those buffers zeroed. ``prune``: Triton's ``early_config_prune``, which configs a launch's
    arguments allow (applied where more than one config is in play).
    """

    def __init__(self, fn, configs, key, interp_config, reset_to_zero=None, prune=None):
        self.fn, self.configs, self.key, self.interp_config = fn, configs, key, interp_config
        self.reset_to_zero, self.prune = reset_to_zero, prune
        self._built: dict[tuple[bool, bool], object] = {}

    def build(self):
        mode = (interpreting(), autotuning())
        if mode not in self._built:
            configs = [self.interp_config] if mode[0] else (self.configs if mode[1] else self.configs[:1])
            prune = {"early_config_prune": self.prune} if self.prune else None
            tune = triton.autotune(configs=configs, key=self.key, reset_to_zero=self.reset_to_zero,
                                   prune_configs_by=prune, **_autotune_options())  # fmt: skip
            self._built[mode] = tune(triton.jit(self.fn))
        return self._built[mode]

    def swap_configs(self, configs, interp_config=None) -> tuple[list, object]:
        """Offer ``configs`` (and, under the interpreter, ``interp_config`` if given) from the next launch on, the
        autotuner rebuilt with them; returns what was offered before, for :meth:`swap_configs` to put back
        (benchmarks that time or check configs beyond the library's; :meth:`offering` for a ``with`` block)."""
        before = self.configs, self.interp_config
        self.configs, self.interp_config = list(configs), interp_config or self.interp_config
        self._built.clear()
        return before

    @contextlib.contextmanager
    def offering(self, configs, interp_config=None):
        """:meth:`swap_configs` inside the ``with`` block, this kernel's own configs again after it."""
        before = self.swap_configs(configs, interp_config)
        try:
            yield self
        finally:
            self.swap_configs(*before)

    def smallest(self, meta: str) -> int:
        """The smallest value of block size ``meta`` among the configs a launch may pick now (buffers of
        per-program partial sums are sized for it)."""
        kernel = self.build()
        return min(c.kwargs[meta] for c in kernel.configs)

    def __getitem__(self, grid):
        kernel = self.build()
        pass_ = _PRECOMPILE
        if pass_ is None:
            return kernel[grid]
        return lambda *args, **kwargs: pass_.compile(self.fn.__name__, kernel, grid, args, kwargs)


class Precompile:
    """What a :func:`precompiling` pass did: the launches it turned into compilations, the distinct kernel
    specializations those needed, how many the workers compiled, how many of those this process then loaded from
    Triton's disk cache (``loaded``) and how many it had to compile again itself (``recompiled``: a worker's entry
    did not match this process's cache key), and the errors (reported, never raised)."""

    def __init__(self) -> None:
        self.launches: list[str] = []
        self.specs: dict[str, tuple[str, str]] = {}  # specialization data -> (module, qualname)
        self.functions: dict[str, object] = {}  # specialization data -> this process's JITFunction
        self.done: set[str] = set()  # the specializations the workers compiled
        self.loaded = 0
        self.recompiled = 0
        self.errors: list[str] = []

    @property
    def compiled(self) -> int:
        """How many specializations the workers compiled."""
        return len(self.done)

    def compile(self, name: str, kernel, grid, args, kwargs) -> None:
        try:
            kernel.warmup(*args, grid=grid, **kwargs)  # every autotune config: each reaches record() below
            self.launches.append(name)
        except Exception as err:  # never fatal: the real launch compiles whatever is missing, serially
            self.errors.append(f"{name}: {type(err).__name__}: {err}")

    def record(self, *, fn, compile, is_manual_warmup, **_) -> bool | None:
        """Triton's ``jit_cache_hook``: note a warm-up's specialization and skip compiling it here (True)."""
        if not is_manual_warmup:
            return None
        self.specs.setdefault(compile["specialization_data"], (fn.module, fn.name))
        self.functions.setdefault(compile["specialization_data"], fn.jit_function)
        return True


#: The active :func:`precompiling` pass. A process-wide global, not a ContextVar: autograd runs CUDA backward
#: functions on its own device threads, whose launches the pass must see too (as it does Triton's global hook).
_PRECOMPILE: Precompile | None = None
#: A worker still compiling after this long is stopped (its kernels then compile at their first launch).
WORKER_TIMEOUT_S = 600


@contextlib.contextmanager
def precompiling(workers: int | None = None):
    """Compile instead of run, in parallel processes: inside, every launch of these kernels only records what
    compiling each of its autotune configs for the launch's shapes needs (Triton's ``jit_cache_hook`` with the
    specialization data ``JITFunction.preload`` takes) and runs nothing, so outputs are left UNINITIALISED. On
    exit ``workers`` processes (default: one per CPU; ``python -m dsrnet.kernels._precompile_worker``) compile
    them into Triton's on-disk cache, where the next real launch finds them: that launch then only times the
    configs (autotuning) instead of compiling them one by one (~1 s each on an H200's host, and a DSRNet-50 pass
    needs ~100). Processes, not threads: a compilation holds the GIL for ~30 % of its time, which caps threads at
    ~3x. Use it for one throw-away pass with the real shapes and dtypes (forward, and backward for training).
    Under the interpreter, or nested in another pass, it is a no-op context and launches run as usual. Yields a
    :class:`Precompile` (``None`` when inactive)."""
    global _PRECOMPILE
    if interpreting() or _PRECOMPILE is not None:
        yield None
        return
    knobs = triton.knobs.runtime
    pass_, hook_before = Precompile(), knobs.jit_cache_hook
    _PRECOMPILE, knobs.jit_cache_hook = pass_, pass_.record
    try:
        yield pass_
    finally:
        _PRECOMPILE, knobs.jit_cache_hook = None, hook_before
    if pass_.specs:
        try:
            _compile_in_workers(pass_, workers or os.cpu_count() or 1)
        except Exception as err:  # e.g. no way to start processes: the first real launches compile serially
            pass_.errors.append(f"precompile workers: {type(err).__name__}: {err}")
        else:
            _load_compiled(pass_)


def _load_compiled(pass_: Precompile) -> None:
    """Load what the workers compiled into this process's own kernel caches (``JITFunction.preload``, which reads
    Triton's disk cache under this process's key), so that the first real launch finds each kernel in memory, and
    count the disk cache's hits (``pass_.loaded``) and misses (``pass_.recompiled``: compiled here and now, as the
    first launch would otherwise have done). Misses mean the workers' keys differ from this process's, as the ptxas
    version did (:func:`_parent_backend_identity`): every kernel then compiles serially, and the record says so.
    Only what a worker reports compiled is loaded: a spec whose worker failed or was stopped is left to the first
    real launch, which compiles it as it would have without a pass (all configs it times, or only the pick when an
    earlier process left the autotuner's pick on disk), not this pass serially."""
    knobs = triton.knobs.compilation
    listener_before, hits = knobs.listener, []

    def listen(**event):
        hits.append(bool(event.get("cache_hit")))
        if listener_before is not None:
            listener_before(**event)

    knobs.listener = listen
    try:
        for spec, function in pass_.functions.items():
            if spec not in pass_.done:
                continue
            try:
                function.preload(spec)
            except Exception as err:  # the first real launch compiles (and reports) it
                pass_.errors.append(f"loading {pass_.specs[spec][1]}: {type(err).__name__}: {str(err)[:300]}")
    finally:
        knobs.listener = listener_before
    pass_.loaded, pass_.recompiled = sum(hits), len(hits) - sum(hits)


def _compile_in_workers(pass_: Precompile, workers: int) -> None:
    import json
    import subprocess
    import sys
    import tempfile
    from dataclasses import asdict

    from triton.runtime.driver import driver

    target = asdict(driver.active.get_current_target())
    specs = [[module, name, spec] for spec, (module, name) in pass_.specs.items()]
    chunks = [specs[i::workers] for i in range(min(workers, len(specs)))]
    cmd = [sys.executable, "-m", "dsrnet.kernels._precompile_worker"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(_parent_backend_identity(target))
    # The workers import this package from where this process did (a checkout on sys.path, not installed).
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    procs = []
    for chunk in chunks:  # every worker started before any is waited for
        with tempfile.TemporaryFile("w+") as jobs:
            json.dump({"target": target, "specs": chunk}, jobs)
            jobs.seek(0)
            procs.append(subprocess.Popen(cmd, stdin=jobs, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, env=env))  # fmt: skip
    for chunk, proc in zip(chunks, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        try:
            report = json.loads(out)
        except ValueError:
            pass_.errors.append(f"precompile worker exited {proc.returncode}: {err.strip()[-300:]}")
            continue
        pass_.done.update(chunk[i][2] for i in report.get("done", ()))
        pass_.errors += report["errors"]


def _parent_backend_identity(target: dict) -> dict[str, str]:
    """Environment that makes a worker's cache keys this process's: the ptxas version string in them.

    Triton keys its disk cache partly on ``ptxas --version``, read once per process (``get_ptxas_version`` is
    cached) and then kept even when ``TRITON_PTXAS_PATH`` changes -- which ``torch.compile`` does on its first
    compilation (torch 2.11 points it at the ptxas it ships, CUDA 13.0, where Triton 3.6's own is 12.8). A worker
    started after that reads the other ptxas's version, so none of its kernels matched this process's keys: on an
    H200 the first call after precompiling compiled every one of them again (84 of 84, 2026-11-27). Triton's
    ``TRITON_MOCK_PTX_VERSION`` sets the string the key uses (only that: the compiling ptxas is still the one
    ``TRITON_PTXAS_PATH`` names, inherited), so the workers get this process's. Nothing where the backend is not
    CUDA or this Triton has no such function."""
    if target.get("backend") != "cuda" or os.environ.get("TRITON_MOCK_PTX_VERSION") is not None:
        return {}
    try:
        from triton.backends.nvidia.compiler import get_ptxas_version

        return {"TRITON_MOCK_PTX_VERSION": get_ptxas_version(target["arch"])}
    except Exception:  # another Triton layout, or no ptxas: the workers then key as they would on their own
        return {}


def _cfg(num_warps=4, num_stages=2, **meta):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the kernels (jitted functions, inlined where they are called). Triton decides at decoration
# whether they are compiled or interpreted, as it does for ``triton.language``'s own helpers (``tl.zeros``,
# ``tl.sum``, ...) when it is first imported; a kernel can only call helpers of its own mode, so these follow the
# mode Triton itself was imported in, not ``TRITON_INTERPRET`` at the time this module happens to be imported.
# ---------------------------------------------------------------------------------------------------------------
def _jit_as_triton(fn):
    """``triton.jit(fn)`` in the mode of ``triton.language``'s own helpers."""
    mode = "1" if helpers_interpreted() else "0"
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = mode
    try:
        return triton.jit(fn)
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


@_jit_as_triton
def _dependent_launch(GDC: tl.constexpr):
    """Programmatic dependent launch (``GDC``: the op launched this kernel with ``launch_pdl``; ``ops.PDL``, sm_90
    and later; the inference kernels, which follow each other, have it): the kernel may have started while the one
    before it in the stream still ran, so it waits for that one to finish and its writes to be visible before its
    first memory access -- loads, and stores too (the allocator may have handed it memory the previous kernel still
    reads) -- then lets the next kernel start likewise. All of this kernel's programs have been scheduled by the time the last of them gets here, so the next
    kernel's programs only take SM room this one no longer needs: what overlaps is a launch and a tail, not work."""
    if GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@_jit_as_triton
def _pixels(offs, HO, WO):
    """(image, row, column) of flat indices over the pixels of an [N, HO, WO] map."""
    img = offs // (HO * WO)
    rem = offs % (HO * WO)
    return img, rem // WO, rem % WO


@_jit_as_triton
def _bn_relu(xv, ok, centre, scale, shift):
    """``relu((x - centre) * scale + shift)`` of a loaded [pixels, channels] tap tile, per channel; taps outside the
    image (``ok`` false) stay zero, since the conv pads its input, not ``x``."""
    xv = tl.maximum((xv - centre[None, :]) * scale[None, :] + shift[None, :], 0.0)
    return tl.where(ok[:, None], xv, 0.0)


@_jit_as_triton
def _tap(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale, shift, KH: tl.constexpr,
         KW: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, AFFINE: tl.constexpr):  # fmt: skip
    """The conv input under tap (``KH``, ``KW``) of output pixels (``ho``, ``wo``), [pixels, channels] in fp32 (0
    where the tap falls in the padding); ``AFFINE``: after the BatchNorm + ReLU prologue."""
    ih = ho * STRIDE - DIL + KH * DIL
    iw = wo * STRIDE - DIL + KW * DIL
    ok = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    ptrs = x_ptr + (x_base + ih * sxh + iw * sxw)[:, None] + offs_c[None, :]
    xv = tl.load(ptrs, mask=ok[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
    if AFFINE:
        xv = _bn_relu(xv, ok, centre, scale, shift)
    return xv


@_jit_as_triton
def _dw_taps(acc, x_ptr, x_base, w_ptr, swt, swc, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale,
             shift, STRIDE: tl.constexpr, DIL: tl.constexpr, AFFINE: tl.constexpr):  # fmt: skip
    """``acc`` [pixels, channels] + the depthwise 3x3 (padding = dilation) at output pixels (``ho``, ``wo``) of
    the image starting at element offset ``x_base``, in fp32; tap t (= 3 kh + kw) of channel c's weight at
    ``w_ptr + t * swt + c * swc`` (a packed [9, C]: swt = C, swc = 1; a conv's own [C, 1, 3, 3]: 1, 9). All 9 taps' loads are
    independent, so they are in flight at once. ``AFFINE``: the conv reads ``relu((x - centre) * scale + shift)``
    (per-channel [channels] vectors: a BatchNorm with its statistics, then the ReLU, applied as the taps are
    loaded; centred as BatchNorm itself computes, which rounds better than a folded ``x * a + b``)."""
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            xv = _tap(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale, shift, kh, kw,
                      STRIDE, DIL, AFFINE)  # fmt: skip
            wv = tl.load(w_ptr + (kh * 3 + kw) * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)
            acc += xv * wv[None, :]
    return acc


@_jit_as_triton
def _weight_tile(w_ptr, rows, row_mask, cols, col_mask, ld):
    """Rows ``rows`` x columns ``cols`` of a row-major matrix with ``ld`` columns (a GEMM's weight operand, e.g. a
    1x1 conv's [Cin, Cout]), 0 outside the masks."""
    return tl.load(w_ptr + rows[:, None] * ld + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0)


@_jit_as_triton
def _store_tile(y_ptr, acc, img, ho, wo, syn, syh, syw, offs_c, mask):
    """An fp32 [pixels, channels] tile into ``y`` (channels contiguous) at pixels (``img``, ``ho``, ``wo``) and
    channels ``offs_c``, in ``y``'s dtype: every kernel's output, written once."""
    y_ptrs = y_ptr + (img * syn + ho * syh + wo * syw)[:, None] + offs_c[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@_jit_as_triton
def _affine(a_ptr, offs_c, c_mask, C, AFFINE: tl.constexpr):
    """The per-channel (centre, scale, shift) of an ``AFFINE`` prologue, rows 0-2 of the fp32 [3, C] tensor at
    ``a_ptr``; zeros, unused, otherwise."""
    if AFFINE:
        centre = tl.load(a_ptr + offs_c, mask=c_mask, other=0.0)
        scale = tl.load(a_ptr + C + offs_c, mask=c_mask, other=0.0)
        shift = tl.load(a_ptr + 2 * C + offs_c, mask=c_mask, other=0.0)
    else:
        centre = 0.0
        scale = 0.0
        shift = 0.0
    return centre, scale, shift


@_jit_as_triton
def _mma(a, b, acc, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """``acc + a @ b`` on the tensor cores (fp32 accumulation); ``IEEE``: full fp32 products (no TF32)."""
    if DOT_F32:  # Triton 3.8's interpreter gets bf16 tl.dot wrong; bf16 products are exact in fp32
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:  # noqa: SIM108 (a constexpr branch: Triton compiles only one side)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


# ---------------------------------------------------------------------------------------------------------------
# Depthwise 3x3 forward
# ---------------------------------------------------------------------------------------------------------------
def slides(rows: int, stride: int, dilation: int) -> bool:
    """Whether ``dw_fwd`` runs a config with ``ROWS`` output rows per program as sliding rows: only where the
    stride divides the dilation (stride 1, or DSRNet's stride-2 rate-2 convs), so that the three rows an output row
    reads are rows of a stride-1 conv at rate dilation / stride over every stride-th input row; elsewhere (and for
    ``ROWS`` = 0) the same config runs as a pixel tile. The launch grid and the kernel decide it by this rule."""
    return rows > 0 and dilation % stride == 0


def _dw_fwd(
    x_ptr, w_ptr, b_ptr, a_ptr, y_ptr,
    P, C, H, W, HO, WO,
    sxn, sxh, sxw,
    syn, syh, syw, swt, swc, w_off, TUNE_SIZE,
    STRIDE: tl.constexpr, DIL: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, AFFINE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr = 0, ROW_STAGES: tl.constexpr = 1,
    PREFETCH: tl.constexpr = False,
    GDC: tl.constexpr = False,
):  # fmt: skip
    # x: [N, H, W, C] via pixel strides, channels contiguous; w: tap t of channel c at w_off + t * swt + c * swc
    # (the conv's own [C, 1, 3, 3] weight, or a packed [9, C]; w_off = 8 * swt with swt negated reads the taps in
    # reverse: the input gradient of a stride-1 conv); y: [N, HO, WO, C] likewise.
    # AFFINE: the conv reads relu((x - centre) * scale + shift) (a: [3, C]), the preceding BatchNorm and ReLU.
    _dependent_launch(GDC)  # first, before any load or store
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    w_ptr += w_off
    centre, scale, shift = _affine(a_ptr, offs_c, c_mask, C, AFFINE)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if (ROWS > 0) & (DIL % STRIDE == 0):  # slides(ROWS, STRIDE, DIL)
        _dw_rows(x_ptr, w_ptr, y_ptr, pid_p, offs_c, c_mask, bias, P, H, W, HO, WO, sxn, sxh, sxw, syn, syh, syw,
                 swt, swc, centre, scale, shift, STRIDE, DIL, RELU, AFFINE, BLOCK_P, BLOCK_C, ROWS, ROW_STAGES,
                 PREFETCH)  # fmt: skip
    else:
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = offs_p < P
        n, ho, wo = _pixels(offs_p, HO, WO)
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        acc = _dw_taps(acc, x_ptr, n * sxn, w_ptr, swt, swc, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre,
                       scale, shift, STRIDE, DIL, AFFINE)  # fmt: skip
        acc += bias[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0)
        _store_tile(y_ptr, acc, n, ho, wo, syn, syh, syw, offs_c, p_mask[:, None] & c_mask[None, :])


@_jit_as_triton
def _dw_rows(x_ptr, w_ptr, y_ptr, pid_p, offs_c, c_mask, bias, P, H, W, HO, WO, sxn, sxh, sxw, syn, syh, syw, swt,
             swc, centre, scale, shift, STRIDE: tl.constexpr, DIL: tl.constexpr, RELU: tl.constexpr,
             AFFINE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
             ROW_STAGES: tl.constexpr, PREFETCH: tl.constexpr):  # fmt: skip
    """``dw_fwd`` as sliding rows: the program's tile is ``BLOCK_P`` (image, output column) pairs of one output row,
    and it walks ``ROWS`` output rows down the map. Each input row it meets is loaded once (three column shifts,
    the two beside the centre mostly from L1) and added into the three output rows it feeds: the row above is then
    complete and stored, the other two are carried in registers. The pixel tile instead loads all nine taps of each
    output pixel, and the rows above and below its tile again for the tiles that own them.

    With dilation d = e * stride, output row ho reads input rows stride * (ho - e), stride * ho, stride * (ho + e):
    the output rows of one residue class mod e form a stride-1 rate-1 chain over every (stride * e)-th input row,
    so a program owns a strip of one class (``pid_p`` = (column block, class, strip), strips fastest: neighbouring
    strips, which share a halo row, run together and find it in L2)."""
    E = DIL // STRIDE  # constexpr arithmetic: a compile-time constant
    cols = P // HO  # (image, output column) pairs
    rows_e = tl.cdiv(HO, E)  # output rows of residue class 0, the longest
    strips = tl.cdiv(rows_e, ROWS)
    strip = pid_p % strips
    klass = (pid_p // strips) % E
    offs_q = (pid_p // (strips * E)) * BLOCK_P + tl.arange(0, BLOCK_P)
    q_mask = offs_q < cols
    n = offs_q // WO
    wo = offs_q % WO
    x_base = n * sxn
    mask = q_mask[:, None] & c_mask[None, :]
    # Output rows klass + E * t for t in [t0, t_end) (those of this class and strip), fed by the input rows
    # STRIDE * (klass + E * k) for k in [t0 - 1, t_end]. The taps' weights, tap t = 3 kh + kw, loaded once.
    t0 = strip * ROWS
    t_end = tl.minimum(t0 + ROWS, tl.cdiv(HO - klass, E))
    w00 = tl.load(w_ptr + 0 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    w01 = tl.load(w_ptr + 1 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    w02 = tl.load(w_ptr + 2 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    w10 = tl.load(w_ptr + 3 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    w11 = tl.load(w_ptr + 4 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    w12 = tl.load(w_ptr + 5 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    w20 = tl.load(w_ptr + 6 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    w21 = tl.load(w_ptr + 7 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    w22 = tl.load(w_ptr + 8 * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    above = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # output row k - 1, complete after this input row
    here = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # output row k
    if PREFETCH:  # each row's taps loaded an iteration ahead, in flight while the row before is computed
        left, mid, right = _row_taps(x_ptr, x_base, klass + E * (t0 - 1), wo, q_mask, offs_c, c_mask, H, W, sxh, sxw,
                                     centre, scale, shift, 1, STRIDE, DIL, AFFINE)  # fmt: skip
    for k in tl.range(t0 - 1, t_end + 1, num_stages=ROW_STAGES):
        j = klass + E * k  # input row j * STRIDE
        if PREFETCH:
            next_left, next_mid, next_right = _row_taps(x_ptr, x_base, j + E, wo, q_mask & (k < t_end), offs_c, c_mask,
                                                        H, W, sxh, sxw, centre, scale, shift, 1, STRIDE, DIL, AFFINE)  # fmt: skip
        else:
            left, mid, right = _row_taps(x_ptr, x_base, j, wo, q_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale,
                                         shift, 1, STRIDE, DIL, AFFINE)  # fmt: skip
        out = above + left * w20 + mid * w21 + right * w22 + bias[None, :]
        if RELU:
            out = tl.maximum(out, 0.0)
        _store_tile(y_ptr, out, n, klass + E * (k - 1), wo, syn, syh, syw, offs_c, mask & (k > t0))
        above = here + left * w10 + mid * w11 + right * w12
        here = left * w00 + mid * w01 + right * w02
        if PREFETCH:
            left, mid, right = next_left, next_mid, next_right


@_jit_as_triton
def _row_taps(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale, shift, KH: tl.constexpr,
              STRIDE: tl.constexpr, DIL: tl.constexpr, AFFINE: tl.constexpr):  # fmt: skip
    """The three column taps (left, centre, right) of kernel row ``KH`` at output pixels (``ho``, ``wo``), each
    [pixels, channels] in fp32 (0 in the padding and where ``p_mask`` is false): :func:`_tap` three times. At
    ``KH`` = 1 and ``ho`` = j, input row ``j * STRIDE`` under output columns ``wo`` (the sliding rows' load)."""
    left = _tap(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale, shift, KH, 0, STRIDE,
                DIL, AFFINE)  # fmt: skip
    mid = _tap(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale, shift, KH, 1, STRIDE,
               DIL, AFFINE)  # fmt: skip
    right = _tap(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale, shift, KH, 2, STRIDE,
                 DIL, AFFINE)  # fmt: skip
    return left, mid, right


# The 9 taps' loads are all in flight at once (ILP), which costs registers (~180 for 64x64 on 4 warps on sm_90),
# so configs with fewer elements per thread are offered for occupancy.
# With the BatchNorm prologue (AFFINE) the 4-warp 32x128 tile spilled (sm_90, Triton 3.8): 8 warps for it, and a
# smaller 4-warp tile beside the others.
_DW_CONFIGS = [
    _cfg(BLOCK_P=64, BLOCK_C=64),
    _cfg(BLOCK_P=64, BLOCK_C=64, num_warps=8),
    _cfg(BLOCK_P=128, BLOCK_C=32),
    _cfg(BLOCK_P=32, BLOCK_C=128, num_warps=8),
    _cfg(BLOCK_P=32, BLOCK_C=64),
]
#: The forward's list adds the sweep's find (kernel_shapes.py --sweep, H200, batch 1024, bf16, 2026-11-27): the best
#: forward tile at 7 of 14 shapes, 1.03-1.18x faster than the best of the five above where the map is 16x16 or
#: smaller (few pixels, many channels: a tall pixel tile leaves most of it masked). The input gradient's kernel was
#: not swept, and its partial-sum buffer is sized by the smallest pixel tile, so it keeps the five.
#: Then sliding rows (ROWS > 0; not yet timed on a GPU): the pixel tiles ran at 2.8-3.1x their traffic floor at every
#: shape of that sweep, and load each output pixel's nine taps (18 bytes per output element in bf16 through L1,
#: and a two-row tile's rows above and below again from L2). Sliding rows load three per output element and each
#: input row once per strip (+ 2 halo rows per ROWS). Three forms, all offered, for the autotuner to choose per
#: shape: plain loads (the two shifted rows hit L1; one row in flight per program); PREFETCH, the next row's loads
#: issued before this row's arithmetic (two rows in flight, three more tiles of registers: 8 elements per thread);
#: ROW_STAGES = 3, the row loop software-pipelined by Triton (cp.async into shared memory, two rows ahead; 24-48
#: KB), whose copies bypass L1 (cp.async.cg), so the shifted rows come from L2. Compiled for sm_90 (Triton 3.6,
#: 3.8): 128-236 registers, no spills (a 64x64 tile on 4 warps spilled).
_DW_ROWS_CONFIGS = [
    _cfg(BLOCK_P=32, BLOCK_C=64, ROWS=8),
    _cfg(BLOCK_P=16, BLOCK_C=128, ROWS=8),
    _cfg(BLOCK_P=16, BLOCK_C=64, ROWS=8, PREFETCH=True),
    _cfg(BLOCK_P=32, BLOCK_C=64, ROWS=8, PREFETCH=True, num_warps=8),
    _cfg(BLOCK_P=32, BLOCK_C=64, ROWS=8, ROW_STAGES=3),
    _cfg(BLOCK_P=16, BLOCK_C=128, ROWS=8, ROW_STAGES=3),
    _cfg(BLOCK_P=64, BLOCK_C=64, ROWS=8, ROW_STAGES=3, num_warps=8),
]
_DW_FWD_CONFIGS = [*_DW_CONFIGS, _cfg(BLOCK_P=16, BLOCK_C=128), *_DW_ROWS_CONFIGS]
_DW_INTERP = _cfg(BLOCK_P=16, BLOCK_C=16)


def _rows_fit(configs, named_args, **kwargs):
    """``dw_fwd``'s ``early_config_prune``: sliding-row configs only where they slide (:func:`slides`; elsewhere
    they would run as pixel tiles the list already holds)."""
    return [c for c in configs if not c.kwargs.get("ROWS") or slides(c.kwargs["ROWS"], kwargs["STRIDE"], kwargs["DIL"])]


dw_fwd = _LazyKernel(
    _dw_fwd, _DW_FWD_CONFIGS, ["TUNE_SIZE", "C", "HO", "WO", "STRIDE", "DIL", "AFFINE"], _DW_INTERP, prune=_rows_fit
)


# ---------------------------------------------------------------------------------------------------------------
# Depthwise 3x3 backward: grad input
# ---------------------------------------------------------------------------------------------------------------
def _dw_bwd_input(
    g_ptr, w_ptr, dx_ptr, x_ptr, a_ptr, part_ptr,
    P, C, H, W, HO, WO,
    sgn, sgh, sgw,
    sdn, sdh, sdw,
    sxn, sxh, sxw, swt, swc, TUNE_SIZE,
    STRIDE: tl.constexpr, DIL: tl.constexpr, AFFINE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # One program per tile of INPUT pixels: dx[ih, iw] = sum over taps of g[oh, ow] * w[tap], where
    # ih = oh * STRIDE - DIL + kh * DIL, so oh = (ih + DIL - kh * DIL) / STRIDE when that divides exactly.
    # AFFINE (the forward read relu(u) with u = (x - centre) * scale + shift): back through the ReLU and the affine
    # map, dx = da * [u > 0] * scale, and this program's sums over its pixels of da * [u > 0] * (x - centre) (d scale)
    # and da * [u > 0] (d shift) go to part[pid_p, 0|1, c] (fp32; the caller sums the rows: deterministic).
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = offs_p < P
    c_mask = offs_c < C
    n, ih, iw = _pixels(offs_p, H, W)
    g_base = n * sgn
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(3):
        th = ih + DIL - kh * DIL
        oh = th // STRIDE
        h_ok = (th >= 0) & (th % STRIDE == 0) & (oh < HO)
        for kw in tl.static_range(3):
            tw = iw + DIL - kw * DIL
            ow = tw // STRIDE
            ok = p_mask & h_ok & (tw >= 0) & (tw % STRIDE == 0) & (ow < WO)
            ptrs = g_ptr + (g_base + oh * sgh + ow * sgw)[:, None] + offs_c[None, :]
            gv = tl.load(ptrs, mask=ok[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + (kh * 3 + kw) * swt + offs_c * swc, mask=c_mask, other=0.0).to(tl.float32)
            acc += gv * wv[None, :]
    mask2 = p_mask[:, None] & c_mask[None, :]
    if AFFINE:
        centre, scale, shift = _affine(a_ptr, offs_c, c_mask, C, AFFINE)
        x_ptrs = x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + offs_c[None, :]
        xc = tl.load(x_ptrs, mask=mask2, other=0.0).to(tl.float32) - centre[None, :]
        acc = tl.where(xc * scale[None, :] + shift[None, :] > 0, acc, 0.0)  # rows past P are 0 already
        row = part_ptr + pid_p * 2 * C + offs_c
        tl.store(row, tl.sum(acc * xc, axis=0), mask=c_mask)
        tl.store(row + C, tl.sum(acc, axis=0), mask=c_mask)
        acc = acc * scale[None, :]
    dx_ptrs = dx_ptr + (n * sdn + ih * sdh + iw * sdw)[:, None] + offs_c[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask2)


# part_ptr (AFFINE): one row of partial sums per pixel block, so how many rows a launch writes depends on BLOCK_P.
dw_bwd_input = _LazyKernel(
    _dw_bwd_input, _DW_CONFIGS, ["TUNE_SIZE", "C", "HO", "WO", "STRIDE", "DIL", "AFFINE"], _DW_INTERP, ["part_ptr"]
)


# ---------------------------------------------------------------------------------------------------------------
# Depthwise 3x3 backward: grad weight (per-program partial sums)
# ---------------------------------------------------------------------------------------------------------------
def _dw_bwd_weight(
    g_ptr, x_ptr, a_ptr, part_ptr,
    P, C, H, W, HO, WO, PIX_PER_PROG, COLS_PER_PROG,
    sgn, sgh, sgw,
    sxn, sxh, sxw, TUNE_SIZE,
    STRIDE: tl.constexpr, DIL: tl.constexpr, AFFINE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr = 0, ROW_STAGES: tl.constexpr = 1,
):  # fmt: skip
    # Program (chunk, cblock) sums g * x_tap over PIX_PER_PROG output pixels (a multiple of BLOCK_P, so the
    # partial-sum buffer does not depend on the autotuned block size) and writes part[chunk, c, tap] in fp32.
    # One elementwise [BLOCK_P, BLOCK_C] accumulator per tap, reduced over the pixels once after the loop: a
    # reduction per tap and pixel block (warp shuffles and barriers) cost more than the multiply-adds themselves.
    # Written out tap by tap: Triton (3.6-3.8) cannot keep a list of tensors indexed inside a static loop.
    # AFFINE: the forward's input was relu((x - centre) * scale + shift), recomputed from x as the taps are loaded.
    # ROWS > 0 (where slides()): sliding rows instead, program `chunk` owning COLS_PER_PROG (image, column) pairs of
    # one residue class of rows (_dw_wgrad_rows); the caller launches as many programs either way.
    pid_k = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    centre, scale, shift = _affine(a_ptr, offs_c, c_mask, C, AFFINE)
    if (ROWS > 0) & (DIL % STRIDE == 0):  # slides(ROWS, STRIDE, DIL)
        a0, a1, a2, a3, a4, a5, a6, a7, a8 = _dw_wgrad_rows(
            g_ptr, x_ptr, pid_k, offs_c, c_mask, P, H, W, HO, WO, COLS_PER_PROG, sgn, sgh, sgw, sxn, sxh, sxw,
            centre, scale, shift, STRIDE, DIL, AFFINE, BLOCK_P, BLOCK_C, ROW_STAGES,
        )  # fmt: skip
    else:
        a0 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        a1, a2, a3, a4, a5, a6, a7, a8 = a0, a0, a0, a0, a0, a0, a0, a0
        for p0 in range(0, PIX_PER_PROG, BLOCK_P):
            offs_p = pid_k * PIX_PER_PROG + p0 + tl.arange(0, BLOCK_P)
            p_mask = offs_p < P
            n, ho, wo = _pixels(offs_p, HO, WO)
            g_ptrs = g_ptr + (n * sgn + ho * sgh + wo * sgw)[:, None] + offs_c[None, :]
            gv = tl.load(g_ptrs, mask=p_mask[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
            x_base = n * sxn
            left, mid, right = _row_taps(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale,
                                         shift, 0, STRIDE, DIL, AFFINE)  # fmt: skip
            a0 += gv * left
            a1 += gv * mid
            a2 += gv * right
            left, mid, right = _row_taps(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale,
                                         shift, 1, STRIDE, DIL, AFFINE)  # fmt: skip
            a3 += gv * left
            a4 += gv * mid
            a5 += gv * right
            left, mid, right = _row_taps(x_ptr, x_base, ho, wo, p_mask, offs_c, c_mask, H, W, sxh, sxw, centre, scale,
                                         shift, 2, STRIDE, DIL, AFFINE)  # fmt: skip
            a6 += gv * left
            a7 += gv * mid
            a8 += gv * right
    out = part_ptr + pid_k * 9 * C + offs_c * 9  # part[chunk, c, tap]: summed over chunks, a [C, 1, 3, 3] weight
    tl.store(out, tl.sum(a0, axis=0), mask=c_mask)
    tl.store(out + 1, tl.sum(a1, axis=0), mask=c_mask)
    tl.store(out + 2, tl.sum(a2, axis=0), mask=c_mask)
    tl.store(out + 3, tl.sum(a3, axis=0), mask=c_mask)
    tl.store(out + 4, tl.sum(a4, axis=0), mask=c_mask)
    tl.store(out + 5, tl.sum(a5, axis=0), mask=c_mask)
    tl.store(out + 6, tl.sum(a6, axis=0), mask=c_mask)
    tl.store(out + 7, tl.sum(a7, axis=0), mask=c_mask)
    tl.store(out + 8, tl.sum(a8, axis=0), mask=c_mask)


@_jit_as_triton
def _g_row(g_ptr, g_base, t, t_count, klass, E, sgh, q_mask, offs_c, c_mask):
    """Row ``t`` of residue class ``klass`` (output row klass + E * t) of the output gradient at the tile's
    (image, column) pairs, fp32 [pixels, channels]; 0 past the class's ``t_count`` rows."""
    ptrs = g_ptr + (g_base + (klass + E * t) * sgh)[:, None] + offs_c[None, :]
    ok = q_mask & (t < t_count)
    return tl.load(ptrs, mask=ok[:, None] & c_mask[None, :], other=0.0).to(tl.float32)


@_jit_as_triton
def _dw_wgrad_rows(g_ptr, x_ptr, pid_k, offs_c, c_mask, P, H, W, HO, WO, COLS_PER_PROG, sgn, sgh, sgw, sxn, sxh,
                   sxw, centre, scale, shift, STRIDE: tl.constexpr, DIL: tl.constexpr, AFFINE: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ROW_STAGES: tl.constexpr):  # fmt: skip
    """``dw_bwd_weight``'s nine per-tap accumulators by sliding rows (as :func:`_dw_rows`): the program walks every
    input row of its residue class down its columns, loading each once (three column shifts) with one new row of
    the output gradient, and multiplies it into the three gradient rows that read it (the two before carried in
    registers): four loads per row where the pixel tile loads ten per output pixel."""
    E = DIL // STRIDE  # constexpr arithmetic: a compile-time constant
    cols = P // HO
    klass = pid_k % E
    t_count = tl.cdiv(HO - klass, E)  # output rows klass, klass + E, ...
    a0 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    a1, a2, a3, a4, a5, a6, a7, a8 = a0, a0, a0, a0, a0, a0, a0, a0
    first = (pid_k // E) * COLS_PER_PROG
    last = tl.minimum(first + COLS_PER_PROG, cols)  # the chunk's end: its last block may reach into the next
    for q0 in range(first, last, BLOCK_P):
        offs_q = q0 + tl.arange(0, BLOCK_P)
        q_mask = offs_q < last
        n = offs_q // WO
        wo = offs_q % WO
        g_base = n * sgn + wo * sgw
        x_base = n * sxn
        g_before = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)  # gradient row k - 1 (none before row 0)
        g_here = _g_row(g_ptr, g_base, 0, t_count, klass, E, sgh, q_mask, offs_c, c_mask)  # row k
        # Input row k (of the class) is read by gradient row k + 1 through taps kh = 0, by row k through kh = 1
        # and by row k - 1 through kh = 2; rows before 0 and from t_count on (STRIDE * (klass + E * t_count) >=
        # STRIDE * HO >= H) are the padding.
        for k in tl.range(0, t_count, num_stages=ROW_STAGES):
            g_next = _g_row(g_ptr, g_base, k + 1, t_count, klass, E, sgh, q_mask, offs_c, c_mask)
            left, mid, right = _row_taps(x_ptr, x_base, klass + E * k, wo, q_mask, offs_c, c_mask, H, W, sxh, sxw,
                                         centre, scale, shift, 1, STRIDE, DIL, AFFINE)  # fmt: skip
            a0 += g_next * left
            a1 += g_next * mid
            a2 += g_next * right
            a3 += g_here * left
            a4 += g_here * mid
            a5 += g_here * right
            a6 += g_before * left
            a7 += g_before * mid
            a8 += g_before * right
            g_before = g_here
            g_here = g_next
    return a0, a1, a2, a3, a4, a5, a6, a7, a8


# Nine [BLOCK_P, BLOCK_C] fp32 accumulators live in registers: at most 8 elements per thread each (more spilled in
# offline sm_90 builds with the BatchNorm prologue).
#: Sliding rows (ROWS > 0; not yet timed on a GPU; the pixel tiles' weight gradient took 51-52 us per call in the
#: training step, ~3x its traffic floor): the same nine accumulators, plus three gradient rows and three loaded
#: input rows (128-185 registers on sm_90, no spills). Plain loads only: Triton 3.6 does not software-pipeline
#: the row loop nested in the column loop (ROW_STAGES = 3 compiled to the same code).
_DWW_CONFIGS = [
    _cfg(BLOCK_P=16, BLOCK_C=64),
    _cfg(BLOCK_P=32, BLOCK_C=64, num_warps=8),
    _cfg(BLOCK_P=16, BLOCK_C=128, num_warps=8),
    _cfg(BLOCK_P=16, BLOCK_C=32),
    _cfg(BLOCK_P=16, BLOCK_C=64, ROWS=1),
    _cfg(BLOCK_P=32, BLOCK_C=64, ROWS=1, num_warps=8),
]
dw_bwd_weight = _LazyKernel(
    _dw_bwd_weight, _DWW_CONFIGS, ["TUNE_SIZE", "C", "HO", "WO", "PIX_PER_PROG", "STRIDE", "DIL", "AFFINE"],
    _DW_INTERP, prune=_rows_fit,
)


@_jit_as_triton
def _rows_step(acc, a_row, row_mask, w_ptr, offs_n, n_mask, N, K, k0, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
               BLOCK_K: tl.constexpr):  # fmt: skip
    """``acc`` + ``A[:, k0:k0 + BLOCK_K] @ w[k0:k0 + BLOCK_K, offs_n]`` (columns past ``K`` masked): one step of
    :func:`_rows_gemm`, or a whole GEMM where ``K <= BLOCK_K``."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    a = tl.load(a_row[:, None] + offs_k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
    return _mma(a, _weight_tile(w_ptr, offs_k, k_mask, offs_n, n_mask, N), acc, IEEE, DOT_F32)


@_jit_as_triton
def _rows_gemm(acc, a_row, row_mask, w_ptr, offs_n, n_mask, N, K, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
               BLOCK_K: tl.constexpr):  # fmt: skip
    """``acc`` + ``A @ w[:, offs_n]``: row r of A is the K contiguous elements at ``a_row[r]`` (a pixel's channels),
    w is [K, N] row-major; ``BLOCK_K`` columns of A at a time, on the tensor cores."""
    for k0 in range(0, K, BLOCK_K):
        acc = _rows_step(acc, a_row, row_mask, w_ptr, offs_n, n_mask, N, K, k0, IEEE, DOT_F32, BLOCK_K)
    return acc


@_jit_as_triton
def _shortcut_gemm(acc, r_ptr, wds_ptr, img, ho, wo, m_mask, offs_n, n_mask, N, KDS, srn, srh, srw,
                   DS_STRIDE: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                   BLOCK_K: tl.constexpr):  # fmt: skip
    """``acc`` + a block's strided 1x1 downsample of its input ``r`` [Nb, ., ., KDS] at output pixels (``img``,
    ``ho``, ``wo``): ``r[img, ho * DS_STRIDE, wo * DS_STRIDE, :] @ wds`` with wds [KDS, N], in the same fp32 tile."""
    r_row = r_ptr + img * srn + (ho * DS_STRIDE) * srh + (wo * DS_STRIDE) * srw
    return _rows_gemm(acc, r_row, m_mask, wds_ptr, offs_n, n_mask, N, KDS, IEEE, DOT_F32, BLOCK_K)


@_jit_as_triton
def _block_out(acc, r_ptr, wds_ptr, b_ptr, y_ptr, img, ho, wo, m_mask, offs_n, n_mask, N, KDS, srn, srh, srw, syn,
               syh, syw, SHORTCUT: tl.constexpr, DS_STRIDE: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
               BLOCK_K: tl.constexpr):  # fmt: skip
    """A DSR block's output tile from its pointwise accumulator: + shortcut (``SHORTCUT`` 0 none, 1 the identity
    ``r`` [Nb, HO, WO, N], 2 the strided 1x1 downsample of ``r`` [Nb, ., ., KDS] by ``wds`` into the same tile)
    + bias (both branches', pre-summed) + ReLU, written once into ``y``; returns it (fp32)."""
    mask2 = m_mask[:, None] & n_mask[None, :]
    if SHORTCUT == 1:
        r_ptrs = r_ptr + (img * srn + ho * srh + wo * srw)[:, None] + offs_n[None, :]
        acc += tl.load(r_ptrs, mask=mask2, other=0.0).to(tl.float32)
    if SHORTCUT == 2:
        acc = _shortcut_gemm(acc, r_ptr, wds_ptr, img, ho, wo, m_mask, offs_n, n_mask, N, KDS, srn, srh, srw,
                             DS_STRIDE, IEEE, DOT_F32, BLOCK_K)  # fmt: skip
    acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    acc = tl.maximum(acc, 0.0)
    _store_tile(y_ptr, acc, img, ho, wo, syn, syh, syw, offs_n, mask2)
    return acc


# ---------------------------------------------------------------------------------------------------------------
# 1x1 conv as a GEMM (optionally strided), epilogue: bias, residual, ReLU
# ---------------------------------------------------------------------------------------------------------------
@_jit_as_triton
def _pw_tile(
    tile, x_ptr, w_ptr, b_ptr, r_ptr, wds_ptr, y_ptr, M, N, K, KDS, HO, WO, sxn, sxh, sxw, srn, srh, srw, syn, syh,
    syw, STRIDE: tl.constexpr, RES: tl.constexpr, DS_STRIDE: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr,
    DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    R_FIRST: tl.constexpr, WHOLE_K: tl.constexpr,
):  # fmt: skip
    """Output tile ``tile`` of :func:`_pw_gemm` (tiles numbered row block major); ``WHOLE_K``: the GEMM in one
    step, no K loop (the caller guarantees ``K <= BLOCK_K``)."""
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = tile // num_n
    pid_n = tile % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    img, ho, wo = _pixels(offs_m, HO, WO)
    a_row = x_ptr + img * sxn + (ho * STRIDE) * sxh + (wo * STRIDE) * sxw
    mask2 = m_mask[:, None] & n_mask[None, :]
    r_ptrs = r_ptr + (img * srn + ho * srh + wo * srw)[:, None] + offs_n[None, :]
    if RES == 1 and R_FIRST:
        r_early = tl.load(r_ptrs, mask=mask2, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if WHOLE_K:
        acc = _rows_step(acc, a_row, m_mask, w_ptr, offs_n, n_mask, N, K, 0, IEEE, DOT_F32, BLOCK_K)
    else:
        acc = _rows_gemm(acc, a_row, m_mask, w_ptr, offs_n, n_mask, N, K, IEEE, DOT_F32, BLOCK_K)
    if RES == 2:
        acc = _shortcut_gemm(acc, r_ptr, wds_ptr, img, ho, wo, m_mask, offs_n, n_mask, N, KDS, srn, srh, srw,
                             DS_STRIDE, IEEE, DOT_F32, BLOCK_K)  # fmt: skip
    acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if RES == 1:
        if R_FIRST:
            acc += r_early.to(tl.float32)
        else:
            acc += tl.load(r_ptrs, mask=mask2, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    _store_tile(y_ptr, acc, img, ho, wo, syn, syh, syw, offs_n, mask2)


def _pw_gemm(
    x_ptr, w_ptr, b_ptr, r_ptr, wds_ptr, y_ptr,
    M, N, K, KDS, HO, WO,
    sxn, sxh, sxw,
    srn, srh, srw,
    syn, syh, syw, TUNE_SIZE,
    STRIDE: tl.constexpr, RES: tl.constexpr, DS_STRIDE: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr,
    DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    R_FIRST: tl.constexpr = False, PER_SM: tl.constexpr = 0,
    GDC: tl.constexpr = False,
):  # fmt: skip
    # Row m = output pixel (n, ho, wo); it reads input pixel (n, ho * STRIDE, wo * STRIDE). w: [K, N] row-major.
    # RES: 0 none, 1 a residual tensor r [Nb, HO, WO, N] added in the epilogue, 2 a downsample GEMM: r [Nb, ., .,
    # KDS] read at (ho * DS_STRIDE, wo * DS_STRIDE) times wds [KDS, N] into the same fp32 tile (a block's strided
    # 1x1 shortcut, never written to memory; its bias is pre-added into b). R_FIRST (an autotune option, only in
    # SWEEP_CONFIGS until a GPU times it): issue the residual tile's load before the GEMM, so that its memory latency
    # overlaps the K loop (which runs only 1-8 times in these convs) instead of following it, for the registers the
    # loaded tile holds meanwhile (~18 more per thread at 64x128, sm_90).
    # PER_SM (autotune option, SWEEP_CONFIGS only until timed): 0 = one program per output tile; > 0 = persistent,
    # at most PER_SM programs per SM, each looping over tiles p, p + P, ... with the whole K in one step (configs
    # only where K <= BLOCK_K and no downsample GEMM: _persistent_fits). A loop of loads feeding a dot without an
    # inner loop is one Triton's pipeliner can overlap across tiles: the next tile's operands load while this tile's
    # epilogue reads its residual and writes its output -- these memory-bound GEMMs (K = 64-512 against N = 256-2048
    # outputs) otherwise serialise load, MMA and epilogue within each program and rely on other programs alone to
    # keep the memory busy (~50 % of the copy bandwidth measured at 32 px, H200).
    _dependent_launch(GDC)  # first, before any load or store
    if PER_SM == 0:
        _pw_tile(tl.program_id(0), x_ptr, w_ptr, b_ptr, r_ptr, wds_ptr, y_ptr, M, N, K, KDS, HO, WO, sxn, sxh, sxw,
                 srn, srh, srw, syn, syh, syw, STRIDE, RES, DS_STRIDE, RELU, IEEE, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_K,
                 R_FIRST, False)  # fmt: skip
    else:
        tl.device_assert(K <= BLOCK_K, "a persistent pw_gemm config needs K <= BLOCK_K")
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
            _pw_tile(tile, x_ptr, w_ptr, b_ptr, r_ptr, wds_ptr, y_ptr, M, N, K, KDS, HO, WO, sxn, sxh, sxw, srn,
                     srh, srw, syn, syh, syw, STRIDE, RES, DS_STRIDE, RELU, IEEE, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_K,
                     R_FIRST, True)  # fmt: skip


def _persistent_fits(configs, named_args, **kwargs):
    """``pw_gemm``'s ``early_config_prune``: a persistent config (``PER_SM`` > 0) only where its one GEMM step
    covers K and there is no downsample GEMM (whose own K loop would keep the tile loop from pipelining)."""
    return [
        c for c in configs
        if not c.kwargs.get("PER_SM") or (named_args["K"] <= c.kwargs["BLOCK_K"] and kwargs.get("RES") != 2)
    ]  # fmt: skip


_GEMM_CONFIGS = [
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4),  # four 16-deep MMA steps per stage
    _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
    _cfg(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3),
]
_GEMM_INTERP = _cfg(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)
pw_gemm = _LazyKernel(
    _pw_gemm, _GEMM_CONFIGS, ["TUNE_SIZE", "N", "K", "KDS", "STRIDE", "RES", "RELU"], _GEMM_INTERP,
    prune=_persistent_fits,
)


# ---------------------------------------------------------------------------------------------------------------
# 1x1 conv as a GEMM whose tiles move by Hopper's tensor memory accelerator (TMA); opt-in (ops.GEMM_TMA) until timed
# ---------------------------------------------------------------------------------------------------------------
def _pw_gemm_tma(
    x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, M, N, K, TUNE_SIZE,
    RES: tl.constexpr, RELU: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PER_SM: tl.constexpr = 0, FLATTEN: tl.constexpr = False,
    GDC: tl.constexpr = False,
):  # fmt: skip
    # :func:`_pw_gemm` at stride 1 without a downsample GEMM (RES 0 none, 1 an identity residual r), for maps stored
    # as dense rows: x [M, K], r and y [M, N] (NHWC, channels contiguous), w [K, N] row-major; bf16/fp16. The tensor
    # descriptors are built on the device (in Triton's global scratch: ops gives Triton an allocator), so the
    # operand and residual tiles arrive as bulk asynchronous copies (rows and columns past the edge read as zero)
    # and the output tile leaves as one (those past the edge are not written): no thread computes an address or
    # holds a loaded tile in registers while it waits. These GEMMs are bound by memory traffic (K = 64-512 against
    # N = 256-2048), which the pointer-based kernel reaches at 1.0-2.5x its floor (H200, 2026-11-27). PER_SM > 0:
    # persistent, at most PER_SM programs per SM, each looping over output tiles; FLATTEN: the tile and K loops as
    # one loop, which Triton's pipeliner prefetches across, the next tile's operands arriving during this tile's
    # epilogue.
    _dependent_launch(GDC)  # first, before any load or store
    a_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[K, N], strides=[N, 1], block_shape=[BLOCK_K, BLOCK_N])
    y_desc = tl.make_tensor_descriptor(y_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    if RES == 1:
        r_desc = tl.make_tensor_descriptor(r_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    num_n = tl.cdiv(N, BLOCK_N)
    num_tiles = tl.cdiv(M, BLOCK_M) * num_n
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=FLATTEN):
        m0 = (tile // num_n) * BLOCK_M
        n0 = (tile % num_n) * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            acc = _mma(a_desc.load([m0, k0]), w_desc.load([k0, n0]), acc, False, DOT_F32)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if RES == 1:
            acc += r_desc.load([m0, n0]).to(tl.float32)
        if RELU:
            acc = tl.maximum(acc, 0.0)
        y_desc.store([m0, n0], acc.to(y_ptr.dtype.element_ty))


_GEMM_TMA_CONFIGS = [
    # One tile per program, few pipeline stages (their shared memory would cap the programs per SM that overlap
    # one another's loads and stores: K is covered in 1-8 steps here).
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=2),
    _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=2),
    _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=2),
    # Persistent, the tile loop flattened into the K loop and pipelined across tiles.
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3, PER_SM=1, FLATTEN=True),
    _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3, PER_SM=2, FLATTEN=True),
    _cfg(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=2, PER_SM=1, FLATTEN=True),
]
#: The interpreter's: persistent, so that the tests run the tile loop (programs = 2 x device_sms, 1 on a CPU).
_GEMM_TMA_INTERP = _cfg(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, PER_SM=2, FLATTEN=True)
pw_gemm_tma = _LazyKernel(_pw_gemm_tma, _GEMM_TMA_CONFIGS, ["TUNE_SIZE", "N", "K", "RES", "RELU"], _GEMM_TMA_INTERP)


# ---------------------------------------------------------------------------------------------------------------
# Chained: a block's second 1x1 (+ bias, shortcut, ReLU) and the next block's first 1x1 (+ bias, ReLU) in one kernel
# ---------------------------------------------------------------------------------------------------------------
def _pw_chain(
    x_ptr, wdw_ptr, bdw_ptr, w_ptr, b_ptr, r_ptr, wds_ptr, y_ptr, w1_ptr, b1_ptr, m_ptr,
    M, N, K, KDS, W1N, H, W, HO, WO,
    sxn, sxh, sxw,
    srn, srh, srw,
    syn, syh, syw,
    smn, smh, smw, TUNE_SIZE,
    RES: tl.constexpr, DS_STRIDE: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr, DW: tl.constexpr,
    STRIDE: tl.constexpr, DIL: tl.constexpr, CHAIN: tl.constexpr, BLOCK_KW: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, RESIDENT: tl.constexpr = False,
    GDC: tl.constexpr = False,
):  # fmt: skip
    # y = relu(a @ w + b + shortcut), a [M, K] = the block's depthwise output, and (CHAIN) m = relu(y @ w1 + b1),
    # the next DSR block's first 1x1 (w1 [N, W1N], W1N <= BLOCK_W), from the same tile. Each program owns BLOCK_M
    # output pixels and all N channels, BLOCK_N at a time; each y chunk is written and, as the values split's next
    # kernel would read back (rounded to y's dtype), multiplied into m's fp32 accumulator at once, so y is read by
    # nobody but the next shortcut.
    #   DW = 0: x is the depthwise output itself [Nb, HO, WO, K], read BLOCK_K channels at a time per chunk of N,
    #   or (RESIDENT, an autotune option where K <= BLOCK_KW) the tile's rows once, held for every chunk.
    #   DW = 1: x is the depthwise conv's input [Nb, H, W, K] (the block's first 1x1 output, K <= BLOCK_KW): the
    #   program computes relu(depthwise3x3(x) + bdw) for its pixels once (wdw [9, K], STRIDE, DIL), keeps it in
    #   registers as the GEMM's A operand for every chunk of N, and the depthwise output is never written.
    # Shortcut: RES 1 identity r [Nb, HO, WO, N], 2 the downsample GEMM of r [Nb, ., ., KDS] read at DS_STRIDE.
    _dependent_launch(GDC)  # first, before any load or store
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    img, ho, wo = _pixels(offs_m, HO, WO)
    if DW:
        offs_k = tl.arange(0, BLOCK_KW)
        k_mask = offs_k < K
        dw = tl.zeros((BLOCK_M, BLOCK_KW), dtype=tl.float32)
        dw = _dw_taps(dw, x_ptr, img * sxn, wdw_ptr, K, 1, ho, wo, m_mask, offs_k, k_mask, H, W, sxh, sxw, 0.0, 0.0,
                      0.0, STRIDE, DIL, False)  # fmt: skip
        dw += tl.load(bdw_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)[None, :]
        a = tl.maximum(dw, 0.0).to(x_ptr.dtype.element_ty)  # columns past K: relu(0 + 0) = 0
    else:
        a_row = x_ptr + img * sxn + ho * sxh + wo * sxw
        if RESIDENT:  # the tile's rows of x (K <= BLOCK_KW) loaded once for every chunk of N
            offs_k = tl.arange(0, BLOCK_KW)
            k_mask = offs_k < K
            a = tl.load(a_row[:, None] + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
    if CHAIN:
        offs_w = tl.arange(0, BLOCK_W)
        w_mask = offs_w < W1N
        acc_m = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if DW or RESIDENT:
            acc = _mma(a, _weight_tile(w_ptr, offs_k, k_mask, offs_n, n_mask, N), acc, IEEE, DOT_F32)
        else:
            acc = _rows_gemm(acc, a_row, m_mask, w_ptr, offs_n, n_mask, N, K, IEEE, DOT_F32, BLOCK_K)
        acc = _block_out(acc, r_ptr, wds_ptr, b_ptr, y_ptr, img, ho, wo, m_mask, offs_n, n_mask, N, KDS, srn, srh,
                         srw, syn, syh, syw, RES, DS_STRIDE, IEEE, DOT_F32, BLOCK_K)  # fmt: skip
        if CHAIN:
            w1 = _weight_tile(w1_ptr, offs_n, n_mask, offs_w, w_mask, W1N)
            acc_m = _mma(acc.to(y_ptr.dtype.element_ty), w1, acc_m, IEEE, DOT_F32)  # columns past N: relu(0) = 0
    if CHAIN:
        acc_m += tl.load(b1_ptr + offs_w, mask=w_mask, other=0.0).to(tl.float32)[None, :]
        acc_m = tl.maximum(acc_m, 0.0)
        _store_tile(m_ptr, acc_m, img, ho, wo, smn, smh, smw, offs_w, m_mask[:, None] & w_mask[None, :])


#: Two fp32 accumulators (the output chunk's and the next 1x1's, BLOCK_M x BLOCK_W), the chunk again as the second
#: GEMM's bf16 operand and, with DW, the depthwise tile (BLOCK_M x BLOCK_KW) held for every chunk. sm_90, bf16
#: (Triton 3.6 and 3.8): the 8-warp configs compile without spilling at every width DSRNet-50 chains (up to 255
#: registers), but for 128 x 64 with a 128-wide depthwise tile; 64 x 64 on 4 warps spills at a 256-wide next 1x1 or
#: a 128-wide depthwise tile; 32-row tiles (Ampere-style MMA) need fewer registers per program (128 at layer1's
#: widths: up to 4 programs per SM, where a program of the 8-warp configs fills one), 32 x 128 spills where 64 x 64
#: does. _chain_fits leaves the spilling ones out. RESIDENT (x's rows of the tile held for every chunk of N instead
#: of re-read from L2 per chunk; no depthwise conv in the kernel): only 64 x 64 on 8 warps neither spills nor
#: overflows shared memory at layer3's widths (K and the next 1x1 256: 223-253 registers, 98-172 KB); K up to 256
#: with the next 1x1 (512 needs 238-270 KB), 512 without it (205 KB).
_CHAIN_CONFIGS = [
    _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=2),
    _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=2),
    _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=2),
    _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=2),
    _cfg(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=2),
    _cfg(BLOCK_M=32, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=2),
    _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=2, RESIDENT=True),
]


def _chain_fits(configs, named_args, **kwargs):
    """``pw_chain``'s ``early_config_prune``: the configs that compiled without spilling for the launch's widths
    (above; 64 x 64 on 8 warps always stays)."""
    wide_dw = bool(kwargs.get("DW")) and kwargs.get("BLOCK_KW", 0) > 64
    wide_next = bool(kwargs.get("CHAIN")) and kwargs.get("BLOCK_W", 0) > 128

    def fits(c) -> bool:
        if c.kwargs.get("RESIDENT"):  # (with the depthwise conv in the kernel it would be a copy of another config)
            most = 256 if kwargs.get("CHAIN") else 512  # shared memory (above)
            return not kwargs.get("DW") and named_args["K"] <= min(kwargs.get("BLOCK_KW", 0), most)
        if c.num_warps >= 8:
            return not wide_dw or c.kwargs["BLOCK_M"] == 64
        return not (wide_dw or wide_next) or c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 32 * 64

    return [c for c in configs if fits(c)]


pw_chain = _LazyKernel(
    _pw_chain, _CHAIN_CONFIGS, ["TUNE_SIZE", "N", "K", "KDS", "W1N", "RES", "DW", "STRIDE", "DIL", "CHAIN"],
    _cfg(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16), prune=_chain_fits,
)


# ---------------------------------------------------------------------------------------------------------------
# Fused: depthwise 3x3 + bias + ReLU -> pointwise 1x1 + bias + shortcut + ReLU
# ---------------------------------------------------------------------------------------------------------------
def _dw_pw(
    x_ptr, wdw_ptr, bdw_ptr, wpw_ptr, b_ptr,
    r_ptr, wds_ptr, y_ptr,
    M, N, K, KDS, H, W, HO, WO,
    sxn, sxh, sxw,
    srn, srh, srw,
    syn, syh, syw, TUNE_SIZE,
    STRIDE: tl.constexpr, DIL: tl.constexpr, SHORTCUT: tl.constexpr, DS_STRIDE: tl.constexpr,
    IEEE: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GDC: tl.constexpr = False,
):  # fmt: skip
    # x: conv1 output [Nb, H, W, K]; wdw: [9, K]; wpw: [K, N]; b: pointwise bias (+ downsample bias, pre-summed).
    # SHORTCUT: 0 none, 1 identity tensor r [Nb, HO, WO, N], 2 downsample GEMM r [Nb, ., ., KDS] read at
    # (ho * DS_STRIDE, wo * DS_STRIDE) times wds [KDS, N], accumulated into the same fp32 tile.
    _dependent_launch(GDC)  # first, before any load or store
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = tl.program_id(0) // num_n
    pid_n = tl.program_id(0) % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    img, ho, wo = _pixels(offs_m, HO, WO)
    x_base = img * sxn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        dw = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        dw = _dw_taps(dw, x_ptr, x_base, wdw_ptr, K, 1, ho, wo, m_mask, offs_k, k_mask, H, W, sxh, sxw, 0.0, 0.0,
                      0.0, STRIDE, DIL, False)  # fmt: skip
        dw += tl.load(bdw_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)[None, :]
        a = tl.maximum(dw, 0.0).to(x_ptr.dtype.element_ty)
        acc = _mma(a, _weight_tile(wpw_ptr, offs_k, k_mask, offs_n, n_mask, N), acc, IEEE, DOT_F32)
    _block_out(acc, r_ptr, wds_ptr, b_ptr, y_ptr, img, ho, wo, m_mask, offs_n, n_mask, N, KDS, srn, srh, srw, syn,
               syh, syw, SHORTCUT, DS_STRIDE, IEEE, DOT_F32, BLOCK_K)  # fmt: skip


# Each program recomputes the depthwise tile of its pixels for its block of output channels, so wide BLOCK_N tiles
# recompute least. Offline sm_90 builds (Triton 3.8) showed 64x256 splitting N over its two warp groups (each
# computing the whole depthwise tile: no saving), and 128x64x64 / 64x128x64 at 4 warps spilling or at the register
# limit; those are gone. num_stages=1: the taps become plain L1-cached loads, so overlapping taps hit L1.
_DWPW_CONFIGS = [
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=2),
    _cfg(BLOCK_M=128, BLOCK_N=256, BLOCK_K=32, num_warps=8, num_stages=2),
    _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=1),
    _cfg(BLOCK_M=128, BLOCK_N=256, BLOCK_K=32, num_warps=8, num_stages=1),
]
dw_pw = _LazyKernel(
    _dw_pw, _DWPW_CONFIGS, ["TUNE_SIZE", "N", "K", "KDS", "HO", "WO", "STRIDE", "DIL", "SHORTCUT"], _GEMM_INTERP
)


def halo_rows(tile_m: int, wo: int, stride: int, dilation: int) -> int:
    """Rows of the depthwise input map (``[N, H1, W1]``, flat) that ``dsr_block``'s stage A computes for one tile of
    ``tile_m`` consecutive output pixels, at most: the tile spans at most ``ceil(tile_m / wo) + 1`` output rows
    (across images too), and those reach ``stride`` input rows each plus ``dilation`` above and below. Sizes a
    program's scratch slot; the kernel and the host compute it alike (``_halo_rows`` is this, jitted)."""
    return ((tile_m + wo - 1) // wo + 1) * stride + 2 * dilation + 1


_halo_rows = _jit_as_triton(halo_rows)


# ---------------------------------------------------------------------------------------------------------------
# A whole DSR block in one persistent kernel: 1x1 + bias + ReLU -> depthwise 3x3 + bias + ReLU -> 1x1 + bias +
# shortcut + ReLU, the two intermediates kept in a per-program scratch slot that stays in L2
# ---------------------------------------------------------------------------------------------------------------
def _dsr_block(
    x_ptr, w1_ptr, b1_ptr, wdw_ptr, bdw_ptr, wpw_ptr, b_ptr, wds_ptr, scratch_ptr, y_ptr,
    M, CIN, K, N, H1, W1, HO, WO,
    sxn, sxh, sxw,
    syn, syh, syw, TUNE_SIZE,
    S1: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, SHORTCUT: tl.constexpr, DS_STRIDE: tl.constexpr,
    IEEE: tl.constexpr, DOT_F32: tl.constexpr, TILE_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, PER_SM: tl.constexpr,
    GDC: tl.constexpr = False,
):  # fmt: skip
    # x: block input [Nb, H, W, CIN]; w1: [CIN, K] (the first 1x1, read at stride S1: its output, the depthwise
    # conv's input, is [Nb, H1, W1, K]); wdw: [9, K]; wpw: [K, N]; b: pointwise bias (+ downsample bias, pre-summed);
    # wds: [CIN, N] (SHORTCUT 2: the downsample, x read at stride DS_STRIDE; 1: x itself is the shortcut, CIN == N).
    # Persistent: program p handles output tiles p, p + P, ... of TILE_M pixels, each in three stages that
    # communicate through the program's own scratch slot (written, then read after a CTA barrier, by other threads
    # of the same program: global memory made visible within the CTA by bar.sync; the slot is reused tile after
    # tile, so it stays in L2 and is rarely written back to DRAM):
    #   A. y1 = relu(x @ w1 + b1) at every depthwise input pixel the tile's taps reach: the flat range [lo, hi) of
    #      the [Nb, H1, W1] map from the first tap row of the tile's first output row to the last tap row of its
    #      last (a halo of DIL rows each side is computed twice, by this tile and its neighbour) -> s1 slot.
    #   B. dw = relu(depthwise3x3(y1) + bdw) of the tile's pixels, taps read from s1 -> s2 slot [TILE_M, K].
    #   C. y = relu(dw @ wpw + b + shortcut), the shortcut GEMM (if any) in the same tile, written once.
    # B and C run over the tile BLOCK_M pixels at a time (the register tile): a TILE_M of several BLOCK_M computes
    # fewer halo rows twice in A (2.3x the first 1x1's work at 128 pixels, 1.4x at 512, for rate 3 on a 32-wide
    # map) at the cost of fewer, larger tiles and scratch slots.
    # The block's input is read from DRAM once (stage A; C's identity/downsample rereads of it hit L2) and its
    # output written once: DSR block traffic at its floor.
    # Scratch slot of a program: [halo_rows(TILE_M) * W1, K] for A's output, then [TILE_M, K] for B's.
    _dependent_launch(GDC)  # first, before any load or store
    pid = tl.program_id(0)
    num_tiles = tl.cdiv(M, TILE_M)
    halo_pixels = _halo_rows(TILE_M, WO, STRIDE, DIL) * W1
    s1 = scratch_ptr + pid * (halo_pixels + TILE_M) * K
    s2 = s1 + halo_pixels * K
    rows = tl.arange(0, BLOCK_M)
    for tile in range(pid, num_tiles, tl.num_programs(0)):
        first = tile * TILE_M
        last = tl.minimum(first + TILE_M, M) - 1
        lo = ((first // (HO * WO)) * H1 + tl.maximum((first % (HO * WO)) // WO * STRIDE - DIL, 0)) * W1
        hi = ((last // (HO * WO)) * H1 + tl.minimum((last % (HO * WO)) // WO * STRIDE + DIL, H1 - 1) + 1) * W1
        # A. the first 1x1 over the tile's depthwise input rows
        for r0 in range(lo, hi, BLOCK_R):
            offs_q = r0 + tl.arange(0, BLOCK_R)
            q_mask = offs_q < hi
            qi, qh, qw = _pixels(offs_q, H1, W1)
            a_row = x_ptr + qi * sxn + (qh * S1) * sxh + (qw * S1) * sxw
            for c0 in range(0, K, BLOCK_N):
                offs_c = c0 + tl.arange(0, BLOCK_N)
                c_mask = offs_c < K
                acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
                acc = _rows_gemm(acc, a_row, q_mask, w1_ptr, offs_c, c_mask, K, CIN, IEEE, DOT_F32, BLOCK_K)
                acc += tl.load(b1_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
                acc = tl.maximum(acc, 0.0)
                s1_ptrs = s1 + (offs_q - lo)[:, None] * K + offs_c[None, :]
                tl.store(s1_ptrs, acc.to(y_ptr.dtype.element_ty), mask=q_mask[:, None] & c_mask[None, :])
        tl.debug_barrier()
        # B. the depthwise 3x3 of the tile's pixels, its taps read from s1 (flat row q - lo)
        for m0 in range(0, TILE_M, BLOCK_M):
            offs_m = first + m0 + rows
            m_mask = offs_m < M
            img, ho, wo = _pixels(offs_m, HO, WO)
            for c0 in range(0, K, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                c_mask = offs_c < K
                dw = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
                dw = _dw_taps(dw, s1, (img * H1 * W1 - lo) * K, wdw_ptr, K, 1, ho, wo, m_mask, offs_c, c_mask, H1,
                              W1, W1 * K, K, 0.0, 0.0, 0.0, STRIDE, DIL, False)  # fmt: skip
                dw += tl.load(bdw_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
                dw = tl.maximum(dw, 0.0)
                tl.store(s2 + (m0 + rows)[:, None] * K + offs_c[None, :], dw.to(y_ptr.dtype.element_ty),
                         mask=m_mask[:, None] & c_mask[None, :])  # fmt: skip
        tl.debug_barrier()
        # C. the second 1x1 + shortcut, one BLOCK_N slice of the output channels at a time
        for m0 in range(0, TILE_M, BLOCK_M):
            offs_m = first + m0 + rows
            m_mask = offs_m < M
            img, ho, wo = _pixels(offs_m, HO, WO)
            for c0 in range(0, N, BLOCK_N):
                offs_n = c0 + tl.arange(0, BLOCK_N)
                n_mask = offs_n < N
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                acc = _rows_gemm(acc, s2 + (m0 + rows) * K, m_mask, wpw_ptr, offs_n, n_mask, N, K, IEEE, DOT_F32,
                                 BLOCK_K)  # fmt: skip
                _block_out(acc, x_ptr, wds_ptr, b_ptr, y_ptr, img, ho, wo, m_mask, offs_n, n_mask, N, CIN, sxn, sxh,
                           sxw, syn, syh, syw, SHORTCUT, DS_STRIDE, IEEE, DOT_F32, BLOCK_K)  # fmt: skip
        # The next tile overwrites s1 only after every thread passed the barrier after B (done reading s1), and s2
        # only after the barrier after its A, which every thread reaches after finishing this C.


# PER_SM: programs per SM of the persistent grid (and scratch slots), as many as its registers let reside at once
# (offline sm_90 builds, Triton 3.6, bf16: 215-244 registers per thread at 128-pixel register tiles, so one 8-warp
# or two 4-warp programs per SM; 152-164 at 64 x 64 x 32 on 4 warps, three per SM; no spills; fp32 spills, speed
# only). Several programs per SM overlap one program's GEMM stages with another's depthwise stage (each program's
# stages are serialised by its barriers). The depthwise stage's nine taps in flight set the register count:
# BLOCK_C 16 vs 32 is 215 vs 244 at 128 x 128, 8 warps. TILE_M 512: fewer halo rows recomputed on the 32-wide maps
# of layer1 (the autotuner weighs that against its 4x fewer tiles), one program per SM: the scratch the programs
# touch must stay in L2 (132 x 155 KB at layer1's 64 channels; three per SM would need 60 MB).
_BLOCK_CONFIGS = [
    _cfg(TILE_M=128, BLOCK_M=128, BLOCK_R=64, BLOCK_N=128, BLOCK_K=64, BLOCK_C=32, PER_SM=1, num_warps=8),
    _cfg(TILE_M=128, BLOCK_M=128, BLOCK_R=64, BLOCK_N=128, BLOCK_K=64, BLOCK_C=16, PER_SM=1, num_warps=8),
    _cfg(TILE_M=128, BLOCK_M=128, BLOCK_R=64, BLOCK_N=64, BLOCK_K=64, BLOCK_C=16, PER_SM=2, num_warps=4),
    _cfg(TILE_M=256, BLOCK_M=256, BLOCK_R=128, BLOCK_N=64, BLOCK_K=64, BLOCK_C=16, PER_SM=1, num_warps=8),
    _cfg(TILE_M=64, BLOCK_M=64, BLOCK_R=64, BLOCK_N=64, BLOCK_K=32, BLOCK_C=16, PER_SM=3, num_warps=4),
    _cfg(TILE_M=512, BLOCK_M=128, BLOCK_R=64, BLOCK_N=128, BLOCK_K=64, BLOCK_C=16, PER_SM=1, num_warps=8),
]
dsr_block = _LazyKernel(
    _dsr_block, _BLOCK_CONFIGS,
    ["TUNE_SIZE", "CIN", "K", "N", "H1", "W1", "HO", "WO", "S1", "STRIDE", "DIL", "SHORTCUT"],
    _cfg(TILE_M=32, BLOCK_M=16, BLOCK_R=16, BLOCK_N=16, BLOCK_K=16, BLOCK_C=16, PER_SM=1),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Direct conv for few input channels (the stem): KxK, any stride and dilation, + bias + ReLU, NHWC output
# ---------------------------------------------------------------------------------------------------------------
def _direct_conv(
    x_ptr, w_ptr, b_ptr, y_ptr,
    P, COUT, H, W, HO, WO,
    sxn, sxc, sxh, sxw,
    syn, syh, syw, TUNE_SIZE,
    CIN: tl.constexpr, KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr,
    RELU: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GDC: tl.constexpr = False,
):  # fmt: skip
    # An implicit GEMM: [pixels, CIN * KSIZE^2 taps] @ [taps, COUT] on the tensor cores, the A tile gathered from x
    # as it is loaded (im2col never written; the taps of a 3-channel stem: 27 or 147, one or five BLOCK_K steps).
    # x: [N, CIN, H, W] at any strides (NCHW or NHWC alike); w: [CIN * KSIZE^2, COUT], row (c * KSIZE + kh) * KSIZE
    # + kw; y: [N, HO, WO, COUT] via pixel strides, channels contiguous. Its cost is writing y once.
    _dependent_launch(GDC)  # first, before any load or store
    TAPS: tl.constexpr = CIN * KSIZE * KSIZE
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    p_mask = offs_p < P
    n_mask = offs_n < COUT
    img, ho, wo = _pixels(offs_p, HO, WO)
    ih0 = ho * STRIDE - PAD
    iw0 = wo * STRIDE - PAD
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, TAPS, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < TAPS
        c = offs_k // (KSIZE * KSIZE)
        kh = (offs_k // KSIZE) % KSIZE
        kw = offs_k % KSIZE
        ih = ih0[:, None] + (kh * DIL)[None, :]
        iw = iw0[:, None] + (kw * DIL)[None, :]
        ok = (p_mask[:, None] & k_mask[None, :]) & ((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
        a = tl.load(x_ptr + (img * sxn)[:, None] + (c * sxc)[None, :] + ih * sxh + iw * sxw, mask=ok, other=0.0)
        acc = _mma(a, _weight_tile(w_ptr, offs_k, k_mask, offs_n, n_mask, COUT), acc, IEEE, DOT_F32)
    acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    _store_tile(y_ptr, acc, img, ho, wo, syn, syh, syw, offs_n, p_mask[:, None] & n_mask[None, :])


_DIRECT_CONFIGS = [
    _cfg(BLOCK_P=128, BLOCK_N=64, BLOCK_K=32),
    _cfg(BLOCK_P=64, BLOCK_N=64, BLOCK_K=32),
    _cfg(BLOCK_P=256, BLOCK_N=64, BLOCK_K=32, num_warps=8),
    _cfg(BLOCK_P=128, BLOCK_N=32, BLOCK_K=32),
]
direct_conv = _LazyKernel(
    _direct_conv, _DIRECT_CONFIGS, ["TUNE_SIZE", "COUT", "HO", "WO", "CIN", "KSIZE", "STRIDE", "DIL"],
    _cfg(BLOCK_P=16, BLOCK_N=16, BLOCK_K=16),
)  # fmt: skip


#: Candidate configs beyond each kernel's own, for a sweep on a GPU (``benchmarks/kernel_shapes.py --sweep``):
#: the 1x1 GEMMs took 82 % of the split form's GPU time and the depthwise kernel 17 % (H200, batch 1024, 32 px,
#: 2026-11-27), at 1.6-3.8x their traffic floor. Each shape's per-config times say which of these earn a place in
#: the lists above (every config costs autotuning time on a first call). Compiled for sm_90 offline (Triton 3.8,
#: ``benchmarks/triton_compile_check.py --sweep``): all compile, none spills but the 256x128 GEMM tile with an
#: identity residual (88 bytes; a 4-warp 128x128 tile spilled there too and was left out, as was a 2-stage
#: 128x256 tile: 176 bytes of stack).
SWEEP_CONFIGS = {
    "pw_gemm": [
        _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
        _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
        _cfg(BLOCK_M=256, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3),
        _cfg(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
        _cfg(BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3),
        _cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=2),
        _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=2),
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=4),
        _cfg(BLOCK_M=256, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=4),
        # Fewer stages: most of these GEMMs' K loops run once or twice (K = 64-512), so pipelining buys little and
        # each stage's shared memory (24-48 KB here) caps the programs per SM that hide the epilogue's traffic.
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=2),
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=1),
        _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=2),
        # The residual's load issued before the K loop (R_FIRST; not timed yet; only kernels with an identity
        # residual differ, so the sweep times the other kernels' copies twice).
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3, R_FIRST=True),
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=2, R_FIRST=True),
        _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3, R_FIRST=True),
        # Persistent (PER_SM; not timed yet): the whole K in one step, tiles looped so that the pipeliner loads the
        # next tile's operands during this tile's epilogue. Only the second 1x1 with its identity residual and the
        # few first 1x1s with K <= BLOCK_K qualify (_persistent_fits): K = 64 (32 px maps), 128 (16 px), 256 (8 px).
        # PER_SM = what the registers allow (sm_90, bf16, identity residual: up to 202 per thread at 4 warps, 184
        # at 8; 64 K per SM), so that every program is resident from the start.
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=2, PER_SM=2),
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3, PER_SM=2),
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=2, PER_SM=2, R_FIRST=True),
        _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=2, PER_SM=1),
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, num_warps=4, num_stages=2, PER_SM=2),
        _cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=2, PER_SM=1),
        _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=256, num_warps=4, num_stages=2, PER_SM=1),
        _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=256, num_warps=8, num_stages=2, PER_SM=1),
    ],
    "dw_fwd": [
        _cfg(BLOCK_P=128, BLOCK_C=64, num_warps=8),
        _cfg(BLOCK_P=256, BLOCK_C=32, num_warps=8),
        _cfg(BLOCK_P=64, BLOCK_C=128, num_warps=8),
        _cfg(BLOCK_P=128, BLOCK_C=32, num_warps=8),
        _cfg(BLOCK_P=32, BLOCK_C=32, num_warps=2),
        _cfg(BLOCK_P=64, BLOCK_C=32, num_warps=2),
        _cfg(BLOCK_P=16, BLOCK_C=128, num_warps=4),
        _cfg(BLOCK_P=256, BLOCK_C=16, num_warps=4),
    ],
}


#: Shared memory one program may use on an H100/H200 (sm_90), bytes: a GEMM config whose pipelined tiles need more
#: cannot launch (Triton's autotuner would compile it, then record an infinite time).
SM90_SHARED_BYTES = 232_448


def fits_shared_memory(config, element_size: int) -> bool:
    """Whether a GEMM config's operand tiles (num_stages x (BLOCK_M + BLOCK_N) x BLOCK_K elements) fit; configs
    without GEMM tiles (the depthwise kernel's) always do."""
    k = config.kwargs
    if "BLOCK_K" not in k:
        return True
    return config.num_stages * (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * element_size <= SM90_SHARED_BYTES


def widen_configs(element_size: int) -> dict[str, dict[str, list]]:
    """The autotuners of :data:`SWEEP_CONFIGS`' kernels get those candidates beside their own (rebuilt on their
    next launch), those whose tiles fit in shared memory at ``element_size`` bytes (in fp32 some of the larger GEMM
    tiles do not): for benchmarks that time them. Returns, per kernel, the ``library`` configs, the ``extra`` ones
    and those ``left_out``; :func:`restore_configs` of it undoes the widening."""
    widened = {}
    for name, extra in SWEEP_CONFIGS.items():
        lazy = globals()[name]
        fit = [c for c in extra if fits_shared_memory(c, element_size)]
        library = lazy.swap_configs([*lazy.configs, *fit])[0]
        widened[name] = {"library": library, "extra": fit, "left_out": [c for c in extra if c not in fit]}
    return widened


def restore_configs(widened: dict[str, dict[str, list]]) -> None:
    """Each kernel :func:`widen_configs` widened back to its library configs (rebuilt on its next launch)."""
    for name, parts in widened.items():
        globals()[name].swap_configs(parts["library"])


def autotune_picks() -> dict[str, list[dict]]:
    """What the autotuner chose so far in this process, per kernel: for each tuning key (the kernel's ``key``
    arguments, then the tensors' dtypes) the config that won, as plain data (for a benchmark's results: the
    block sizes a card prefers, per shape)."""
    picks: dict[str, list[dict]] = {}
    for name in ("dw_fwd", "dw_bwd_input", "dw_bwd_weight", "pw_gemm", "pw_gemm_tma", "pw_chain", "dw_pw", "dsr_block",
                 "direct_conv"):
        lazy = globals()[name]
        tuner = lazy._built.get((False, True))  # compiled kernels, autotuning on
        cache = getattr(tuner, "cache", None) or {}
        picks[name] = [
            {"key": {**{n: str(v) for n, v in zip(lazy.key, k[: len(lazy.key)], strict=True)},
                     "dtypes": [str(v) for v in k[len(lazy.key):]]},
             "config": {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}}
            for k, c in cache.items()
        ]  # fmt: skip
    return picks
