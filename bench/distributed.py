"""torchrun support: ranks share image encoding (one cache shard each in turn); rank 0 does the rest.

`torchrun --nproc-per-node N -m bench run ...` sets WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR; nothing here
does anything when WORLD_SIZE is unset or 1, so the single-process path is unchanged. Shards are exchanged
through the feature cache directory, which must therefore be shared by all ranks (one node: always;
several nodes: a shared filesystem).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def owns(self, shard: int) -> bool:
        """Shard s is encoded by rank s % world: disjoint, and balanced to within one shard."""
        return shard % self.world == self.rank

    def share(self, n: int, shard_size: int) -> int:
        """How many of an entry's n images (in shards of shard_size) this rank encodes."""
        return sum(min(n, (s + 1) * shard_size) - s * shard_size
                   for s in range(-(-n // shard_size)) if self.owns(s))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True unless this is a non-zero torchrun rank (readable before and after the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def current() -> Dist:
    """This process's rank and world size (single process when no process group is initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Dist()


def rank_device(device: str) -> str:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK); other settings are left alone."""
    if env_world() > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextmanager
def process_group(device: str):
    """Initialise torch.distributed from the torchrun environment for the duration of a run (gloo on CPU,
    nccl on GPU); a no-op in a single process or when the caller already initialised a group."""
    if env_world() <= 1 or torch.distributed.is_initialized():
        yield current()
        return
    backend = "nccl" if rank_device(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend)
    try:
        yield current()
    finally:
        torch.distributed.destroy_process_group()
