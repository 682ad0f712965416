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


_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def all_reduce(tensor: torch.Tensor, device: torch.device, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over ranks with ``op`` in {"sum", "min", "max"}, returned on its own device
    (the input itself, reduced in place, when it is on ``device`` already: use the returned tensor).

    The reduction runs on ``device``, the module's: NCCL only takes tensors on the rank's GPU, while rollouts
    and their statistics live on the CPU (gloo, which accepts either, would hide the mismatch). Every
    collective of lit-reason goes through this module for that reason.
    """
    if not is_distributed():
        return tensor
    on_device = tensor.to(device)
    dist.all_reduce(on_device, op=_OPS[op])
    return on_device.to(tensor.device)


def reduce_int(value: int, op: str, device: torch.device) -> int:
    """``value`` reduced over ranks with ``op`` in {"sum", "min", "max"} (communicated on ``device``)."""
    return int(all_reduce(torch.tensor([value], dtype=torch.long), device, op).item())


def gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order, on every rank (for small, picklable items)."""
    if not is_distributed():
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
