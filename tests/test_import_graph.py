"""Planning imports neither torch, transformers nor deepspeed, not even indirectly (STYLE.md: the
planner is pure Python; `python -X importtime -m ftplan plan ...` must not show them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "deepspeed", "peft", "accelerate", "bitsandbytes")


def imported_modules(*args: str) -> set[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftplan", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = set()
    for line in done.stderr.splitlines():
        # "import time:   self [us] |  cumulative | imported package"
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                modules.add(name)
    assert "planner.memory" in modules  # the parse worked
    return modules


@pytest.mark.parametrize("command", [
    ("plan", "--model", "7b", "--gpus", "8xA800"),
    ("estimate", "--model", "7b", "--gpus", "8xA800", "--method", "full", "--zero", "3"),
], ids=["plan", "estimate"])
def test_no_heavy_imports(command: tuple[str, ...]) -> None:
    heavy = sorted(m for m in imported_modules(*command) if m.split(".")[0] in HEAVY)
    assert not heavy, f"planning imported {heavy[:10]}"
