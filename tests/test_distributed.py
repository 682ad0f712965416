"""Collectives: every one goes through lit_reason.distributed, on the device it is given (the module's)."""

from __future__ import annotations

import ast
from pathlib import Path

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
DEVICE_ARGUMENT = {"all_reduce": 1, "reduce_int": 2, "global_mean_var": 2, "whiten": 3, "explained_variance": 3}


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
