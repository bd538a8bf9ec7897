"""A measured trial: a few real training steps of one plan, in its own process group, with a timeout.

The training itself is the profiler's worker (`profiler.worker`: the model from its config.json, LoRA
with peft, DDP / DeepSpeed ZeRO-0..3 / FSDP2 on random tokens, median step time, peak tensor bytes), so a
tune measures exactly what `ftplan profile run` measures. This module adds what a search needs around it
(`run_trial`): one process per rank with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT on a
free port) in a new process group that dies with the tuner, the whole group killed on timeout or as soon
as one rank fails (its peers would wait in a collective forever), and every ending turned into a
`TrialOutcome`: tokens/s and peak memory, or OOM / crash / hang with its reason. They are outcomes, not
exceptions: the study records them and goes on. CPU plans run over gloo (`DS_ACCELERATOR=cpu`,
`OMP_NUM_THREADS=1`).

Failure injection for tests and drills: FTPLAN_TRIAL_INJECT="REGEX=crash|oom|hang" makes every trial
whose plan name (`str(cfg)`) matches REGEX fail that way on rank 0, before the profiler's worker starts.
FTPLAN_TRIAL_DRILL=SECONDS replaces the training in every rank by a sleep of SECONDS and reports the time
model's step time and memory as the "measurement": the tuner's scheduling, claiming and fault handling
run for real (processes, process groups, timeouts, storages) in tests that cannot afford torch trials.
FTPLAN_TRIAL_DRILL_GATE=PATH (drills only) holds every drilled rank until the file PATH exists, so a test
orders workers by what it sees in the storage (a worker's trial stays RUNNING, heartbeats and all, until the
test opens the gate): it waits no longer than the trial's timeout, past which the trial is a hang like any other.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from planner.errors import PlanError
from planner.serialize import config_from_dict, config_to_dict
from planner.strategy import Attn, GradCkpt, Method, Offload, Optimizer, Stage, TrainConfig
from profiler.launcher import free_port, rank_env

INJECT_ENV = "FTPLAN_TRIAL_INJECT"
DRILL_ENV = "FTPLAN_TRIAL_DRILL"
DRILL_GATE_ENV = "FTPLAN_TRIAL_DRILL_GATE"
_GATE_POLL_S = 0.1
_TAIL_CHARS = 4000


class Failure(str, Enum):
    oom = "oom"
    crash = "crash"
    hang = "hang"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialOutcome:
    ok: bool
    tokens_per_s: float = 0.0
    step_time_s: float = 0.0  # the median timed step of the slowest rank
    step_times_s: tuple[float, ...] = ()  # every timed step, the slowest rank's time at each
    peak_bytes: float = 0.0  # max over ranks: peak live tensor bytes (max_memory_allocated on CUDA)
    peak_rss_bytes: float = 0.0  # max over ranks: the process's peak resident set
    wall_s: float = 0.0  # the whole trial, process start to exit
    failure: Failure | None = None
    reason: str = ""


def unsupported(cfg: TrainConfig) -> str | None:
    """Why the trial worker cannot run `cfg` (None: it can). Plans it cannot run are left to `ftplan run`."""
    if cfg.cluster.nodes > 1:
        return "measured trials run on one node"
    if cfg.offload is not Offload.none:
        return "the trial worker does not offload (offloaded plans run with `ftplan run`)"
    if cfg.tp > 1 or cfg.pp > 1:
        return "the trial worker runs data parallelism only (TP = PP = 1)"
    if cfg.method is Method.qlora:
        return "QLoRA trials need bitsandbytes on CUDA"
    if cfg.optimizer not in (Optimizer.adamw, Optimizer.sgd):
        return f"the trial worker runs torch optimizers (adamw, sgd), not {cfg.optimizer.value}"
    if cfg.grad_ckpt is GradCkpt.selective:
        return "transformers checkpoints whole decoder layers only (no selective recomputation)"
    if cfg.stage is not Stage.sft:
        return f"the trial worker runs the sft stage only, not {cfg.stage.value}"
    if cfg.attn is Attn.flash:
        return "the trial worker runs eager or SDPA attention (profiler.worker), not flash_attention_2"
    return None


def _inject(name: str) -> Failure | None:
    spec = os.environ.get(INJECT_ENV, "")
    if "=" not in spec:
        return None
    pattern, kind = spec.rsplit("=", 1)
    return Failure(kind) if re.search(pattern, name) else None


def _classify(returncode: int, log_tail: str) -> tuple[Failure, str]:
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    oom_marks = ("OutOfMemoryError", "out of memory", "MemoryError", "Cannot allocate memory")
    for ln in reversed(lines):
        if any(m in ln for m in oom_marks):
            return Failure.oom, ln[-300:]
    if returncode in (-9, 137) or "Signals.SIGKILL" in log_tail or "exitcode  : -9" in log_tail:
        return Failure.oom, "killed by SIGKILL (the kernel's OOM killer, most likely)"
    errors = [ln for ln in lines if re.search(r"(Error|Exception)\b.*:", ln) and "Traceback" not in ln]
    reason = errors[0] if errors else (lines[-1] if lines else f"exit code {returncode}")
    return Failure.crash, f"exit code {returncode}: {reason[-300:]}"


def _die_with_parent() -> None:
    """Ranks die with the tuner (a SIGKILLed tune leaves no orphan training): prctl(PR_SET_PDEATHSIG)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _wait_all(procs: list[subprocess.Popen], deadline: float) -> int | None:
    """The first non-zero exit code, 0 when every rank succeeded, None on timeout."""
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        bad = [c for c in codes if c not in (None, 0)]
        if bad:
            return bad[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)
    return None


def run_trial(cfg: TrainConfig, *, steps: int = 3, warmup_steps: int = 1, timeout_s: float = 180.0,
              workdir: Path | None = None, keep_logs: bool = False) -> TrialOutcome:
    """Run `cfg` for `warmup_steps + steps` optimizer steps on `cfg.world_size` local processes."""
    reason = unsupported(cfg)
    if reason:
        raise PlanError(f"cannot measure {cfg}: {reason}")
    tmp = Path(tempfile.mkdtemp(prefix="ftplan-trial-", dir=workdir))
    spec_path, out_dir, log_path = tmp / "spec.json", tmp / "out", tmp / "trial.log"
    # the spec format of profiler/worker.py
    spec_path.write_text(json.dumps({"config": config_to_dict(cfg), "warmup_steps": warmup_steps, "steps": steps,
                                     "model_path": None}))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH", "")) if p),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(cfg.world_size),
               LOCAL_WORLD_SIZE=str(cfg.world_size))
    env = rank_env(cfg, env)
    cmd = [sys.executable, "-m", "runner.trial", "--spec", str(spec_path), "--out", str(out_dir)]
    # one process per rank with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*), launched
    # directly: a torchrun parent would cost one more torch import per trial and adds nothing on one node
    start = time.monotonic()
    procs: list[subprocess.Popen] = []
    returncode: int | None = 0
    with log_path.open("w") as log:
        try:
            for rank in range(cfg.world_size):
                procs.append(subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                    process_group=procs[0].pid if procs else 0, preexec_fn=_die_with_parent))
            deadline = start + timeout_s
            returncode = _wait_all(procs, deadline)
        finally:
            # timeout, a failed rank (its peers would wait forever), Ctrl-C: take the whole group down
            if procs:
                with suppress(ProcessLookupError):
                    os.killpg(procs[0].pid, signal.SIGKILL)
                for p in procs:
                    p.wait()
    wall_s = time.monotonic() - start
    tail = log_path.read_text(errors="replace")[-_TAIL_CHARS:]
    try:
        if returncode is None:
            return TrialOutcome(ok=False, wall_s=wall_s, failure=Failure.hang,
                                reason=f"hung: no result after {timeout_s:.0f} s, process group killed")
        results = [out_dir / f"rank{r}.json" for r in range(cfg.world_size)]
        if returncode != 0 or not all(p.exists() for p in results):
            failure, why = _classify(returncode, tail)
            return TrialOutcome(ok=False, wall_s=wall_s, failure=failure, reason=why)
        ranks = [json.loads(p.read_text()) for p in results]
        # the slowest rank sets the pace; the most loaded one the memory (as profiler.launch.RunResult)
        step_time_s = max(float(r["step_time_s"]) for r in ranks)
        per_rank = [r.get("step_times_s") or [r["step_time_s"]] for r in ranks]
        per_step = tuple(max(ts) for ts in zip(*per_rank, strict=False))
        return TrialOutcome(ok=True, tokens_per_s=cfg.tokens_per_step / step_time_s, step_time_s=step_time_s,
                            step_times_s=per_step,
                            peak_bytes=float(max(r["peak_allocated_bytes"] for r in ranks)),
                            peak_rss_bytes=float(max(r["peak_rss_bytes"] for r in ranks)), wall_s=wall_s)
    finally:
        if not keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- each rank

def _drill(cfg: TrainConfig, seconds: float, out_dir: Path) -> None:
    """FTPLAN_TRIAL_DRILL: wait for the gate (FTPLAN_TRIAL_DRILL_GATE, when set), sleep, then report the time and
    memory models' figures as this rank's result."""
    from planner.memory import memory_per_gpu
    from planner.timing import step_time

    gate = os.environ.get(DRILL_GATE_ENV)
    while gate and not Path(gate).exists():  # the tuner's trial timeout bounds the wait (run_trial kills the group)
        time.sleep(_GATE_POLL_S)
    time.sleep(seconds)
    step_s = step_time(cfg).step_time_s
    out_dir.mkdir(parents=True, exist_ok=True)
    peak = memory_per_gpu(cfg).allocated  # what a real rank reports as peak_allocated_bytes
    result = {"rank": int(os.environ.get("RANK", "0")), "step_time_s": step_s, "step_times_s": [step_s],
              "peak_allocated_bytes": peak, "peak_rss_bytes": peak, "drill": True}
    (out_dir / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    """`python -m runner.trial --spec S --out D`: the failure injection, then `profiler.worker`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m runner.trial")
    ap.add_argument("--spec", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    cfg = config_from_dict(json.loads(args.spec.read_text())["config"])
    injected = _inject(str(cfg)) if os.environ.get("RANK", "0") == "0" else None
    if injected is Failure.crash:
        raise RuntimeError(f"injected failure ({INJECT_ENV}) for {cfg}")
    if injected is Failure.oom:
        raise MemoryError(f"injected out of memory ({INJECT_ENV}) for {cfg}")
    if injected is Failure.hang:
        time.sleep(10**6)
    drill_s = os.environ.get(DRILL_ENV)
    if drill_s:
        _drill(cfg, float(drill_s), args.out)
        return
    from profiler.worker import main as worker_main

    worker_main(["--spec", str(args.spec), "--out", str(args.out)])


if __name__ == "__main__":
    from profiler.launcher import exit_worker

    exit_worker(main)
