"""A measured trial: a few real training steps of one plan, in its own process group, with a timeout.

Parent side (`run_trial`): writes the plan, launches one `python -m runner.trial PLAN RESULT` per rank
with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT on a free port) in a new process group
that dies with the tuner, kills the whole group on timeout or when one rank fails, and turns the outcome
into a `TrialOutcome` (tokens/s and peak memory, or a failure kind with its reason). Out-of-memory, crashes
and hangs are outcomes, not exceptions: the study records them and goes on.

Worker side (`main`, on every rank; `torchrun -m runner.trial` works too): builds the model from its config.json (no hub
download), applies LoRA with peft, trains with DDP or DeepSpeed ZeRO-0..3 (the ds_config from
`runner.ds_config.build_ds_config`, with a torch AdamW so nothing is compiled) on random tokens, and
rank 0 writes the result. CPU plans run over gloo with `DS_ACCELERATOR=cpu` and `OMP_NUM_THREADS=1`.

Failure injection for tests and drills: FTPLAN_TRIAL_INJECT="REGEX=crash|oom|hang" makes every trial
whose plan name (`str(cfg)`) matches REGEX fail that way on rank 0, before its first step.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from planner.serialize import config_from_dict, config_to_dict
from planner.strategy import Attn, Engine, GradCkpt, Method, Offload, Optimizer, Precision, Stage, TrainConfig

INJECT_ENV = "FTPLAN_TRIAL_INJECT"
_TAIL_CHARS = 4000


class Failure(str, Enum):
    oom = "oom"
    crash = "crash"
    hang = "hang"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialOutcome:
    ok: bool
    tokens_per_s: float = 0.0
    step_time_s: float = 0.0
    peak_bytes: float = 0.0  # max over ranks: device memory on CUDA, peak resident set (RSS) on the CPU
    memory_kind: str = ""
    wall_s: float = 0.0  # the whole trial, process start to exit
    failure: Failure | None = None
    reason: str = ""


def on_cpu(cfg: TrainConfig) -> bool:
    return cfg.cluster.gpu.name == "CPU"


def unsupported(cfg: TrainConfig) -> str | None:
    """Why the trial worker cannot run `cfg` (None: it can). Plans it cannot run are left to `ftplan run`."""
    if cfg.cluster.nodes > 1:
        return "measured trials run on one node"
    if cfg.engine is Engine.fsdp:
        return "the trial worker runs DDP and DeepSpeed, not FSDP"
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
    if on_cpu(cfg):
        if cfg.attn is Attn.flash:
            return "flash_attention_2 needs CUDA"
        if cfg.offload is not Offload.none:
            return "offloading to the host is meaningless when the device is the host"
    return None


def _inject(name: str) -> Failure | None:
    spec = os.environ.get(INJECT_ENV, "")
    if "=" not in spec:
        return None
    pattern, kind = spec.rsplit("=", 1)
    return Failure(kind) if re.search(pattern, name) else None


def _classify(returncode: int, log_tail: str) -> tuple[Failure, str]:
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    oom_marks = ("OutOfMemoryError", "out of memory", "CUDA error: out of memory", "Cannot allocate memory")
    for ln in reversed(lines):
        if any(m in ln for m in oom_marks):
            return Failure.oom, ln[-300:]
    if returncode in (-9, 137) or "Signals.SIGKILL" in log_tail or "exitcode  : -9" in log_tail:
        return Failure.oom, "killed by SIGKILL (the kernel's OOM killer, most likely)"
    errors = [ln for ln in lines if re.search(r"(Error|Exception)\b.*:", ln) and "Traceback" not in ln]
    reason = errors[0] if errors else (lines[-1] if lines else f"exit code {returncode}")
    return Failure.crash, f"exit code {returncode}: {reason[-300:]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    plan_path, result_path, log_path = tmp / "plan.json", tmp / "result.json", tmp / "trial.log"
    plan_path.write_text(json.dumps(config_to_dict(cfg)))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH", "")) if p),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(cfg.world_size),
               LOCAL_WORLD_SIZE=str(cfg.world_size))
    if on_cpu(cfg):
        env["DS_ACCELERATOR"] = "cpu"
    cmd = [sys.executable, "-m", "runner.trial", str(plan_path), str(result_path), f"--steps={steps}",
           f"--warmup={warmup_steps}"]
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
        if returncode != 0 or not result_path.exists():
            failure, why = _classify(returncode, tail)
            return TrialOutcome(ok=False, wall_s=wall_s, failure=failure, reason=why)
        data = json.loads(result_path.read_text())
        return TrialOutcome(ok=True, tokens_per_s=data["tokens_per_s"], step_time_s=data["step_time_s"],
                            peak_bytes=data["peak_bytes"], memory_kind=data["memory_kind"], wall_s=wall_s)
    finally:
        if not keep_logs:
            for p in (plan_path, result_path, log_path):
                p.unlink(missing_ok=True)
            tmp.rmdir()


# ---------------------------------------------------------------- worker (runs under torchrun)

def _hf_config(cfg: TrainConfig) -> dict[str, Any]:
    from profiler.dryrun import hf_config_dict

    src = Path(cfg.model.source)
    if not cfg.model.source.startswith("catalog:") and src.is_dir():
        return json.loads((src / "config.json").read_text())
    return hf_config_dict(cfg.model)


def _build_model(cfg: TrainConfig) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from planner.params import resolve_lora_targets

    hf = AutoConfig.for_model(**_hf_config(cfg))
    hf._attn_implementation = {Attn.eager: "eager", Attn.sdpa: "sdpa", Attn.flash: "flash_attention_2"}[cfg.attn]
    hf.use_cache = False
    torch.manual_seed(0)  # identical initial weights on every rank, as a checkpoint load gives
    model = AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    if cfg.method is Method.lora:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(resolve_lora_targets(cfg.model, cfg.lora_targets)),
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    if cfg.grad_ckpt is GradCkpt.full:
        # non-reentrant checkpointing, transformers' Trainer default since 4.35
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method is Method.lora:
            model.enable_input_require_grads()
    model.train()
    return model


def _optimizer(cfg: TrainConfig, model: Any) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer is Optimizer.sgd:
        return torch.optim.SGD(params, lr=1e-5, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-5)


def _peak_bytes(device: Any) -> tuple[float, str]:
    import resource

    import torch

    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device)), "device allocated"
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024), "host RSS"  # Linux: KiB


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch
    import torch.distributed as dist

    ap = argparse.ArgumentParser(prog="python -m runner.trial")
    ap.add_argument("plan")
    ap.add_argument("result")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    cfg = config_from_dict(json.loads(Path(args.plan).read_text()))
    cpu = on_cpu(cfg)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu") if cpu else torch.device("cuda", local_rank)
    if not cpu:
        torch.cuda.set_device(device)
    dist.init_process_group("gloo" if cpu else "nccl")
    injected = _inject(str(cfg)) if rank == 0 else None
    if injected is Failure.crash:
        raise RuntimeError(f"injected failure ({INJECT_ENV}) for {cfg}")
    if injected is Failure.oom:
        raise torch.OutOfMemoryError(f"injected out of memory ({INJECT_ENV}) for {cfg}")
    if injected is Failure.hang:
        time.sleep(10**6)

    model = _build_model(cfg)
    sixteen = {Precision.bf16_mixed: torch.bfloat16, Precision.fp16_mixed: torch.float16}.get(cfg.precision)
    if cfg.engine is Engine.deepspeed:
        import deepspeed

        from runner.ds_config import build_ds_config

        ds = build_ds_config(cfg)
        # a torch optimizer (no fused-Adam build) unless the plan offloads (then DeepSpeed's CPU Adam)
        client_opt = None
        if cfg.offload is Offload.none:
            ds.pop("optimizer", None)
            ds.pop("scheduler", None)
            ds["zero_allow_untested_optimizer"] = True
            client_opt = _optimizer(cfg, model)
        ds["steps_per_print"] = 10**9
        engine, *_ = deepspeed.initialize(model=model, optimizer=client_opt, config=ds,
                                          model_parameters=[p for p in model.parameters() if p.requires_grad])

        def step(batch: Any) -> None:
            for micro in batch:
                loss = engine(input_ids=micro, labels=micro).loss
                engine.backward(loss)
                engine.step()
    else:
        from torch.nn.parallel import DistributedDataParallel

        model.to(device)
        wrapped = DistributedDataParallel(model, device_ids=None if cpu else [local_rank])
        opt = _optimizer(cfg, model)
        scaler = torch.amp.GradScaler(device.type) if cfg.precision is Precision.fp16_mixed else None

        def step(batch: Any) -> None:
            for i, micro in enumerate(batch):
                last = i == len(batch) - 1
                ctx = torch.autocast(device.type, dtype=sixteen) if sixteen is not None else nullcontext()
                sync = nullcontext() if last else wrapped.no_sync()
                with sync:
                    with ctx:
                        loss = wrapped(input_ids=micro, labels=micro).loss / len(batch)
                    (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)

    gen = torch.Generator().manual_seed(1000 + rank)
    vocab = int(_hf_config(cfg)["vocab_size"])

    def batch() -> list[Any]:
        return [torch.randint(0, vocab, (cfg.micro_batch, cfg.seq_len), generator=gen).to(device)
                for _ in range(cfg.grad_accum)]

    for _ in range(args.warmup):
        step(batch())
    data = [batch() for _ in range(args.steps)]
    if not cpu:
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for b in data:
        step(b)
    if not cpu:
        torch.cuda.synchronize()
    dist.barrier()
    elapsed_s = time.perf_counter() - t0
    peak, kind = _peak_bytes(device)
    stats = torch.tensor([elapsed_s, peak], dtype=torch.float64, device=device if not cpu else "cpu")
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    if rank == 0:
        from planner.atomic import write_text_atomic

        step_s = float(stats[0]) / args.steps
        write_text_atomic(Path(args.result), json.dumps({
            "tokens_per_s": cfg.tokens_per_step / step_s, "step_time_s": step_s, "peak_bytes": float(stats[1]),
            "memory_kind": kind, "steps": args.steps, "name": str(cfg)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
