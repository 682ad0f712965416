"""A study's report and the paper's claims, on runs written to disk with known per-question outcomes."""

import dataclasses
import json
import shutil

import pytest
import yaml

from lit_reason.study import study_main
from lit_reason.study.claims import CLAIMS, assess_claims, samples_to_converge
from lit_reason.study.report import write_report
from lit_reason.study.results import read_results
from lit_reason.study.runner import run_dir
from lit_reason.study.spec import load_study
from tests.helpers.study_runs import outcomes, write_run

RUNS = {
    "ei": ("Expert Iteration", "sparse", "rl"),
    "ppo": ("PPO", "sparse", "rl"),
    "ppo_dense": ("PPO", "heuristic dense", "rl"),
    "ei_hot": ("Expert Iteration, T = 1.0", "sparse", "rl"),
    "sft_more": ("SFT", "-", "sft"),
}


def make_study(tmp_path, finals: dict[str, tuple[float, float]], seeds=(0,)):
    """A study whose warm start scores maj@1 0.4 / pass@8 0.7 and each run ends at ``finals[run]`` (maj@1,
    pass@8) after three rounds of 100 samples, the first at the warm start's numbers."""
    config = tmp_path / "fit.yaml"
    config.write_text("seed_everything: 0\n")
    runs = [
        {"name": name, "algorithm": algorithm, "reward": reward, "family": family, "config": str(config)}
        for name, (algorithm, reward, family) in RUNS.items()
    ]
    claims = {
        "expert_iteration": "ei", "ppo": "ppo", "more_sft": "sft_more", "dense_rewards": ["ppo_dense"],
        "hot_expert_iteration": "ei_hot",
    }  # fmt: skip
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "name": "synthetic",
                "output_dir": str(tmp_path / "out"),
                "seeds": list(seeds),
                "warm_start": {"config": str(config)},
                "runs": runs,
                "claims": claims,
            }
        )
    )
    study = load_study(study_file)
    start = outcomes(0.4, 0.7)
    write_run(run_dir(study, "warm_start", 0), [(0, 0, outcomes(0.1, 0.5)), (10, 0, start)])
    write_run(run_dir(study, "warm_start_eval", 0), [(0, 0, start)])
    for name, (maj, passed) in finals.items():
        for seed in seeds:
            middle = outcomes((maj + 0.4) / 2, (passed + 0.7) / 2)
            write_run(run_dir(study, name, seed), [(1, 100, start), (2, 200, middle), (3, 300, outcomes(maj, passed))])
    return study


def verdicts(study) -> dict[str, str]:
    """Each claim's verdict by the name of the function that assesses it."""
    return {claim.__name__: v.verdict for claim, v in zip(CLAIMS, assess_claims(read_results(study)), strict=True)}


def test_claims_the_numbers_support(tmp_path):
    study = make_study(
        tmp_path,
        {"ei": (0.6, 0.8), "ppo": (0.6, 0.8), "ppo_dense": (0.6, 0.8), "ei_hot": (0.6, 0.9), "sft_more": (0.4, 0.6)},
    )
    assert verdicts(study) == {
        "expert_iteration_best_or_equal": "supported",
        "rl_lifts_both_while_sft_trades": "supported",
        "similar_sample_counts": "supported",
        "dense_rewards_do_not_help": "supported",
        "temperature_drives_exploration": "supported",
        "rl_beats_more_sft": "supported",
    }


def test_claims_the_numbers_refute(tmp_path):
    study = make_study(
        tmp_path,
        {"ei": (0.45, 0.8), "ppo": (0.7, 0.6), "ppo_dense": (0.9, 0.8), "ei_hot": (0.45, 0.75), "sft_more": (0.6, 0.8)},
    )
    found = verdicts(study)
    assert found["expert_iteration_best_or_equal"] == "refuted"  # PPO and dense PPO beat it on maj@1, maj@8
    assert found["rl_lifts_both_while_sft_trades"] == "refuted"  # PPO's pass@8 falls and more SFT's rises
    assert (
        found["dense_rewards_do_not_help"] == "refuted"
        and found["temperature_drives_exploration"] == "refuted"
        and found["rl_beats_more_sft"] == "refuted"
    )


def test_expert_iteration_is_worse_only_where_the_joint_intervals_say_so(tmp_path):
    # PPO answers 5 more of 200 questions than Expert Iteration (and none fewer): Newcombe's 95% interval
    # [+0.001, +0.048] excludes 0, the Bonferroni interval of one of its two comparisons does not. maj@8 follows
    # maj@1; pass@8 is equal everywhere.
    finals = {"ei": (0.5, 0.8), "ppo": (0.525, 0.8), "ppo_dense": (0.5, 0.8), "ei_hot": (0.5, 0.8)}
    results = read_results(make_study(tmp_path, finals))
    assert results.difference("ppo", "maj@1", baseline="ei").low > 0
    verdict = assess_claims(results)[0]
    assert verdict.verdict == "inconclusive"  # maj@1 and maj@8 undecided, pass@8 best or equal: was refuted
    joint = "ppo +0.025 [+0.001, +0.048], jointly +0.025 [-0.002, +0.052] (97.5%) against"
    assert f"maj@1: undecided (strongest other: {joint}" in verdict.evidence


def test_a_run_evaluated_on_other_questions_leaves_expert_iteration_s_best_or_equal_undecided(tmp_path):
    # PPO, far ahead, was evaluated on 100 of the 200 questions: it was dropped from the comparison unnamed, and
    # Expert Iteration read "best or equal" (supported) against the rest.
    finals = {"ei": (0.5, 0.8), "ppo": (0.95, 0.8), "ppo_dense": (0.5, 0.8), "ei_hot": (0.5, 0.8)}
    study = make_study(tmp_path, finals)
    last = outcomes(0.95, 0.8, count=100)
    write_run(run_dir(study, "ppo", 0), [(1, 100, outcomes(0.4, 0.7, count=100)), (3, 300, last)])
    verdict = assess_claims(read_results(study))[0]
    assert verdict.verdict == "inconclusive"
    assert "maj@1: undecided (strongest other: ppo_dense" in verdict.evidence
    assert "not compared, evaluated otherwise: ppo)" in verdict.evidence


def test_more_sft_that_loses_maj_at_1_too_trades_nothing(tmp_path):
    # Both fall, maj@1 less than pass@8: counted as a trade before; the claim is that maj@1 does not fall.
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "ppo": (0.6, 0.8), "sft_more": (0.35, 0.6)})
    assert verdicts(study)["rl_lifts_both_while_sft_trades"] == "refuted"


def test_claims_without_their_runs_are_not_tested_and_small_differences_are_inconclusive(tmp_path):
    study = make_study(tmp_path, {"ei": (0.41, 0.7), "sft_more": (0.4, 0.7)})
    found = verdicts(study)
    assert (
        found["expert_iteration_best_or_equal"] == "not tested" and found["dense_rewards_do_not_help"] == "not tested"
    )
    assert found["rl_beats_more_sft"] == "inconclusive"  # 2 more right questions of 200


def test_samples_to_converge_reads_the_curve(tmp_path):
    study = make_study(tmp_path, {"ei": (0.6, 0.8)})
    # the middle evaluation (200 samples) is at 0.5: half the gain; 90% is reached between 200 and 300
    assert samples_to_converge(read_results(study), "ei") == (200, 300)


def test_a_round_that_trained_nothing_keeps_its_validation_and_seeds_line_up_by_round(tmp_path):
    # Seed 1's second round trained nothing: it validated at step 1 again, and only one of the two was kept. The
    # seeds' curves were then lined up by position: seed 0's middle evaluation averaged with seed 1's last.
    finals = {"ei": (0.8, 0.8), "ppo": (0.8, 0.8)}
    study = make_study(tmp_path, finals, seeds=(0, 1))
    start, last = outcomes(0.4, 0.7), outcomes(0.8, 0.8)
    write_run(run_dir(study, "ei", 1), [(1, 100, start), (1, 200, start), (2, 300, last)])
    results = read_results(study)
    assert [e.step for e in results.runs["ei"].evaluations[1]] == [1, 1, 2]
    assert samples_to_converge(results, "ei") == samples_to_converge(results, "ppo") == (200, 300)


def test_samples_to_converge_follows_a_loss_down(tmp_path):
    # A run that loses maj@1 (0.4 -> 0.35 -> 0.3) has lost 90% of it only between 200 and 300 samples.
    study = make_study(tmp_path, {"ei": (0.3, 0.6), "ppo": (0.2, 0.6)})
    results = read_results(study)
    assert samples_to_converge(results, "ei") == samples_to_converge(results, "ppo") == (200, 300)
    assert verdicts(study)["similar_sample_counts"] == "inconclusive"  # no gain to converge to


def test_the_report_has_the_table_the_verdicts_the_checks_and_the_plots(tmp_path):
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "sft_more": (0.41, 0.6)}, seeds=(0, 1))
    path = write_report(read_results(study), ["lit-reason", "study", "--config", "study.yaml"])
    text = path.read_text()
    assert (
        "| run | algorithm | reward | maj@1 | maj@8 | pass@8 | pass@1 | samples drawn | seeds | minutes per seed |"
        in text
    )
    assert "| ei | Expert Iteration | sparse | 0.600 | 0.600 | 0.800 | 0.400 | 300 | 2 | 1.0 |" in text
    assert "| ei | +0.200 [" in text  # the paired difference from the warm start
    assert "The intervals hold the spread between each run's training seeds and between questions." in text
    assert "- **RL (Expert Iteration) beats more SFT for the same time**: SUPPORTED." in text
    assert "Warm start convergence UNDECIDED: more SFT changes maj@1 by +0.010 [-0.007, +0.027]" in text
    assert "ei: its 2 seeds' final evaluations DO NOT differ" in text  # the fake seeds are copies
    assert "Evaluation identical for every run" in text
    assert "Final evaluations are of the trained policies: each at the step its training ended\n" in text
    write_run(run_dir(study, "ei", 1), [(3, 300, outcomes(0.6, 0.8))], evaluation={"num_samples": 4})
    assert "Evaluation DIFFERS from the warm start's in: ei" in write_report(read_results(study)).read_text()
    for plot in ("curves.png", "sft.png"):
        assert (path.parent / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("more_sft_maj", "state"),
    [
        (0.40, "converged: more SFT changes maj@1 by +0.000 [-0.010, +0.010]"),
        (0.5, "NOT converged"),
        (0.41, "convergence UNDECIDED"),
    ],
)
def test_the_warm_start_s_convergence_is_decided_on_the_interval_of_more_sft_s_gain(tmp_path, more_sft_maj, state):
    """+0.010 [-0.007, +0.027] passed as converged on its middle, though the interval reaches past the 0.02
    margin."""
    study = make_study(tmp_path, {"sft_more": (more_sft_maj, 0.7)})
    assert f"Warm start {state}" in write_report(read_results(study)).read_text()


def test_a_warm_start_exported_at_its_best_epoch_rather_than_its_last_is_named_as_selected(tmp_path):
    study = make_study(tmp_path, {"ei": (0.6, 0.8)})
    assert "SELECTED" not in write_report(read_results(study)).read_text()  # its export is its last evaluation
    start = outcomes(0.4, 0.7)
    write_run(run_dir(study, "warm_start", 0), [(5, 0, start), (10, 0, outcomes(0.35, 0.7))])
    text = write_report(read_results(study)).read_text()
    assert "Warm start SELECTED on these questions: its export (maj@1 0.400) is its best of 2 evaluations (5 " in text
    assert "its last (10 steps) scored 0.350" in text
    write_run(run_dir(study, "warm_start", 0), [(5, 0, outcomes(0.35, 0.7)), (10, 0, outcomes(0.395, 0.7))])
    assert "SELECTED" not in write_report(read_results(study)).read_text()  # its last, evaluated again: rounding


def test_verdicts_on_runs_of_one_seed_say_they_are_about_those_runs(tmp_path):
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "sft_more": (0.41, 0.6)})
    text = write_report(read_results(study)).read_text()
    assert "Every run finished with one seed, so an interval holds no spread between its training runs" in text
    (tmp_path / "two_seeds").mkdir()
    study = make_study(tmp_path / "two_seeds", {"ei": (0.6, 0.8), "sft_more": (0.41, 0.6)}, seeds=(0, 1))
    shutil.rmtree(run_dir(study, "sft_more", 1))
    assert "These runs: sft_more finished with one seed" in write_report(read_results(study)).read_text()


def test_a_report_before_the_warm_start_was_evaluated_says_so(tmp_path):
    study = make_study(tmp_path, {})
    (run_dir(study, "warm_start_eval", 0) / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="the warm start has not been evaluated yet"):
        read_results(study)


def test_a_run_converged_by_its_first_evaluation_leaves_the_sample_ratio_open(tmp_path):
    # Both at their final maj@1 from the first evaluation on: each converged somewhere in (0, 100] samples, so
    # the ratio could be anything (was "supported", ratio 1.00: the grid could not tell).
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "ppo": (0.6, 0.8)})
    for name in ("ei", "ppo"):
        final = outcomes(0.6, 0.8)
        write_run(run_dir(study, name, 0), [(1, 100, final), (2, 200, final), (3, 300, final)])
    assert samples_to_converge(read_results(study), "ei") == (0, 100)
    assert verdicts(study)["similar_sample_counts"] == "inconclusive"


def test_unfinished_runs_decide_no_claim_and_are_named(tmp_path):
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "ppo": (0.6, 0.8), "sft_more": (0.4, 0.6)})
    (run_dir(study, "ppo", 0) / "study.json").unlink()  # interrupted: its last evaluation is not its final one
    found = verdicts(study)
    assert found["similar_sample_counts"] == "not tested" and found["expert_iteration_best_or_equal"] == "not tested"
    text = write_report(read_results(study)).read_text()
    assert "Unfinished (left out of the tables, claims and plots until they finish): ppo seed 0" in text


def test_seeds_that_answered_different_questions_are_refused(tmp_path, capsys):
    study = make_study(tmp_path, {"ei": (0.6, 0.8)}, seeds=(0, 1))
    write_run(run_dir(study, "ei", 1), [(3, 300, outcomes(0.6, 0.8, count=100))])
    with pytest.raises(ValueError, match="ei: seed 1's final evaluation answered other questions than seed 0's"):
        read_results(study).difference("ei", "maj@1")
    with pytest.raises(SystemExit):  # the command says so, with no traceback
        study_main(["--config", str(study.source), "--report-only"])
    assert "ei: seed 1's final evaluation answered other questions" in capsys.readouterr().err


def test_a_claim_whose_metric_an_evaluation_lacks_is_not_tested_and_the_report_still_written(tmp_path):
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "ppo": (0.6, 0.8), "sft_more": (0.4, 0.6)})
    lacking = {name.replace("@8", "@4"): values for name, values in outcomes(0.4, 0.6).items()}  # K = 4
    write_run(run_dir(study, "sft_more", 0), [(3, 300, lacking)], evaluation={"num_samples": 4})
    assert verdicts(study)["rl_lifts_both_while_sft_trades"] == "not tested"  # was an AttributeError
    assert "Evaluation DIFFERS from the warm start's in: sft_more" in write_report(read_results(study)).read_text()


def test_more_sft_whose_maj_at_1_estimate_falls_trades_nothing(tmp_path):
    # pass@8 falls significantly, maj@1 falls by 1 question of 200: not a trade of pass@K for maj@1.
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "ppo": (0.6, 0.8), "sft_more": (0.395, 0.6)})
    assert verdicts(study)["rl_lifts_both_while_sft_trades"] == "inconclusive"


def test_rl_that_wins_in_more_time_than_more_sft_does_not_win_for_the_same_time(tmp_path):
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "sft_more": (0.4, 0.6)})
    ei = run_dir(study, "ei", 0)
    write_run(ei, [(1, 100, outcomes(0.4, 0.7)), (3, 300, outcomes(0.6, 0.8))], minutes=2.0)
    assert verdicts(study)["rl_beats_more_sft"] == "inconclusive"  # 2 min against 1
    write_run(ei, [(1, 100, outcomes(0.4, 0.7)), (3, 300, outcomes(0.6, 0.8))], minutes=1.2)
    assert verdicts(study)["rl_beats_more_sft"] == "supported"
    record = json.loads((ei / "study.json").read_text())
    (ei / "study.json").write_text(json.dumps({**record, "resumed": True}))  # its time: the last attempt's only
    assert verdicts(study)["rl_beats_more_sft"] == "inconclusive"
    (ei / "study.json").write_text(json.dumps({"wall_seconds": None, "launched": True}))  # by --record
    assert verdicts(study)["rl_beats_more_sft"] == "inconclusive"
    assert read_results(study).runs["ei"].seeds == [0]  # finished: its results count
    assert "| ei | Expert Iteration | sparse |" in (text := write_report(read_results(study)).read_text())
    assert "unknown (launched)" in text and "ei seed 0" not in text  # not listed as unfinished


def test_rl_and_more_sft_are_compared_on_their_time_outside_validation(tmp_path):
    # The wall time counted each validation too: a row validated more often than more SFT looked slower.
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "sft_more": (0.4, 0.6)})
    ei = run_dir(study, "ei", 0)
    validated_twice = [(1, 100, outcomes(0.4, 0.7)), (3, 300, outcomes(0.6, 0.8))]
    write_run(ei, validated_twice, minutes=2.0, validation_seconds=30.0)  # 1 min of training, as more SFT
    results = read_results(study)
    assert verdicts(study)["rl_beats_more_sft"] == "supported"
    assert "time outside validation ei 1.0 min, sft_more 1.0 min" in write_report(results).read_text()
    write_run(ei, validated_twice, minutes=2.0, validation_seconds=None)  # a run of an earlier lit-reason
    assert verdicts(study)["rl_beats_more_sft"] == "inconclusive"
    assert "ei unknown (resumed, launched, or its validations untimed)" in write_report(read_results(study)).read_text()


def test_a_study_evaluated_with_one_sample_lists_each_metric_once(tmp_path):
    """At K = 1, maj@K and pass@K are maj@1 and pass@1: the table listed them twice."""
    results = dataclasses.replace(read_results(make_study(tmp_path, {"ei": (0.6, 0.8)})), k=1)
    assert results.metric_names() == ["maj@1", "pass@1"]


def test_a_run_whose_last_evaluation_is_before_the_end_of_its_training_is_named(tmp_path):
    # With check_val_every_n_epoch=2 and max_epochs=3 a run's last validation is of its round-2 policy: the
    # table reported it as the run's result.
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "sft_more": (0.41, 0.6)})
    write_run(run_dir(study, "ei", 0), [(1, 100, outcomes(0.4, 0.7)), (3, 300, outcomes(0.6, 0.8))], training_end=5)
    text = write_report(read_results(study)).read_text()
    assert "Final evaluation NOT at the end of training in: ei seed 0 (evaluated at step 3, trained to 5)" in text
    # Runs of an earlier lit-reason recorded no end: nothing is claimed either way.
    for name in ("ei", "sft_more"):
        write_run(run_dir(study, name, 0), [(3, 300, outcomes(0.6, 0.8))], training_end=False)
    assert "Final evaluation" not in write_report(read_results(study)).read_text()
    # Its samples are those drawn by the end of its training (the last evaluation's were taken for them).
    write_run(run_dir(study, "ppo", 0), [(1, 100, outcomes(0.4, 0.7)), (3, 300, outcomes(0.6, 0.8))])
    write_run(
        run_dir(study, "ei", 0),
        [(1, 100, outcomes(0.4, 0.7)), (3, 300, outcomes(0.6, 0.8))],
        training_end=5,
        samples_at_end=500,
    )
    text = write_report(read_results(study)).read_text()
    assert "| ei | Expert Iteration | sparse |" in text and "| 500 | 1 |" in text
    assert "Sample budgets UNEQUAL: the RL runs drew 300 to 500 training samples" in text


def test_a_run_resumed_with_other_evaluation_settings_counts_as_evaluated_differently(tmp_path):
    # Only config.yaml was read: a resume with other sampling settings evaluated the rest of the run unnoticed.
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "sft_more": (0.41, 0.6)})
    ei = run_dir(study, "ei", 0)
    resumed = json.loads((ei / "config.yaml").read_text())
    (ei / "config-resume-1.yaml").write_text(json.dumps(resumed))  # the same settings
    assert "Evaluation identical for every run" in write_report(read_results(study)).read_text()
    resumed["model"]["init_args"]["evaluation"]["temperature"] = 1.0
    (ei / "config-resume-2.yaml").write_text(json.dumps(resumed))
    assert "Evaluation DIFFERS from the warm start's in: ei" in write_report(read_results(study)).read_text()


def test_runs_without_a_recorded_end_and_rows_evaluated_with_another_k_are_reported_as_such(tmp_path):
    """The check said every run was verified when some recorded no end of training; and an RL row evaluated with
    another K (no pass@8) crashed the report's plot."""
    study = make_study(tmp_path, {"ei": (0.6, 0.8), "sft_more": (0.41, 0.6)})
    write_run(run_dir(study, "ei", 0), [(3, 300, outcomes(0.6, 0.8))], training_end=False)
    k4 = {name.replace("@8", "@4"): values for name, values in outcomes(0.5, 0.7).items()}
    write_run(run_dir(study, "ppo", 0), [(3, 300, k4)], evaluation={"num_samples": 4})
    text = write_report(read_results(study)).read_text()
    assert "each at the step its training ended (not recorded, so not checked, for: ei seed 0)" in text
    assert "Evaluation DIFFERS from the warm start's in: ppo" in text
    # Evaluated on the warm start's first 100 questions: the difference was taken on those alone, with the opposite
    # sign to the table's (0.41 on 100 questions against the warm start's 0.4 on 200), and claims decided on it.
    write_run(run_dir(study, "sft_more", 0), [(3, 300, outcomes(0.41, 0.6, count=100))])
    assert read_results(study).difference("sft_more", "maj@1") is None
