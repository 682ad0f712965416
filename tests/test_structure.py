"""The package's shape: which module may import which (the layering the README's development section
describes), no import cycle, short functions, no function defined twice, and the size limits of the base
class and the algorithm files."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lit_reason"

# Lowest first. A module may import modules of its own layer or of lower ones, never of a higher one.
LAYERS = {
    "foundation": [
        "version", "seeds", "files", "tensors", "statistics", "distributed", "schedule", "conditioning", "batches",
        "metrics", "model_card", "run_logs", "hyperparameters", "warm_start", "tasks", "tasks.answers", "tasks.base",
        "tasks.arithmetic", "tasks.gsm8k", "tasks.records", "tasks.jsonl", "tasks.dataset", "tasks.svamp",
    ],
    "models and sampling": [
        "cached_forward", "static_decoding", "sampling", "adapters", "policy", "value_model", "rewards", "rl",
        "rl.advantages", "rl.losses",
    ],
    "training plumbing": ["data", "evaluation", "callbacks"],
    "algorithms": [
        "algorithms.base", "algorithms.sft", "algorithms.expert_iteration", "algorithms.rcrl", "algorithms.orm",
        "algorithms.policy_gradient", "algorithms.ppo", "algorithms.grpo", "algorithms",
    ],
    "study": ["study.spec", "study.runner", "study.results", "study.claims", "study.report", "study"],
    "entry points": ["cli", "", "__main__"],
}  # fmt: skip
LAYER_OF = {module: index for index, modules in enumerate(LAYERS.values()) for module in modules}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(tree: ast.Module) -> set[str]:
    """The lit_reason modules a module imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lit_reason":
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "lit_reason"]
        found.update(name.removeprefix("lit_reason").removeprefix(".") for name in names)
    return found


def test_every_module_has_a_layer():
    assert set(package_modules()) == set(LAYER_OF), "place new modules in LAYERS (and the README's layering)"


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{name} ({list(LAYERS)[LAYER_OF[name]]}) imports {imported} ({list(LAYERS)[LAYER_OF[imported]]})"
        for name, tree in package_modules().items()
        for imported in imported_modules(tree)
        if LAYER_OF[imported] > LAYER_OF[name]
    ]
    assert not upward, upward


def test_the_import_graph_has_no_cycle():
    graph = {name: imported_modules(tree) - {name} for name, tree in package_modules().items()}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join([*path, name])
        state[name] = "open"
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_functions_are_short_and_defined_once():
    long, top_level = [], Counter()
    for name, tree in package_modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{name}.{node.name}: {length} lines")
        top_level.update(
            node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
        )
    assert not long, long
    assert not [f for f, count in top_level.items() if count > 1], "a function defined in two modules"


def test_the_base_class_and_algorithm_files_stay_small():
    lines = {path.name: len(path.read_text().splitlines()) for path in (PACKAGE / "algorithms").glob("*.py")}
    assert lines["base.py"] < 300, lines
    assert max(lines.values()) <= 450, lines
