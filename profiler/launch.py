"""Launch `profiler.worker` under torchrun and collect one JSON result per rank.

CPU ranks talk over gloo with DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu) and one OpenMP thread
each, so that N processes share the cores instead of oversubscribing them.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from planner.gpus import is_cpu
from planner.serialize import config_to_dict
from planner.strategy import CrossEntropy, Kernels, TrainConfig
from profiler.launcher import failure_cause, free_port, rank_env, torchrun_command

# A small Llama for CPU profiles: Llama-2's shapes scaled down (hidden 768, 12 layers, SwiGLU width
# 8/3 h rounded as Llama does, the Llama-2 tokenizer's 32000 tokens): 134M parameters, enough for
# memory ratios that look like a 7B's without the run taking more than seconds per step on a CPU.
SMALL_LLAMA: dict[str, Any] = {
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
    "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
    "max_position_embeddings": 2048, "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-5,
}


def write_model_config(config: dict[str, Any], directory: Path) -> Path:
    """A model directory holding only config.json (random weights: memory and time do not need trained ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


@dataclass(frozen=True, kw_only=True, slots=True)
class RunResult:
    config: TrainConfig
    ranks: tuple[dict[str, Any], ...]

    @property
    def peak_bytes(self) -> int:
        """The most loaded rank's peak of live tensor bytes (max_memory_allocated on CUDA)."""
        return max(r["peak_allocated_bytes"] for r in self.ranks)

    @property
    def step_time_s(self) -> float:
        return max(r["step_time_s"] for r in self.ranks)

    @property
    def tokens_per_s(self) -> float:
        c = self.config
        return c.micro_batch * c.seq_len * c.grad_accum * c.world_size / self.step_time_s

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.ranks[0].get("versions", {}))


def check_device(cfg: TrainConfig) -> None:
    """The devices the plan names must exist here."""
    if cfg.cluster.nodes != 1:
        raise PlanError(f"`profile run` runs on this machine only; {cfg.cluster.nodes} nodes were asked for")
    if is_cpu(cfg.cluster.gpu):
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is installed with the profiler
        raise PlanError("profiling on GPUs needs torch") from None
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < cfg.world_size:
        raise PlanError(f"--gpus asks for {cfg.world_size}x{cfg.cluster.gpu.name} but this machine has "
                        f"{have} CUDA device(s); use --gpus {cfg.world_size}xCPU to profile on the CPU")


def launch(cfg: TrainConfig, *, model_path: Path | None = None, warmup_steps: int = 1, steps: int = 2,
           timeout_s: float = 1800.0, track_memory: bool = True) -> RunResult:
    """Run the worker on `cfg.world_size` local processes; PlanError naming the cause on failure.
    `track_memory=False` times the steps without the CPU storage tracker (which slows them down)."""
    spec = _spec(cfg, model_path, warmup_steps, steps, track_memory)
    return RunResult(config=cfg, ranks=_torchrun(cfg, spec, timeout_s, [""])[0])


def launch_many(cfgs: list[TrainConfig], *, model_path: Path | None = None, warmup_steps: int = 1, steps: int = 2,
                timeout_s: float = 3600.0, track_memory: bool = False) -> list[RunResult]:
    """Several configurations of one world size, one after the other in one torchrun (profiler.worker's
    `run_many`): the interpreter and library start-up is paid once."""
    if not cfgs or len({c.world_size for c in cfgs}) != 1:
        raise PlanError("launch_many needs configurations of one world size")
    spec = {"runs": [_spec(c, model_path, warmup_steps, steps, track_memory) for c in cfgs]}
    found = _torchrun(cfgs[0], spec, timeout_s, [f"run{i}" for i in range(len(cfgs))])
    return [RunResult(config=c, ranks=ranks) for c, ranks in zip(cfgs, found, strict=True)]


def _spec(cfg: TrainConfig, model_path: Path | None, warmup_steps: int, steps: int,
          track_memory: bool) -> dict[str, Any]:
    check_device(cfg)
    if cfg.tp > 1 or cfg.pp > 1:
        raise PlanError("`profile run` measures data parallelism (DDP, ZeRO, FSDP); --tp/--pp are not supported")
    if cfg.cross_entropy is not CrossEntropy.standard or cfg.kernels is not Kernels.eager:
        # the worker runs transformers' own forward and loss under the engine's wrapper; torchtune's chunked
        # loss and Liger's kernels would replace them (the dry run follows --cross-entropy chunked)
        raise PlanError("measured steps run transformers' loss and kernels: re-plan with --cross-entropy standard "
                        "--kernels eager, or check chunked loss memory with `ftplan profile dry-run`")
    if cfg.torch_compile:
        raise PlanError("measured steps run eager PyTorch (a compile would dominate a few steps); re-plan "
                        "without --compile")
    return {"config": config_to_dict(cfg), "warmup_steps": warmup_steps, "steps": steps,
            # absolute: the workers start in another directory
            "model_path": None if model_path is None else str(Path(model_path).resolve()),
            "track_memory": track_memory}


# How long torchrun's agent may take to stop its ranks after SIGTERM: it gives them 30 s before SIGKILL
# (torch/distributed/elastic/multiprocessing/api.py, PContext.close's timeout)
STOP_GRACE_S = 40.0


def run_stopping_ranks(cmd: list[str], *, env: dict[str, str], timeout_s: float, cwd: Path,
                       grace_s: float = STOP_GRACE_S) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s), except that a torchrun past its time
    is stopped with SIGTERM first, then SIGKILL after `grace_s`: its agent starts every rank in a session of its own
    (torch/distributed/elastic/multiprocessing/subprocess_handler/subprocess_handler.py, start_new_session=True) and
    stops them on SIGTERM (SignalException -> the agent's _shutdown), while subprocess.run's SIGKILL would leave the
    ranks running, holding their GPU, after the caller has gone on. Raises TimeoutExpired as subprocess.run does."""
    with subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.communicate(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torchrun(cfg: TrainConfig, spec: dict[str, Any], timeout_s: float,
              subdirs: list[str]) -> list[tuple[dict[str, Any], ...]]:
    """Run the worker under torchrun; the per-rank results found in each of `subdirs` of its output."""
    n = cfg.world_size
    with tempfile.TemporaryDirectory(prefix="ftplan-profile-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        out = Path(tmp) / "out"
        env = rank_env(cfg)
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
        cmd = torchrun_command(nproc_per_node=n, master_port=free_port()) + [
            "-m", "profiler.worker", "--spec", str(spec_file), "--out", str(out)]
        try:
            proc = run_stopping_ranks(cmd, env=env, timeout_s=timeout_s, cwd=Path(__file__).resolve().parent.parent)
        except subprocess.TimeoutExpired:
            raise PlanError(f"torchrun ({n} process(es), {cfg.strategy_name()}) did not finish in {timeout_s:.0f} s"
                            ) from None
        if proc.returncode != 0:
            raise PlanError(f"torchrun failed (exit {proc.returncode}, {cfg.strategy_name()} on {n} process(es)): "
                            f"{failure_cause(proc.stderr + proc.stdout)}")
        found = []
        for sub in subdirs:
            ranks = []
            for r in range(n):
                f = out / sub / f"rank{r}.json"
                if not f.exists():
                    raise PlanError(f"torchrun finished but rank {r} wrote no result ({failure_cause(proc.stderr)})")
                ranks.append(json.loads(f.read_text()))
            found.append(tuple(ranks))
    return found

