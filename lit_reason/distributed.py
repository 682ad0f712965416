"""Every collective of lit-reason, each a no-op in a single process, the FSDP2 sharding and gathering of
model weights, and stopping every rank when one fails."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn

T = TypeVar("T")


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


def token_mean_over_ranks(total: torch.Tensor, count: torch.Tensor, device: torch.device) -> torch.Tensor:
    """This rank's summed per-token loss ``total`` (scalar) over the ``count`` (scalar) tokens of every rank,
    times the world size: the loss whose gradient, averaged over ranks as DDP and FSDP do, is that of the
    mean over all ranks' tokens (a per-rank mean would weigh the tokens of a rank that holds fewer more).
    One process: ``total / count``. (Communicated on ``device``.)"""
    tokens = all_reduce(count.detach().clone(), device)
    return total * rank_and_world_size()[1] / tokens.clamp(min=1)


def reduce_int(value: int, op: str, device: torch.device) -> int:
    """``value`` reduced over ranks with ``op`` in {"sum", "min", "max"} (communicated on ``device``)."""
    return int(all_reduce(torch.tensor([value], dtype=torch.long), device, op).item())


def gather_to_rank_zero(item: Any) -> list[Any]:
    """Every rank's ``item`` in rank order on rank 0, which writes checkpoints; [] on the others (a collective:
    every rank calls it, e.g. from a checkpoint hook). ``this_ranks_share`` picks a rank's item back out."""
    if not is_distributed():
        return [item]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(item, gathered, dst=0)
    return gathered or []


def equal_share(items: list[T], what: str) -> list[T]:
    """This rank's share of ``items`` (rank r takes items r, r + W, ...), as long on every rank: the last
    ``len(items) % W`` are left out, with a warning naming ``what`` they are; fewer items than ranks is an error."""
    rank, world_size = rank_and_world_size()
    if len(items) < world_size:
        raise ValueError(f"{what}: {len(items)}, fewer than the {world_size} ranks, which each need a share")
    if len(items) % world_size:
        rank_zero_warn(
            f"{what}: the last {len(items) % world_size} of {len(items)} are left out, so that each of the "
            f"{world_size} ranks gets as many"
        )
    return items[: len(items) - len(items) % world_size][rank::world_size]


def this_ranks_share(by_rank: list[Any], what: str) -> Any:
    """This rank's item of what ``gather_to_rank_zero`` gathered when a checkpoint was saved; an error naming
    ``what`` where the run has another number of ranks (each rank's share is its own)."""
    rank, world_size = rank_and_world_size()
    if len(by_rank) != world_size:
        raise ValueError(
            f"the checkpoint holds {what} of {len(by_rank)} ranks, each its own: resume it on {len(by_rank)} ranks "
            f"(this run has {world_size})"
        )
    return by_rank[rank]


def gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order, on every rank (for small, picklable items)."""
    if not is_distributed():
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def shard_model(model: torch.nn.Module, mesh) -> None:
    """FSDP2: shard each transformer block (``transformer_blocks``), then the whole model."""
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of the classes that any HF model within ``model`` lists in ``_no_split_modules`` (its decoder
    layers): a value model's trunk's too, whose own class lists none."""
    names = {name for module in model.modules() for name in getattr(module, "_no_split_modules", None) or []}
    return [module for module in model.modules() if type(module).__name__ in names]


def shard_models(models: list[torch.nn.Module], device_mesh) -> None:
    """FSDP2 (``shard_model``) of each of ``models`` over the data-parallel dimension of ``device_mesh`` (the
    whole mesh when it names none). A tensor-parallel dimension of more than one rank is refused: lit-reason
    applies no tensor parallelism, so the ranks along it would each train their own copy, never synchronised."""
    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"ModelParallelStrategy's tensor_parallel_size is {device_mesh['tensor_parallel'].size()} (its default, "
            "'auto', is the devices of a node), but lit-reason shards its models over data parallelism only (FSDP2) "
            "and each rank would train a copy of its own: pass --trainer.strategy.tensor_parallel_size=1 and "
            "--trainer.strategy.data_parallel_size=<the number of processes>"
        )
    mesh = device_mesh["data_parallel"] if "data_parallel" in names else device_mesh
    for model in models:
        shard_model(model, mesh)


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


FAILURE_KEY = "lit_reason/failure"


class StopAllRanksOnFailure:
    """When one rank fails, stop every rank at once, each saying which rank failed and why.

    A rank that raises leaves the others in their next collective: with NCCL they wait there until the
    process group's timeout (minutes), and the message a user reads last is a peer's timeout or "connection
    closed". ``report`` (on the failing rank) writes the failure into the process group's key-value store and
    waits ``3 * poll_seconds`` before its exception ends the process; every other rank watches the store from
    a thread and exits ``grace_seconds`` after the failure appears. The failing rank prints its traceback as it
    reports, and usually exits first, so that a launcher (torchrun, Lightning's) names it as the first failure
    (not where its teardown outlasts the grace: moving a large model's optimizer state off the GPU).

    Not covered: a rank that fails before ``start`` (before the Lightning hooks' ``setup``), and one that dies
    without raising (SIGKILL, out of memory); launchers and the process group's timeout handle those.
    """

    def __init__(self, poll_seconds: float = 0.5, grace_seconds: float = 5.0) -> None:
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self._stopped: threading.Event | None = None  # one per start: a stopped watcher never wakes again
        self._peer_failure: str | None = None

    def start(self) -> None:
        """Watch for another rank's failure (in a multi-process run; call once the process group exists)."""
        if not is_distributed() or self._stopped is not None:
            return
        # The watcher's own connection: a store client is not shared across threads.
        store = dist.distributed_c10d._get_default_store().clone()
        self._stopped = threading.Event()
        threading.Thread(target=self._watch, args=(store, self._stopped), name="stop-all-ranks", daemon=True).start()

    def stop(self) -> None:
        """Stop watching (before a normal exit: ranks that finish early take the store with them)."""
        if self._stopped is not None:
            self._stopped.set()
            self._stopped = None

    def report(self, exception: BaseException) -> None:
        """On the failing rank: tell every rank, then give their watchers time to read it (the store may live
        in this process and end with it)."""
        if self._stopped is None or self._peer_failure is not None:
            return  # not watching (single process), or this follows another rank's failure, reported already
        self.stop()
        rank, world_size = rank_and_world_size()
        message = f"rank {rank} of {world_size} failed: {type(exception).__name__}: {exception}"[:2000]
        try:  # the first failure is the cause; a later one (a peer's "connection closed") is its consequence
            first = dist.distributed_c10d._get_default_store().compare_set(FAILURE_KEY, "", message).decode()
        except Exception:  # noqa: BLE001 - the store is gone: its host died without raising, and is the cause
            return
        if first == message:
            # The traceback now: a peer may end the job before this rank's exception does (a launcher then stops
            # the rest), as when tearing down a large model outlasts the peers' grace.
            cause = "".join(traceback.format_exception(exception))
            print(f"[lit-reason] {message}; stopping every rank\n{cause}", file=sys.stderr, flush=True)
            time.sleep(3 * self.poll_seconds)

    def _watch(self, store, stopped: threading.Event) -> None:
        rank = rank_and_world_size()[0]
        while not stopped.wait(self.poll_seconds):
            try:
                if not store.check([FAILURE_KEY]):
                    continue
                message = store.get(FAILURE_KEY).decode()
            except Exception:  # noqa: BLE001 - the store's process ended (a normal end, or a crash Lightning sees)
                return
            if stopped.is_set():
                return
            self._peer_failure = message
            print(f"[lit-reason] rank {rank} stops because {message}", file=sys.stderr, flush=True)
            time.sleep(self.grace_seconds)  # the failing rank exits first, with its traceback
            os._exit(1)
