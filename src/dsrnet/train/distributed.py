"""DistributedDataParallel plumbing for ``torchrun --nproc_per_node N -m dsrnet train``.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without it this is a world of one and every call is
a no-op, so the training loop has a single code path. The backend is nccl on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn

from dsrnet.errors import DsrnetError


class DistContext:
    """This process's place in a torchrun job (world size 1 without one)."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._owns_group = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun, else the current GPU's index
        (``torch.cuda.set_device`` and DDP's ``device_ids`` need an explicit index)."""
        if device.type != "cuda":
            return device
        if self.enabled:
            return torch.device("cuda", self.local_rank)
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())

    def setup(self, device: torch.device) -> None:
        """Join the process group (unless there is none to join, or the caller already did)."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        self._owns_group = True

    def teardown(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    @contextlib.contextmanager
    def _collective(self):
        """A collective that fails because another process of the job stopped (rank 0 alone reads the data first
        and holds the run folder's lock, so its one-line error comes first) is this process's one line too, not
        a backend traceback."""
        try:
            yield
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise DsrnetError(
                f"process {self.rank} of {self.world_size}: another process of this job stopped ({first}); fix: see "
                f"that process's own error (rank 0's, for a setup step)"
            ) from None

    def barrier(self) -> None:
        if self.enabled:
            with self._collective():
                dist.barrier()

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place sum (or max) over all ranks; returns ``t``."""
        if self.enabled:
            with self._collective():
                dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank: DDP broadcasts them at the
        start of each forward, so after the last step each rank's differ by its own last update."""
        if self.enabled:
            with self._collective():
                for buf in model.buffers():
                    dist.broadcast(buf, 0)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
