"""`ftplan` runs in process groups of their own: one SIGKILLed once a checkpoint is on disk, a run killed
mid-training as a preempted job is (the resume tests of tests/runner/test_train.py, test_stages.py and
test_rl_stages.py), and runs started in the background beside each other (their reference and peak-bytes runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
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


def ftplan_bg(*args: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """`python -m ftplan *args` started in the background in a process group of its own, its stderr into `log` (a
    pipe left unread could fill): runs that go on beside each other or beside the test."""
    with log.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "ftplan", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=err, text=True, env=env, start_new_session=True)


def wait_ok(proc: subprocess.Popen, log: Path, *, timeout_s: float = 900) -> None:
    assert proc.wait(timeout=timeout_s) == 0, log.read_text()[-3000:]


def kill_left_behind(procs: Iterable[subprocess.Popen]) -> None:
    """SIGKILL the process group of every run still going (a case deselected or failed early leaves its run)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
