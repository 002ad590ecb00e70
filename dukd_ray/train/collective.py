"""The two collectives the loop needs, working unchanged on one worker (no process group)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; `[value]` on a single worker."""
    _, world = rank_and_world()
    if world == 1:
        return [value]
    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return values
