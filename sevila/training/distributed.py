"""Joining a `torchrun` process group (DDP; gloo on CPU, nccl on CUDA), for the training loop
(sevila.training.loop)."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    owns_group: bool  # this call initialised the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistEnv:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(0, 1, 0, False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        owns = True
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, owns)


@contextlib.contextmanager
def distributed() -> Iterator[DistEnv]:
    """The process group for the block: joined on entry (when WORLD_SIZE > 1), left on exit if this joined it."""
    env = setup_distributed()
    try:
        yield env
    finally:
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()
