"""Collectives: every one goes through lit_reason.distributed, on the device it is given (the module's); a
rank's failure stops every rank."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing import ProcessExitedException

from lit_reason.distributed import StopAllRanksOnFailure
from tests.helpers.distributed import run_in_processes

PACKAGE = Path(__file__).resolve().parents[1] / "lit_reason"
COLLECTIVES = {
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "all_gather_into_tensor",
    "all_to_all",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
}
# lit_reason's wrappers of tensor collectives, with the position of their ``device`` argument.
DEVICE_ARGUMENT = {
    "all_reduce": 1,
    "reduce_int": 2,
    "token_mean_over_ranks": 2,
    "global_mean_var": 2,
    "whiten": 3,
    "explained_variance": 3,
}


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else None
            yield name, owner, node


def test_tensor_collectives_run_on_the_device_they_are_given():
    """NCCL only takes tensors on the rank's GPU and gloo takes any, so the 2-process CPU tests cannot see a
    collective on a CPU tensor: this checks the code instead. No module calls torch.distributed's collectives
    directly, and every call of lit-reason's tensor collectives outside their own module names the device."""
    direct, deviceless = [], []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "distributed.py":
            continue
        for name, owner, node in calls(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if name in COLLECTIVES and owner in {"dist", "torch.distributed"}:
                direct.append(where)
            positional = name in DEVICE_ARGUMENT and len(node.args) > DEVICE_ARGUMENT[name]
            if name in DEVICE_ARGUMENT and not positional and all(k.arg != "device" for k in node.keywords):
                deviceless.append(f"{where} {name}")
    assert not direct, f"call torch.distributed through lit_reason.distributed: {direct}"
    assert not deviceless, f"give the module's device: {deviceless}"


def _one_rank_fails_while_the_other_waits(rank: int, world_size: int) -> str:
    watcher = StopAllRanksOnFailure(poll_seconds=0.1, grace_seconds=0.1)
    watcher.start()
    dist.barrier()
    if rank == 1:
        try:
            raise ValueError("question 7 is longer than the context")
        except ValueError as error:
            watcher.report(error)
        return "reported"
    time.sleep(60)  # stands for a collective that rank 1 never joins (NCCL waits there for its timeout)
    return "still waiting"


@pytest.mark.slow
def test_a_rank_waiting_for_a_failed_one_stops_within_seconds_naming_it(capfd):
    started = time.monotonic()
    with pytest.raises(ProcessExitedException, match="process 0 terminated with exit code 1"):
        run_in_processes(_one_rank_fails_while_the_other_waits, timeout=50)
    assert time.monotonic() - started < 30
    errors = capfd.readouterr().err
    assert "[lit-reason] rank 1 of 2 failed: ValueError: question 7 is longer than the context" in errors
    assert "[lit-reason] rank 0 stops because rank 1 of 2 failed: ValueError" in errors
    # Its traceback too, printed as it reports: a peer may end the job before the failing rank's own exit (the
    # launcher kills the rest), which lost it.
    assert 'in _one_rank_fails_while_the_other_waits\n    raise ValueError("question 7' in errors


def _token_mean_on_rank(rank: int, world_size: int) -> float:
    from lit_reason.distributed import token_mean_over_ranks

    total, count = [(3.0, 1), (10.0, 9)][rank]
    return token_mean_over_ranks(torch.tensor(total), torch.tensor(count), torch.device("cpu")).item()


def test_a_token_mean_weighs_every_rank_s_tokens_the_same():
    """Rank 0 holds 1 token of loss 3, rank 1 9 tokens of loss 10 in all: the average of the ranks' losses
    (what DDP's gradient averaging takes) is the mean over the 10 tokens, 13 / 10, not (3 + 10 / 9) / 2."""
    losses = run_in_processes(_token_mean_on_rank, timeout=60)
    assert losses == [pytest.approx(3 * 2 / 10), pytest.approx(10 * 2 / 10)]
    assert sum(losses) / 2 == pytest.approx(13 / 10)


def test_fsdp2_shards_a_value_model_block_by_block():
    # Only the top module's _no_split_modules was read: a value model (the ORM, PPO's separate critic) lists none,
    # so its whole trunk was one unit, gathered whole on every rank for every forward.
    from lit_reason.distributed import transformer_blocks
    from lit_reason.policy import PolicySpec, build_char_tokenizer, load_model
    from lit_reason.value_model import ValueModel

    trunk = load_model(PolicySpec(name_or_path="micro"), build_char_tokenizer())
    layers = list(trunk.model.layers)
    assert transformer_blocks(trunk) == layers and transformer_blocks(ValueModel(trunk)) == layers
