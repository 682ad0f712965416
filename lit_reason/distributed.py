"""Every collective of lit-reason, each a no-op in a single process, and the FSDP2 sharding and gathering of
model weights."""

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


def shard_model(model: torch.nn.Module, mesh) -> None:
    """FSDP2: shard each transformer block (the classes a HF model lists in ``_no_split_modules``), then the
    whole model."""
    from torch.distributed.fsdp import fully_shard

    block_names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state on CPU, gathering FSDP2 shards (a collective: call on every rank)."""
    from torch.distributed.tensor import DTensor

    if is_distributed() and any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole (unsharded) state into ``model``, sharded by FSDP2 or not (call on every rank)."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state)
