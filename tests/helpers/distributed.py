"""Run a function in 2 CPU processes (gloo) with a deadline, so a deadlock fails the test instead of hanging."""

from __future__ import annotations

import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn, args, results) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results[rank] = ("ok", fn(rank, world_size, *args))
    except BaseException:  # report, then let the process fail
        results[rank] = ("error", traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_in_processes(fn, *args, world_size: int = 2, timeout: float = 120.0) -> list:
    """``fn(rank, world_size, *args)`` on every rank; returns their results in rank order."""
    manager = mp.Manager()
    results = manager.dict()
    context = mp.start_processes(
        _worker, args=(world_size, free_port(), fn, args, results), nprocs=world_size, join=False, start_method="spawn"
    )
    try:
        import time

        deadline = time.monotonic() + timeout
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"processes still running after {timeout:.0f}s: a deadlock?")
    except BaseException:
        for process in context.processes:
            if process.is_alive():
                process.kill()
        errors = [value for status, value in results.values() if status == "error"]
        if errors:
            raise RuntimeError("\n".join(errors)) from None
        raise
    return [results[rank][1] for rank in range(world_size)]
