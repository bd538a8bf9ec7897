"""Start `ftplan run` in a process group of its own and SIGKILL the group once a checkpoint is on disk: a run
killed mid-training, as a preempted job is (the resume tests of tests/runner/test_train.py, test_stages.py and
test_rl_stages.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def kill_run_at_checkpoint(run_args: list[str], checkpoint: Path, *, timeout_s: float = 900) -> None:
    """Run `python -m ftplan run *run_args` until `checkpoint`/trainer_state.json exists, then kill it and its
    workers; fails if the run ends first or the checkpoint does not come within `timeout_s`."""
    proc = subprocess.Popen([sys.executable, "-m", "ftplan", "run", *run_args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not (checkpoint / "trainer_state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
