"""What nvidia-smi says of the board: `nvidia-smi -q` excerpts and the memory query, read without torch.

`nvidia-smi -q` prints "Key : value" lines, indented four spaces per section level under a header per GPU
("GPU 00000000:00:05.0"); section headers carry no " : ". The excerpts keep the lines a device check needs beside its
measurements: the board and driver, the memory, the clocks, the power cap, the clock event reasons (NVIDIA's
nvidia-smi documentation, "-q" output fields; "Clocks Throttle Reasons" is the older drivers' name of "Clocks Event
Reasons", "Power Readings" of "GPU Power Readings"). The memory query reads the device's memory in use from outside
any process (`--query-gpu=name,memory.total,memory.used --format=csv,noheader,nounits`, MiB).
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from planner.errors import PlanError

EXCERPT_SECTIONS = ("Product Name", "Product Architecture", "Driver Version", "CUDA Version", "Persistence Mode",
                    "Compute Mode", "Performance State", "MIG Mode", "FB Memory Usage", "Clocks", "Max Clocks",
                    "Applications Clocks", "GPU Power Readings", "Power Readings", "Clocks Event Reasons",
                    "Clocks Throttle Reasons", "Temperature", "Max Customer Boost Clocks")
_LINE = re.compile(r"^(\s*)(\S.*?)\s+:\s?(.*)$")  # "    Total      : 81559 MiB"; a GPU's header has no " : "
_GPU_HEADER = re.compile(r"^GPU [0-9A-Fa-f]{4,}:")
MIB = 2**20


def parse_query_q(text: str) -> dict[str, str]:
    """Every "Key : value" line of `nvidia-smi -q` as "Section/Sub/Key" -> value (the GPU's header left out of the
    path: one board)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, section name)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("="):
            continue
        indent = len(line) - len(line.lstrip(" "))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        hit = _LINE.match(line)
        if hit is None:
            stack.append((indent, line.strip()))
            continue
        path = [name for _, name in stack if not _GPU_HEADER.match(name)] + [hit.group(2).strip()]
        out["/".join(path)] = hit.group(3).strip()
    return out


def excerpts(fields: dict[str, str]) -> dict[str, str]:
    """The fields under EXCERPT_SECTIONS."""
    return {k: v for k, v in fields.items() if any(part in EXCERPT_SECTIONS for part in k.split("/"))}


def parse_memory_query(text: str) -> dict[str, Any]:
    """The first board of the memory query: name, total and used bytes."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 3:
        raise PlanError(f"nvidia-smi's memory query answered {line[:120]!r}, not 'name, total, used'")
    name, total, used = parts
    return {"name": name, "total_bytes": int(float(total) * MIB), "used_bytes": int(float(used) * MIB)}


def run_nvidia_smi(args: list[str], timeout_s: float = 30.0) -> str:
    """nvidia-smi's output for `args`; PlanError (one line) where it is missing, fails or hangs."""
    try:
        proc = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise PlanError("nvidia-smi is not on the PATH (no NVIDIA driver here)") from None
    except subprocess.TimeoutExpired:
        raise PlanError(f"nvidia-smi {' '.join(args)} did not answer in {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise PlanError(f"nvidia-smi {' '.join(args)} failed (exit {proc.returncode}): "
                        f"{(proc.stderr or proc.stdout).strip()[:200]}")
    return proc.stdout


MEMORY_QUERY = ["--query-gpu=name,memory.total,memory.used", "--format=csv,noheader,nounits"]
