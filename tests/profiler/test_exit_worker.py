"""profiler.launcher.exit_worker: a launched rank ends with its main's status and flushed output, without the
interpreter's finalization (where a gloo group's threads can abort a finished rank)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("body", "code", "stderr_has"), [
    ("print('done', end='')", 0, ""),
    ("raise SystemExit(2)", 2, ""),
    ("raise SystemExit('ftplan: error: bad plan')", 1, "ftplan: error: bad plan"),
    ("raise ValueError('boom')", 1, "ValueError: boom"),
])
def test_status_output_and_no_finalizers(body: str, code: int, stderr_has: str) -> None:
    script = ("import atexit, sys\n"
              "from profiler.launcher import exit_worker\n"
              "atexit.register(lambda: print('FINALIZED', file=sys.stderr))\n"
              "def main():\n"
              "    print('out', end='')\n"
              f"    {body}\n"
              "exit_worker(main)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith("out")  # flushed before os._exit
    assert stderr_has in proc.stderr and "FINALIZED" not in proc.stderr


def test_run_in_fork_returns_the_childs_status_and_keeps_its_state_apart(tmp_path: Path) -> None:
    """profiler.launcher.run_in_fork (each configuration of a CPU `launch_many`): the work runs in a child with the
    parent's imports, its changes stay there, and its status comes back (0, SystemExit's code, 1 on an error)."""
    script = ("import sys\n"
              "from profiler import launcher\n"
              "seen = []\n"
              "def ok():\n"
              "    seen.append('child')\n"
              f"    open({str(tmp_path / 'ran')!r}, 'w').write(str(len(seen)))\n"
              "def fail():\n"
              "    raise ValueError('boom')\n"
              "run = launcher.run_in_fork\n"
              "codes = [run(ok), run(ok), run(lambda: sys.exit(3)), run(fail)]\n"
              "print(codes, seen)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 0, 3, 1] []"  # the parent's list never saw the children's appends
    assert (tmp_path / "ran").read_text() == "1"  # each child started from the parent's empty list
    assert "ValueError: boom" in proc.stderr
