"""A worker of :func:`dsrnet.kernels._triton.precompiling`: compiles serialized kernel specializations into Triton's
on-disk cache, where the parent process's own compilation of the same kernels then finds them.

    python -m dsrnet.kernels._precompile_worker < jobs.json > report.json

``jobs.json``: ``{"target": {"backend": "cuda", "arch": 90, "warp_size": 32}, "specs": [[module, qualname,
specialization_data], ...]}`` as Triton's ``jit_cache_hook`` reports them; the report: ``{"done": [indices of the specs
compiled], "errors": [...]}``. The worker never touches a GPU: Triton is given a stand-in driver that only names the parent's target,
which is all that compiling needs (``JITFunction.preload``), so sixteen of them cost no GPU memory and no CUDA start.
"""

from __future__ import annotations

import importlib
import json
import sys


class OfflineDriver:
    """The few driver calls compiling makes (Triton 3.6-3.8): the target, and device 0 as the cache's index."""

    def __init__(self, target) -> None:
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0


def compile_specs(jobs: dict) -> dict:
    """Compile every spec of ``jobs`` (see the module docstring); one failure does not stop the others."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    driver.set_active(OfflineDriver(GPUTarget(**jobs["target"])))
    kernels: dict[tuple[str, str], object] = {}
    done, errors = [], []
    for i, (module, name, spec) in enumerate(jobs["specs"]):
        try:
            if (module, name) not in kernels:  # a fresh jit of the same source: the same cache key as the parent's
                kernels[module, name] = triton.jit(getattr(importlib.import_module(module), name))
            kernels[module, name].preload(spec)
            done.append(i)
        except Exception as err:  # reported to the parent, whose own launch then compiles (and reports) it
            errors.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
    return {"done": done, "errors": errors}


def main() -> int:
    json.dump(compile_specs(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
