"""Another process holding a run directory's lock (``lit_reason.files.RunLock``), as a run under way does."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HOLD = """
import sys, time
from lit_reason.files import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def held_by_another_process(log_dir: Path) -> Iterator[subprocess.Popen]:
    """Yield a process holding ``log_dir``'s run lock; it is killed (SIGKILL, as a crash) on leaving."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(log_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()
