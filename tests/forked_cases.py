"""Run several probe cases in one interpreter start: torch, transformers, peft and DeepSpeed are imported once by
the caller, then every case runs in a child forked from it, a fresh process as far as the case can tell (its own
tensors, allocator and DeepSpeed / torch.distributed state; nothing it leaves behind reaches the next case). The
probes of tests/validation/test_memory_sharded_measured.py and test_memory_zero_step_measured.py measure live tensor
bytes, so each case must start from what a new process holds: the imports' module-level objects and nothing of an
earlier case; tests/runner/two_steps.py runs each engine from a clean process group.

A script run as `python tests/<dir>/script.py` imports it after `sys.path.insert(0, <tests/>)`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from functools import partial

from profiler.launcher import run_in_fork


def run_forked(cases: Iterable[str], body: Callable[[str], None]) -> None:
    """`body(case)` for each case in a forked child, one after the other; exits with status 1 naming the first
    case that failed (its traceback on stderr). A child dies with its parent (PR_SET_PDEATHSIG), so a rank that a
    launcher kills leaves no case behind."""
    for case in cases:
        code = run_in_fork(partial(body, case))
        if code != 0:
            sys.exit(f"case {case} failed (exit {code})")
