"""The claims of Havrilla et al. 2024 a study tests, each with the numbers that decide it and a verdict.

Every comparison is a difference of per-question outcomes (means over seeds) with its paired 95% interval
(``StudyResults.difference``). A difference is *significant* when its interval excludes 0, and two runs are
*equivalent* when the interval lies within the study's ``equivalence_margin`` of 0. Verdicts: ``supported`` and
``refuted`` when the intervals decide, ``inconclusive`` when they do not (more seeds or questions would), ``not
tested`` when the study lacks the finished runs or the metrics a claim needs.

A decision that any one of several comparisons makes (Expert Iteration is worse when *any* other run beats it) reads
their Bonferroni intervals, which hold jointly with 95% confidence: ten separate 95% intervals would call one of ten
runs as good as Expert Iteration better in about one study in five. A decision that needs *every* comparison (best
or equal: every other run within the margin) reads the 95% intervals: an intersection of tests at level 5% is a
test at level 5% (Berger 1982).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from lit_reason.study.results import Difference, StudyResults

Outcome = Literal["supported", "refuted", "inconclusive", "not tested"]


@dataclass(frozen=True)
class Verdict:
    """A claim, its verdict and the numbers behind it."""

    claim: str
    verdict: Outcome
    evidence: str


def assess_claims(results: StudyResults) -> list[Verdict]:
    """Every claim's verdict, in the paper's order."""
    return [claim(results) for claim in CLAIMS]


def _finished(results: StudyResults, *names: str | None) -> bool:
    return all(name is not None and results.runs[name].seeds for name in names)


def expert_iteration_best_or_equal(results: StudyResults) -> Verdict:
    claim = "Expert Iteration performs best or equal on most metrics"
    ei, hot_ei = results.study.claims.expert_iteration, results.study.claims.hot_expert_iteration
    others = [r for r in results.runs.values() if r.spec.family == "rl" and r.name not in (ei, hot_ei) and r.seeds]
    if not _finished(results, ei) or not others:
        return Verdict(claim, "not tested", "needs the Expert Iteration run and another RL run")
    margin, decided, lines = results.study.equivalence_margin, [], []
    paper_metrics = ["maj@1", f"maj@{results.k}", f"rerank@{results.k}", f"pass@{results.k}"]
    for metric in [name for name in results.metric_names() if name in paper_metrics]:
        differences = {r.name: results.difference(r.name, metric, baseline=ei) for r in others}
        # Evaluated on other questions or without this metric (another K): no comparison, so no "best or equal".
        uncompared = [name for name, d in differences.items() if d is None]
        differences = {name: d for name, d in differences.items() if d is not None}
        if not differences:
            continue
        jointly = {name: results.difference(name, metric, ei, len(differences)) for name in differences}
        best_name, best = max(differences.items(), key=lambda item: item[1].mean)
        if any(d.low > 0 for d in jointly.values()):
            decided.append("worse")
        elif all(d.high <= margin for d in differences.values()) and not uncompared:
            decided.append("best or equal")
        else:
            decided.append("undecided")
        strongest = _with_joint(best, jointly[best_name])
        left_out = f"; not compared, evaluated otherwise: {', '.join(uncompared)}" if uncompared else ""
        lines.append(
            f"{metric}: {decided[-1]} (strongest other: {best_name} {strongest} against Expert Iteration{left_out})"
        )
    most = len(decided) // 2 + 1
    if decided.count("best or equal") >= most:
        verdict: Outcome = "supported"
    elif decided.count("worse") >= most:
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    return Verdict(claim, verdict, "; ".join(lines))


def rl_lifts_both_while_sft_trades(results: StudyResults) -> Verdict:
    claim = "RL lifts maj@1 and pass@K together, while more SFT trades pass@K for maj@1"
    roles = results.study.claims
    rl_runs = [name for name in (roles.expert_iteration, roles.ppo) if _finished(results, name)]
    if not rl_runs or not _finished(results, roles.more_sft):
        return Verdict(claim, "not tested", "needs the more-SFT run and the Expert Iteration or PPO run")
    pass_k, lines, holds = f"pass@{results.k}", [], []
    parts = [*rl_runs, roles.more_sft]
    # Any part refutes the claim, each by either of its two metrics: those intervals hold jointly.
    comparisons = 2 * len(parts)
    for name in parts:
        maj, passed = results.difference(name, "maj@1"), results.difference(name, pass_k)
        if maj is None or passed is None:
            return Verdict(claim, "not tested", f"{name}'s or the warm start's evaluation lacks maj@1 or {pass_k}")
        maj_jointly, passed_jointly = (results.difference(name, m, comparisons=comparisons) for m in ("maj@1", pass_k))
        lines.append(f"{name}: maj@1 {_with_joint(maj, maj_jointly)}, {pass_k} {_with_joint(passed, passed_jointly)}")
        if name != roles.more_sft:
            holds.append(_decide(maj.low > 0 and passed.low > 0, maj_jointly.high < 0 or passed_jointly.high < 0))
    # A trade: pass@K falls and maj@1 does not (its estimate does not fall, nor does it fall significantly).
    holds.append(_decide(passed.high < 0 and maj.mean >= 0, passed_jointly.low > 0 or maj_jointly.high < 0))
    return Verdict(claim, _combine(holds), "; ".join(lines) + " (each against the warm start)")


def similar_sample_counts(results: StudyResults) -> Verdict:
    claim = "Expert Iteration and PPO need similar numbers of samples to converge"
    roles = results.study.claims
    if not _finished(results, roles.expert_iteration, roles.ppo):
        return Verdict(claim, "not tested", "needs the Expert Iteration and PPO runs")
    counts, lines = {}, []
    for name in (roles.expert_iteration, roles.ppo):
        gain = results.difference(name, "maj@1")
        if gain is None:
            return Verdict(claim, "not tested", f"{name}'s or the warm start's evaluation lacks maj@1")
        after, by = counts[name] = samples_to_converge(results, name)
        lines.append(f"{name}: maj@1 gain {gain}, 90% of it after {after:,} to {by:,} samples")
        if gain.low <= 0:
            return Verdict(claim, "inconclusive", "; ".join(lines) + f": {name} has no significant gain to converge to")
    (ppo_after, ppo_by), (ei_after, ei_by) = counts[roles.ppo], counts[roles.expert_iteration]
    # The ratio PPO / EI lies between these bounds: the evaluations between which each run converged say no more.
    low, high = ppo_after / ei_by, (ppo_by / ei_after if ei_after else float("inf"))
    lines.append(f"ratio PPO / EI between {low:.2f} and {high:.2f} (similar: within a factor of 2)")
    return Verdict(claim, _decide(low >= 0.5 and high <= 2, high < 0.5 or low > 2), "; ".join(lines))


def samples_to_converge(results: StudyResults, name: str) -> tuple[int, int]:
    """Between how many training samples a run's (seed-averaged) maj@1 first reached 90% of its final gain (or
    loss): (the samples of the evaluation before, 0 for the warm start's; those of the first that reached it)."""
    run, start = results.runs[name], results.baseline.final(results.study.shared_seed).metrics["maj@1"]
    rounds = min(len(run.evaluations[s]) for s in run.seeds)
    curve = [(0.0, start)] + [
        (
            sum(run.evaluations[s][i].samples_drawn for s in run.seeds) / len(run.seeds),
            sum(run.evaluations[s][i].metrics["maj@1"] for s in run.seeds) / len(run.seeds),
        )
        for i in range(rounds)
    ]
    gain = curve[-1][1] - start
    target = start + 0.9 * gain
    # Reached in the gain's direction (a run can lose maj@1); the last evaluation always qualifies.
    reached = next(
        i for i, (_, value) in enumerate(curve) if i > 0 and (value - target) * (1 if gain >= 0 else -1) >= 0
    )
    return int(curve[reached - 1][0]), int(curve[reached][0])


def dense_rewards_do_not_help(results: StudyResults) -> Verdict:
    claim = "Dense rewards do not lift final accuracy over the sparse reward"
    roles = results.study.claims
    dense = [name for name in roles.dense_rewards if _finished(results, name)]
    if not dense or not _finished(results, roles.ppo):
        return Verdict(claim, "not tested", "needs the sparse-reward PPO run and a dense-reward one")
    differences = {name: results.difference(name, "maj@1", baseline=roles.ppo) for name in dense}
    if None in differences.values():
        return Verdict(claim, "not tested", "an evaluation of these runs lacks maj@1")
    jointly = {name: results.difference(name, "maj@1", roles.ppo, len(dense)) for name in dense}
    lines = [f"{name} - {roles.ppo}: maj@1 {_with_joint(d, jointly[name])}" for name, d in differences.items()]
    margin = results.study.equivalence_margin
    verdict = _decide(all(d.high <= margin for d in differences.values()), any(d.low > 0 for d in jointly.values()))
    return Verdict(claim, verdict, "; ".join(lines) + f" (no lift: every interval below +{margin})")


def temperature_drives_exploration(results: StudyResults) -> Verdict:
    claim = "A higher sampling temperature in training explores more (higher pass@K of the trained policy)"
    roles = results.study.claims
    if not _finished(results, roles.hot_expert_iteration, roles.expert_iteration):
        return Verdict(claim, "not tested", "needs Expert Iteration at two rollout temperatures")
    pass_k = f"pass@{results.k}"
    difference = results.difference(roles.hot_expert_iteration, pass_k, baseline=roles.expert_iteration)
    if difference is None:
        return Verdict(claim, "not tested", f"an evaluation of these runs lacks {pass_k}")
    evidence = f"{roles.hot_expert_iteration} - {roles.expert_iteration}: {pass_k} {difference}"
    return Verdict(claim, _decide(difference.low > 0, difference.high < 0), evidence)


def rl_beats_more_sft(results: StudyResults) -> Verdict:
    claim = "RL (Expert Iteration) beats more SFT for the same time"
    roles = results.study.claims
    if not _finished(results, roles.expert_iteration, roles.more_sft):
        return Verdict(claim, "not tested", "needs the Expert Iteration and more-SFT runs")
    difference = results.difference(roles.expert_iteration, "maj@1", baseline=roles.more_sft)
    if difference is None:
        return Verdict(claim, "not tested", "an evaluation of these runs lacks maj@1")
    rl_time, sft_time = (_mean_training_time(results, name) for name in (roles.expert_iteration, roles.more_sft))
    evidence = (
        f"{roles.expert_iteration} - {roles.more_sft}: maj@1 {difference}; time outside validation "
        f"{roles.expert_iteration} {_minutes(rl_time)}, {roles.more_sft} {_minutes(sft_time)} (the same time: RL "
        f"took at most {SAME_TIME:g}x longer to win, or at least 1/{SAME_TIME:g} as long to lose)"
    )
    won = difference.low > 0 and rl_time <= SAME_TIME * sft_time
    lost = difference.high < 0 and rl_time >= sft_time / SAME_TIME
    return Verdict(claim, _decide(won, lost), evidence)


# Wall times within this factor count as the same time (runs on one machine vary by about 10%).
SAME_TIME = 1.25


def _mean_training_time(results: StudyResults, name: str) -> float:
    """Mean seconds per seed outside validation (the run's wall time less its validations': rows validated a
    different number of times are compared on what they trained), NaN (compares false) where unknown: a resumed
    run records its last attempt's wall time, a launched one none, and an earlier lit-reason's validations no
    time."""
    run = results.runs[name]
    times = []
    for seed in run.seeds:
        validations = [evaluation.seconds for evaluation in run.evaluations[seed]]
        if run.wall_seconds[seed] is None or seed in run.resumed or None in validations:
            return float("nan")
        times.append(run.wall_seconds[seed] - sum(validations))
    return sum(times) / len(times) if times else float("nan")


def _minutes(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown (resumed, launched, or its validations untimed)"
    return f"{seconds / 60:.1f} min"


def _with_joint(alone: Difference, jointly: Difference) -> str:
    """A difference's 95% interval, and the one it holds jointly with the claim's other comparisons."""
    return str(alone) if jointly.confidence == alone.confidence else f"{alone}, jointly {jointly}"


def _decide(supported: bool, refuted: bool) -> Outcome:
    return "supported" if supported else "refuted" if refuted else "inconclusive"


def _combine(parts: list[Outcome]) -> Outcome:
    """A claim made of parts holds when all do and fails when one fails."""
    if "refuted" in parts:
        return "refuted"
    return "supported" if all(part == "supported" for part in parts) else "inconclusive"


def converged_warm_start(results: StudyResults) -> tuple[Difference, Outcome] | None:
    """More SFT's maj@1 gain over the warm start, and whether the warm start converged: ``supported`` when the
    gain's interval lies at most the study's equivalence margin above 0, ``refuted`` when it lies above 0."""
    more_sft = results.study.claims.more_sft
    gain = results.difference(more_sft, "maj@1") if _finished(results, more_sft) else None
    if gain is None:
        return None
    return gain, _decide(gain.high <= results.study.equivalence_margin, gain.low > 0)


CLAIMS: tuple[Callable[[StudyResults], Verdict], ...] = (
    expert_iteration_best_or_equal,
    rl_lifts_both_while_sft_trades,
    similar_sample_counts,
    dense_rewards_do_not_help,
    temperature_drives_exploration,
    rl_beats_more_sft,
)
