"""Kill a ``lit-reason fit`` with SIGKILL at a chosen point, the way a crash or an out-of-memory killer would.

``RunServer`` starts one process that imports lit-reason and then forks a child for every command it is given:
each child is a fresh ``lit-reason`` process (what it holds is what a process holds right after ``import``)
that starts in about 2 s instead of the 7 s of a new interpreter, which is what lets a test kill and resume a
run of every algorithm several times. A child given a ``Kill`` sends itself SIGKILL when its run reaches it:

- ``rollout``: the round's samples are drawn, nothing trained on them yet;
- ``training``: after training batch ``batch`` of the round;
- ``validation``: after the first validation batch of the round (the evaluation half done);
- ``checkpoint``: the round's ``last.ckpt`` is half copied from the system's temporary folder (Lightning's move
  of it across filesystems);
- ``export``: the round's export is written and the previous one moved aside, the new one not yet in place.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

REPOSITORY = Path(__file__).resolve().parents[2]
KillPoint = Literal["rollout", "training", "validation", "checkpoint", "export"]


@dataclass(frozen=True)
class Kill:
    point: KillPoint
    round: int  # the epoch (a round) in which to die
    batch: int = 0  # for ``training``: after which of the round's batches

    def __str__(self) -> str:
        return f"{self.point}@round{self.round}" + (f".batch{self.batch}" if self.point == "training" else "")


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None  # None when the process was killed
    killed: bool  # by SIGKILL, at the point asked for
    log: Path


class RunServer:
    """A process that forks a ``lit-reason`` child per ``run``; use as a context manager."""

    def __enter__(self) -> RunServer:
        paths = [str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.faults"],
            cwd=REPOSITORY,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)

    def run(self, args: list[str], cwd: Path, log: Path, kill: Kill | None = None) -> Outcome:
        """``lit-reason *args`` in ``cwd``, its output in ``log``; killed at ``kill`` if it gets there."""
        request = {"args": args, "cwd": str(cwd), "log": str(log), "kill": asdict(kill) if kill else None}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError("the run server died")
        status = json.loads(reply)
        killed = status["signal"] == signal.SIGKILL and f"{KILLED_AT} {kill}" in log.read_text()
        return Outcome(exit_code=status["exit_code"], killed=killed, log=log)


# ------------------------------------------------------------------------------------------------ in the child
KILLED_AT = "[faults] killed at"


def _die(kill: Kill) -> None:
    print(f"{KILLED_AT} {kill}", flush=True)  # proof the point was reached (not some other SIGKILL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(kill: Kill) -> None:
    """Patch this (child) process so that it kills itself at ``kill``."""
    import fsspec.implementations.local
    from lightning import Callback
    from lightning.pytorch.trainer.states import TrainerFn

    import lit_reason.callbacks
    import lit_reason.cli
    from lit_reason.algorithms.base import ReasoningModule

    trainers = []

    def in_round() -> bool:
        trainer = trainers[0] if trainers else None
        return (
            trainer is not None
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and trainer.current_epoch == kill.round
        )

    class KillAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if kill.point == "training" and in_round() and batch_idx == kill.batch:
                _die(kill)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            if kill.point == "validation" and in_round():
                _die(kill)

    instantiate_trainer = lit_reason.cli.LitReasonCLI.instantiate_trainer

    def instantiate_with_kill(self, **kwargs):
        trainer = instantiate_trainer(self, **kwargs)
        trainer.callbacks.append(KillAt())
        trainers.append(trainer)
        return trainer

    lit_reason.cli.LitReasonCLI.instantiate_trainer = instantiate_with_kill

    generate = ReasoningModule.generate

    def generate_then_die(self, problems, config, seed_parts, stage):
        samples = generate(self, problems, config, seed_parts, stage)
        if kill.point == "rollout" and stage == "rollout" and in_round():
            _die(kill)
        return samples

    ReasoningModule.generate = generate_then_die

    commit = fsspec.implementations.local.LocalFileOpener.commit

    def commit_or_die(self):
        if kill.point == "checkpoint" and in_round() and "last.ckpt" in Path(self.path).name:
            # The temporary file is in the system's temporary folder: across filesystems the move is a copy,
            # killed here half-way through (what Lightning's own save wrote into the previous last.ckpt).
            self.f.close()
            data = Path(self.temp).read_bytes()
            Path(self.path).write_bytes(data[: len(data) // 2])
            _die(kill)
        return commit(self)

    fsspec.implementations.local.LocalFileOpener.commit = commit_or_die

    replace_path = lit_reason.callbacks.replace_path

    def replace_path_or_die(staging, target):
        target = Path(target)
        if kill.point == "export" and in_round() and target.name == "policy":
            if target.exists():
                target.rename(target.with_name(f".{target.name}.previous"))  # as replace_path does first
            _die(kill)
        replace_path(staging, target)

    lit_reason.callbacks.replace_path = replace_path_or_die


def _child(request: dict) -> None:
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(request["cwd"])
    exit_code = 1
    try:
        from lit_reason.cli import main

        if request["kill"]:
            _arm(Kill(**request["kill"]))
        main(request["args"])
        exit_code = 0
    except SystemExit as stop:
        exit_code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def serve() -> None:
    import lit_reason.cli  # noqa: F401  (imported once, before any fork)

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        reply = {
            "exit_code": os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        }
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
