"""profiler.launcher.exit_worker: a launched rank ends with its main's status and flushed output, without the
interpreter's finalization (where a gloo group's threads can abort a finished rank)."""

from __future__ import annotations

import json
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


def test_run_in_fork_children_start_from_the_parents_heap_not_an_earlier_childs(tmp_path: Path) -> None:
    """The rank-order benchmark times each plan in a forked child: each child's glibc heap starts where the rank's
    was (a fresh process's, as a user's run), not where an earlier plan left it. In one process run after run the
    heap grows with the earlier plans and a later step stops faulting pages in (measured, session 13: a LoRA DDP mb4
    step faulted 16k pages per step in a fresh process and in a forked child alike, 0-1 after a full fine-tuning
    plan in the same process). mallinfo2(3) (glibc >= 2.33) reads the main arena's size."""
    script = ("import ctypes, json, sys\n"
              "from profiler import launcher\n"
              "libc = ctypes.CDLL(None)\n"
              "class Info(ctypes.Structure):\n"
              "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',\n"
              "                'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
              "libc.mallinfo2.restype = Info\n"
              "libc.malloc.restype = ctypes.c_void_p\n"
              "libc.free.argtypes = [ctypes.c_void_p]\n"
              "def write(name):\n"
              f"    open({str(tmp_path)!r} + '/' + name, 'w').write(str(libc.mallinfo2().arena))\n"
              "def grow():\n"
              "    blocks = [libc.malloc(64 << 10) for _ in range(2000)]  # 125 MiB, under the mmap threshold\n"
              "    for b in blocks[:-1]:\n"
              "        libc.free(b)  # the last block stays: the freed space below it stays in the heap\n"
              "    write('grown')\n"
              "parent = libc.mallinfo2().arena\n"
              "codes = [launcher.run_in_fork(grow), launcher.run_in_fork(lambda: write('next'))]\n"
              "print(json.dumps({'codes': codes, 'parent': parent, 'after': libc.mallinfo2().arena}))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    if "mallinfo2" in proc.stderr and "undefined symbol" in proc.stderr:
        pytest.skip("glibc < 2.33 has no mallinfo2")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    grown, nxt = int((tmp_path / "grown").read_text()), int((tmp_path / "next").read_text())
    assert seen["codes"] == [0, 0]
    assert grown - seen["parent"] > 100 << 20  # the first child's heap grew by its freed blocks
    assert abs(nxt - seen["parent"]) < 8 << 20 and abs(seen["after"] - seen["parent"]) < 8 << 20  # not inherited
