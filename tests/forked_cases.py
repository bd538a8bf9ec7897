"""Run several probe cases in one interpreter start: torch, transformers, peft and DeepSpeed are imported once by
the caller, then every case runs in a child forked from it, a fresh process as far as the case can tell (its own
tensors, allocator and DeepSpeed / torch.distributed state; nothing it leaves behind reaches the next case). The
probes of tests/validation/test_memory_sharded_measured.py and test_memory_zero_step_measured.py measure live tensor
bytes, so each case must start from what a new process holds: the imports' module-level objects and nothing of an
earlier case; tests/runner/two_steps.py runs each engine from a clean process group.

A script run as `python tests/<dir>/script.py` imports it after `sys.path.insert(0, <tests/>)`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def run_forked(cases: Iterable[str], body: Callable[[str], None]) -> None:
    """`body(case)` for each case in a forked child, one after the other; exits with status 1 naming the first
    case that failed (its traceback on stderr). A child dies with its parent (PR_SET_PDEATHSIG), so a rank that a
    launcher kills leaves no case behind."""
    for case in cases:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                body(case)
                code = 0
            except BaseException:  # noqa: BLE001 - reported, then the child exits
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"case {case} failed (exit {os.waitstatus_to_exitcode(status)})")
