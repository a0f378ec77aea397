"""``torch.distributed`` for ``torchrun``: rank, world size, and the few collectives the run needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..errors import ExitCode, GuidedBackpropError, exit_code


class PeerFailed(GuidedBackpropError):
    """Another ``torchrun`` process of the run failed and printed why; this one stops quietly."""

    quiet = True

    def __init__(self, message: str, exit_code: int = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # the failed process's


class TorchrunEnv(NamedTuple):
    """What ``torchrun`` tells each process through the environment (1 process without it)."""

    world: int
    rank: int
    local_rank: int
    local_world: int


def torchrun_env() -> TorchrunEnv:
    """``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``: the one place they are read."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return TorchrunEnv(world, int(os.environ.get("RANK", "0") or 0), int(os.environ.get("LOCAL_RANK", "0") or 0),
                       int(os.environ.get("LOCAL_WORLD_SIZE", world) or world))


class Dist:
    """The process group of a ``torchrun`` job; collectives are no-ops for one process."""

    def __init__(self, device: torch.device, env: TorchrunEnv) -> None:
        self.world = env.world
        self.rank = env.rank
        self.local_rank = env.local_rank
        self.owned = False
        self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_available():
                raise GuidedBackpropError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
            if not dist.is_initialized():
                # NCCL needs one GPU per process; more processes than GPUs on a node fall back to gloo.
                per_node = env.local_world
                gpus = torch.cuda.device_count() if device.type == "cuda" else 0
                backend = "nccl" if gpus >= per_node and dist.is_nccl_available() else "gloo"
                dist.init_process_group(backend=backend)
                self.owned = True
            if dist.get_backend() == "nccl":
                self.device = device
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def sum(self, values: Sequence[float]) -> list[float]:
        if self.world == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def agree(self, error: BaseException | None) -> None:
        """Every rank calls this; if any rank had an error, every rank raises.

        The lowest failing rank raises its own error (the CLI prints it); the others raise a quiet
        :class:`PeerFailed`, so a message is printed once, not once per process.
        """
        if self.world == 1:
            if error is not None:
                raise error
            return
        import torch.distributed as dist

        flags = torch.zeros(self.world, dtype=torch.int64, device=self.device)
        flags[self.rank] = 0 if error is None else exit_code(error)
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        failed = [(r, int(c)) for r, c in enumerate(flags.tolist()) if c]
        if not failed:
            return
        first, code = failed[0]
        if first == self.rank and error is not None:
            raise error
        raise PeerFailed(f"process {first} of this run failed (see its message)", code)

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
