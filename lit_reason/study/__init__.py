"""``lit-reason study``: the paper's comparison in one command.

A study (``configs/study/paper.yaml``) declares a warm start, an ORM and a grid of runs (algorithm x reward x
seed), each started from the same warm start, evaluated the same way and given the same sample budget. The
command runs what is not finished yet, one run after another (or prints the commands for a cluster launcher),
and writes ``<output_dir>/<name>/results.md``: the results table, paired differences from the warm start,
the paper's claims with verdicts, fairness checks and plots.
"""

from __future__ import annotations

import argparse

from lit_reason.study.report import write_report
from lit_reason.study.results import read_results
from lit_reason.study.runner import SHARED_STEPS, check_finished_steps, print_commands, record_launched, run_study
from lit_reason.study.spec import load_study


def study_main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lit-reason study",
        description="Run a declared study (warm start, ORM, a grid of runs times seeds) and write its results.md.",
    )
    parser.add_argument("--config", required=True, help="the study file, e.g. configs/study/paper.yaml")
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print the lit-reason commands in order (for a cluster launcher) instead of running them",
    )
    parser.add_argument(
        "--record",
        metavar="RUN:SEED",
        default=None,
        help="mark a step that a launcher ran from --print-commands finished (after it exited 0), e.g. ei:0",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write results.md from the runs finished so far; run nothing"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated run names to run now (the warm start and ORM run first if missing)",
    )
    options = parser.parse_args(args)
    try:
        study = load_study(options.config)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    only = set(options.only.split(",")) if options.only else None
    unknown = sorted((only or set()) - {run.name for run in study.runs} - SHARED_STEPS)
    if unknown:
        parser.error(
            f"--only: {study.source} has no run named {', '.join(unknown)} (runs: {[r.name for r in study.runs]})"
        )
    if options.print_commands:
        print_commands(study)
        return
    try:
        if options.record:
            record_launched(study, options.record)
            print(f"[lit-reason] study {study.name}: {options.record} marked finished", flush=True)
            return
        if not options.report_only:
            run_study(study, only=only)
        check_finished_steps(study)
        path = write_report(read_results(study), ["lit-reason", "study", "--config", options.config])
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        parser.exit(2, f"lit-reason study: error: {error}\n")
    print(f"[lit-reason] study {study.name}: {path}", flush=True)
