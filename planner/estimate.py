"""One configuration in, its memory (and, with the time model, speed) out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from planner.calibration import DEFAULT, Calibration
from planner.memory import MemoryBreakdown, memory_per_gpu
from planner.params import total_params
from planner.states import param_counts
from planner.strategy import TrainConfig
from planner.timing import StepTime, step_time

# Above this share of the GPU's memory a plan that fits is "tight": the caching allocator's fragmentation,
# a library upgrade or a longer batch than planned can push it over (PyTorch's CUDA-semantics notes on
# PYTORCH_CUDA_ALLOC_CONF expandable_segments: changing tensor sizes fragment the allocator's cache).
TIGHT_FRACTION = 0.90


def is_tight(device_bytes: float, gpu_bytes: float, fits: bool) -> bool:
    """A plan that fits with less than 10% of the GPU to spare (device reading, allocator cache included)."""
    return fits and device_bytes > TIGHT_FRACTION * gpu_bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """What a configuration must fit in, per GPU and per node."""

    headroom_fraction: float = 0.0  # keep this share of GPU memory free on top of the model's reserve
    host_bytes_per_node: float | None = None  # None: default_host_bytes(cluster)
    nvme_bytes_per_node: float = 2 * 2**40  # a 2 TiB local NVMe per node


def default_host_bytes(cfg: TrainConfig) -> float:
    """Servers carry about twice their GPU memory in host RAM (DGX A100: 1 TB for 640 GB of HBM)."""
    return 2.0 * cfg.cluster.gpu.hbm_bytes * cfg.cluster.gpus_per_node


class FitKind(str, Enum):
    gpu_memory = "gpu_memory"  # the peak per GPU
    host_memory = "host_memory"  # offloaded states per node
    nvme = "nvme"  # ZeRO-Infinity's NVMe per node


@dataclass(frozen=True, kw_only=True, slots=True)
class FitFailure:
    """What does not fit where: bytes needed against bytes available (per GPU, or per node for offload)."""

    kind: FitKind
    needed_bytes: float
    available_bytes: float


def fit_failures(cfg: TrainConfig, mem: MemoryBreakdown, limits: Limits) -> tuple[FitFailure, ...]:
    """Every capacity the configuration exceeds, GPU memory first."""
    out = []
    usable = cfg.cluster.gpu.hbm_bytes * (1 - limits.headroom_fraction)
    if mem.fit_bytes > usable:
        out.append(FitFailure(kind=FitKind.gpu_memory, needed_bytes=mem.fit_bytes, available_bytes=usable))
    host_limit = limits.host_bytes_per_node if limits.host_bytes_per_node is not None else default_host_bytes(cfg)
    if mem.host_bytes > host_limit:
        out.append(FitFailure(kind=FitKind.host_memory, needed_bytes=mem.host_bytes, available_bytes=host_limit))
    if mem.nvme_bytes > limits.nvme_bytes_per_node:
        out.append(FitFailure(kind=FitKind.nvme, needed_bytes=mem.nvme_bytes,
                              available_bytes=limits.nvme_bytes_per_node))
    return tuple(out)


def fit_reason(cfg: TrainConfig, failure: FitFailure) -> str:
    """One line for people, as plan.json's `fit_reasons` carries it."""
    need, have = failure.needed_bytes / 2**30, failure.available_bytes / 2**30
    if failure.kind is FitKind.gpu_memory:
        return f"needs {need:.1f} GiB per GPU, {cfg.cluster.gpu.name} has {have:.1f} GiB"
    where = "host memory" if failure.kind is FitKind.host_memory else "NVMe"
    return f"offload needs {need:.0f} GiB of {where} per node, {have:.0f} GiB available"


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate:
    config: TrainConfig
    memory: MemoryBreakdown
    params_total: int
    params_trainable: int
    gpu_memory_bytes: int
    fit_failures: tuple[FitFailure, ...]
    time: StepTime | None = None  # the time model (planner.timing); None for plans the search rejected

    @property
    def fits(self) -> bool:
        return not self.fit_failures

    @property
    def fit_reasons(self) -> tuple[str, ...]:
        return tuple(fit_reason(self.config, f) for f in self.fit_failures)

    @property
    def tight(self) -> bool:
        return is_tight(self.memory.device_wanted, self.gpu_memory_bytes, self.fits)


def trainable_params(cfg: TrainConfig) -> int:
    """Trainable parameters of the whole model (planner.states.param_counts, memoized)."""
    return param_counts(cfg.model, cfg.adapter, cfg.stage).trainable


def estimate(cfg: TrainConfig, limits: Limits = Limits(), cal: Calibration = DEFAULT,
             timed: bool | None = True) -> Estimate:
    """Memory and fit of one configuration, and its time (`timed`: always; None: only if it fits)."""
    mem = memory_per_gpu(cfg, cal)
    failures = fit_failures(cfg, mem, limits)
    time = step_time(cfg, cal) if timed or (timed is None and not failures) else None
    return Estimate(config=cfg, memory=mem, params_total=total_params(cfg.model),
                    params_trainable=trainable_params(cfg), gpu_memory_bytes=cfg.cluster.gpu.hbm_bytes,
                    fit_failures=failures, time=time)


def estimate_to_dict(est: Estimate) -> dict[str, Any]:
    from planner.notes import plan_notes
    from planner.runnable import unrunnable_reasons
    from planner.serialize import config_to_dict

    mem = est.memory
    not_run = unrunnable_reasons(est.config)
    return {
        "name": str(est.config),
        "strategy": est.config.strategy_name(),
        "runnable": not not_run,  # whether `ftplan run` executes this plan (planner/runnable.py)
        "unrunnable_reasons": not_run,
        "params_total": est.params_total,
        "params_trainable": est.params_trainable,
        "gpu_memory_bytes": est.gpu_memory_bytes,
        "fits": est.fits,
        "tight": est.tight,
        "fit_reasons": list(est.fit_reasons),
        "peak_phase": mem.phase,
        "memory_per_gpu_bytes": mem.as_dict(),
        # torch.cuda.max_memory_allocated, max_memory_reserved, and nvidia-smi's memory in use (planner/memory.py)
        "memory_readings_bytes": mem.readings(),
        "fit_bytes": round(mem.fit_bytes),  # what the fit verdict compares with the GPU (less --headroom)
        "other_bytes": {k: round(v) for k, v in mem.other_items.items()},
        "host_memory_bytes_per_node": round(mem.host_bytes),
        "nvme_bytes_per_node": round(mem.nvme_bytes),
        **time_to_dict(est.time),
        "config": config_to_dict(est.config),
        **({"notes": notes} if (notes := plan_notes(est.config)) else {}),  # planner/notes.py
    }


def time_to_dict(t: StepTime | None) -> dict[str, Any]:
    """The time model's outputs; rates are the whole job's (every GPU together)."""
    if t is None:
        return {}
    out = {"step_time_s": t.step_time_s, "tokens_per_s": t.tokens_per_s, "samples_per_s": t.samples_per_s,
           "mfu": t.mfu, "hfu": t.hfu, "time_breakdown_s": dict(t.breakdown_s)}
    if "generation" in t.breakdown_s:  # online RL stages (planner.rl.timing)
        out["generation_share"] = t.breakdown_s["generation"] / t.step_time_s if t.step_time_s else 0.0
    return out
