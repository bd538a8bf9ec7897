"""A profile run past its time (profiler/launch.py run_stopping_ranks): torchrun's agent starts each rank in a session
of its own and stops them on SIGTERM (torch/distributed/elastic/multiprocessing/subprocess_handler/
subprocess_handler.py, start_new_session=True), so the launcher sends SIGTERM first, and SIGKILL only to a process
that outlives the grace; a plain SIGKILL would leave the ranks running on their GPU. A stand-in process plays
torchrun: it records the SIGTERM it gets, or ignores it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from profiler.launch import run_stopping_ranks

_TORCHRUN = """
import signal, sys, time
from pathlib import Path
mark = Path(sys.argv[1])
def stop(signum, frame):
    mark.write_text("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop if sys.argv[2] == "stops" else signal.SIG_IGN)
mark.with_suffix(".ready").write_text("ready")
time.sleep(120)
"""


@pytest.mark.parametrize("behaviour", ["stops", "ignores"])
def test_a_launch_past_its_time_is_asked_to_stop_its_ranks_first(tmp_path: Path, behaviour: str) -> None:
    mark = tmp_path / "mark"
    with pytest.raises(subprocess.TimeoutExpired):
        run_stopping_ranks([sys.executable, "-c", _TORCHRUN, str(mark), behaviour], env=dict(os.environ),
                           timeout_s=5.0, cwd=tmp_path, grace_s=2.0)
    assert mark.with_suffix(".ready").exists()  # its handler was in place when the time ran out
    assert (mark.read_text() == "SIGTERM") if behaviour == "stops" else not mark.exists()


def test_a_launch_in_time_answers_as_subprocess_run(tmp_path: Path) -> None:
    done = run_stopping_ranks([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); "
                               "sys.exit(3)"], env=dict(os.environ), timeout_s=60.0, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
