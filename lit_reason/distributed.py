"""Small collectives that are no-ops in a single process."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def reduce_int(value: int, op: str, device: torch.device) -> int:
    """``value`` reduced over ranks with ``op`` in {"sum", "min", "max"}."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], device=device, dtype=torch.long)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return int(tensor.item())


def gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order, on every rank (for small, picklable items)."""
    if not is_distributed():
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
