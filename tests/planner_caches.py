"""Emptying every lru_cache of the loaded planner modules, for tests that compare memo-served results with fresh
computations (tests/planner/test_search_exact.py, test_rl_search_exact.py)."""

from __future__ import annotations

import sys


def clear_lru_caches() -> None:
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "planner" or module is None:
            continue
        for value in list(vars(module).values()):
            clear = getattr(value, "cache_clear", None)
            if callable(clear):
                clear()
