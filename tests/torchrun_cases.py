"""The parent side of the probes that tests/forked_cases.py runs: every case of a probe script from one torchrun of
2 CPU ranks over gloo, each case with its own rendezvous port (the probe's rank 0 serves that case's store), and
the JSON line rank 0 prints per case read back. Used by tests/validation's measured-memory and call-count tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cases(probe: Path, cases: dict[str, str], env: dict[str, str], timeout_s: int) -> dict[str, dict]:
    """{case name: what rank 0 printed} for `cases` ({argument without its port: case name}): one torchrun of
    `probe`, each case's argument given a free port as its last field; `env` adds to this process's environment
    (OMP_NUM_THREADS=1 and the repository on PYTHONPATH always)."""
    args = {f"{arg}:{free_port()}": name for arg, name in cases.items()}
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(probe), *args]
    res = subprocess.run(cmd, cwd=probe.parent, env=full_env, capture_output=True, text=True, timeout=timeout_s)
    assert res.returncode == 0, res.stderr[-3000:]
    found = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return {args[got.pop("case")]: got for got in found}
