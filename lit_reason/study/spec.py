"""A study's declaration: the shared warm start and ORM, the grid of runs, the seeds and the claims to test.

A study file is YAML (``configs/study/paper.yaml`` is the paper's study)::

    name: paper                      # results go to <output_dir>/<name>/
    output_dir: study
    seeds: [0, 1, 2]                 # every run, once per seed
    shared_seed: 0                   # the warm start's, the ORM's and their evaluation's seed
    common_args: [--data.validation_questions=500]   # given to every lit-reason command
    warm_start: {config: configs/study/sft.yaml}    # add from_study: paper to reuse study paper's
    orm: {config: configs/orm.yaml, args: [...]}
    runs:
      - {name: ei, algorithm: Expert Iteration, reward: sparse, family: rl, config: configs/ei.yaml, args: [...]}
    claims: {expert_iteration: ei, ppo: ppo_sparse, more_sft: sft_more, ...}
    equivalence_margin: 0.02

Every error names the file and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from lit_reason.files import UniqueKeyLoader
from lit_reason.warm_start import locate_config

Family = Literal["rl", "sft"]
# The steps every study runs besides its rows (``runner``): no row may take one's name, and so its directory.
SHARED_STEPS = frozenset({"warm_start", "orm", "warm_start_eval"})
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class StageSpec:
    """A training run of the study's shared models (the warm start or the ORM).

    Args:
        config: the ``lit-reason fit`` config.
        args: extra command-line arguments for it.
        from_study: the name of another study (in the same ``output_dir``) whose finished run of this stage
            is reused instead of training one: studies that share it compare runs from the same start.
    """

    config: str
    args: tuple[str, ...] = ()
    from_study: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """One row of the study: a config started from the study's warm start, run once per seed.

    Args:
        name: the run's directory name and its name in ``claims``.
        algorithm: what the table calls it, e.g. ``Expert Iteration``.
        reward: what the table shows as its reward, e.g. ``sparse``, ``ORM dense``.
        family: ``rl`` (compared with the other RL rows) or ``sft`` (more supervised fine-tuning).
        config: the ``lit-reason fit`` config.
        args: extra command-line arguments, e.g. the rounds that give it the study's sample budget.
    """

    name: str
    algorithm: str
    reward: str
    family: Family
    config: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClaimRoles:
    """Which runs play which part in the paper's claims (a claim whose runs are missing is not tested).

    Args:
        expert_iteration: the Expert Iteration run.
        ppo: the PPO run with the sparse (correctness) reward.
        more_sft: the run that continues SFT from the warm start.
        dense_rewards: PPO runs with dense rewards (compared with ``ppo``).
        hot_expert_iteration: Expert Iteration with a higher rollout temperature.
    """

    expert_iteration: str | None = None
    ppo: str | None = None
    more_sft: str | None = None
    dense_rewards: tuple[str, ...] = ()
    hot_expert_iteration: str | None = None


@dataclass(frozen=True)
class StudySpec:
    """A declared study (see the module docstring for the file format)."""

    name: str
    source: Path
    output_dir: Path
    seeds: tuple[int, ...]
    warm_start: StageSpec
    runs: tuple[RunSpec, ...]
    orm: StageSpec | None = None
    shared_seed: int = 0
    common_args: tuple[str, ...] = ()
    claims: ClaimRoles = ClaimRoles()
    equivalence_margin: float = 0.02

    @property
    def directory(self) -> Path:
        """Where the study's runs and results live."""
        return self.output_dir / self.name


def load_study(path: str | Path) -> StudySpec:
    """Read and check a study file; errors name the file and the field."""
    located = locate_config(str(path))
    if located is None:
        raise FileNotFoundError(f"study file {path} does not exist (nor a packaged study of that name)")
    path = located
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a YAML file ({error})") from None
    where = _Where(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study file is a mapping of options, got {type(raw).__name__}")
    allowed = {f.name for f in fields(StudySpec)} - {"source"}
    where.no_unknown(raw, allowed, "")
    runs = tuple(_run(where, item, f"runs[{i}]") for i, item in enumerate(where.required(raw, "runs", list)))
    if not runs:
        raise ValueError(f"{path}: runs: declare at least one run (a study compares runs with its warm start)")
    names = [run.name.casefold() for run in runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"{path}: runs: names must be unique (ignoring case: case-insensitive filesystems would give them one "
            f"directory), got {duplicates} twice"
        )
    seeds = tuple(where.seed(seed, f"seeds[{i}]") for i, seed in enumerate(where.required(raw, "seeds", list)))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{path}: seeds: give at least one seed, each once; got {list(seeds)}")
    name = where.name(where.required(raw, "name", str), "name")
    for stage in ("warm_start", "orm"):
        if isinstance(raw.get(stage), dict) and raw[stage].get("from_study") == name:
            raise ValueError(f"{path}: {stage}.from_study: names this study ({name}); name another or leave it out")
    return StudySpec(
        name=name,
        source=path,
        output_dir=Path(where.text(raw.get("output_dir", "study"), "output_dir")),
        seeds=seeds,
        warm_start=_stage(where, where.required(raw, "warm_start", dict), "warm_start"),
        runs=runs,
        orm=_stage(where, raw["orm"], "orm") if raw.get("orm") is not None else None,
        shared_seed=where.seed(raw.get("shared_seed", 0), "shared_seed"),
        common_args=where.strings(raw.get("common_args", []), "common_args"),
        claims=_claims(where, raw.get("claims") or {}, {run.name: run.family for run in runs}),
        equivalence_margin=float(where.number(raw.get("equivalence_margin", 0.02), "equivalence_margin")),
    )


def _stage(where: _Where, raw: Any, field_name: str) -> StageSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"{where.path}: {field_name}: expected a mapping with config (and args)")
    where.no_unknown(raw, {"config", "args", "from_study"}, field_name)
    from_study = raw.get("from_study")
    if from_study is not None:
        from_study = where.name(where.required(raw, "from_study", str, field_name), f"{field_name}.from_study")
    return StageSpec(
        config=where.config(where.required(raw, "config", str, field_name), f"{field_name}.config"),
        args=where.strings(raw.get("args", []), f"{field_name}.args"),
        from_study=from_study,
    )


def _run(where: _Where, raw: Any, field_name: str) -> RunSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"{where.path}: {field_name}: expected a mapping (name, algorithm, reward, family, config)")
    where.no_unknown(raw, {f.name for f in fields(RunSpec)}, field_name)
    name = where.name(where.required(raw, "name", str, field_name), f"{field_name}.name")
    if name.casefold() in SHARED_STEPS:  # the row would share the step's directory (letter case aside: macOS)
        raise ValueError(
            f"{where.path}: {field_name}.name: {name} is the study's own step of that name (its steps: "
            f"{', '.join(sorted(SHARED_STEPS))}); rename the run"
        )
    family = where.required(raw, "family", str, field_name)
    if family not in ("rl", "sft"):
        raise ValueError(f"{where.path}: {field_name}.family: expected rl or sft, got {family!r}")
    return RunSpec(
        name=name,
        algorithm=where.required(raw, "algorithm", str, field_name),
        reward=str(raw.get("reward", "-")),
        family=family,
        config=where.config(where.required(raw, "config", str, field_name), f"{field_name}.config"),
        args=where.strings(raw.get("args", []), f"{field_name}.args"),
    )


# The family each claim role's runs must be of.
ROLE_FAMILIES = {
    "expert_iteration": "rl",
    "ppo": "rl",
    "more_sft": "sft",
    "dense_rewards": "rl",
    "hot_expert_iteration": "rl",
}


def _claims(where: _Where, raw: Any, families: dict[str, str]) -> ClaimRoles:
    if not isinstance(raw, dict):
        raise ValueError(f"{where.path}: claims: expected a mapping of roles to run names")
    where.no_unknown(raw, {f.name for f in fields(ClaimRoles)}, "claims")
    many = {f.name for f in fields(ClaimRoles) if f.type.startswith("tuple")}
    for key, value in raw.items():
        if key in many and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise ValueError(f"{where.path}: claims.{key}: expected a list of run names, got {value!r}")
        if key not in many and not isinstance(value, str):
            raise ValueError(f"{where.path}: claims.{key}: expected one run name, got {value!r}")
    roles = {key: tuple(value) if isinstance(value, list) else value for key, value in raw.items()}
    seen: dict[str, str] = {}  # the claims compare their runs: a run in two roles would be compared with itself
    for key, value in roles.items():
        for name in value if isinstance(value, tuple) else (value,):
            if name not in families:
                raise ValueError(f"{where.path}: claims.{key}: no run is named {name!r} (runs: {sorted(families)})")
            if families[name] != ROLE_FAMILIES[key]:
                raise ValueError(
                    f"{where.path}: claims.{key}: {name} is a run of family {families[name]}; this role needs one of "
                    f"{ROLE_FAMILIES[key]}"
                )
            if name in seen:
                raise ValueError(
                    f"{where.path}: claims.{key}: {name} is also claims.{seen[name]}; a run plays one role"
                )
            seen[name] = key
    return ClaimRoles(**roles)


@dataclass
class _Where:
    """Checks that name the study file and the field in their errors."""

    path: Path

    def required(self, raw: dict, key: str, kind: type, parent: str = "") -> Any:
        label = f"{parent}.{key}" if parent else key
        if key not in raw:
            raise ValueError(f"{self.path}: {label} is required")
        if not isinstance(raw[key], kind):
            raise ValueError(f"{self.path}: {label}: expected {kind.__name__}, got {raw[key]!r}")
        return raw[key]

    def no_unknown(self, raw: dict, allowed: set[str], parent: str) -> None:
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"{self.path}: {parent or 'the study'}: unknown keys {unknown} (known: {sorted(allowed)})")

    def integer(self, value: Any, label: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{self.path}: {label}: expected an integer, got {value!r}")
        return value

    def seed(self, value: Any, label: str) -> int:
        seed = self.integer(value, label)
        if not 0 <= seed < 2**32:  # what seed_everything (NumPy's generator) accepts
            raise ValueError(f"{self.path}: {label}: a seed is an integer from 0 to {2**32 - 1}, got {seed}")
        return seed

    def number(self, value: Any, label: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{self.path}: {label}: expected a number in [0, 1), got {value!r}")
        return value

    def text(self, value: Any, label: str) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{self.path}: {label}: expected a path, got {value!r}")
        return value

    def strings(self, value: Any, label: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{self.path}: {label}: expected a list of command-line arguments (strings)")
        return tuple(value)

    def name(self, value: str, label: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"{self.path}: {label}: {value!r} is not a usable directory name (letters, digits, _.-)")
        return value

    def config(self, value: str, label: str) -> str:
        config = locate_config(value)
        if config is None:
            raise ValueError(
                f"{self.path}: {label}: no config file {value} (relative paths start at the working directory, "
                f"{Path.cwd()}) and no packaged config of that name"
            )
        return str(config)
