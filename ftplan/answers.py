"""What `estimate`, `plan` and `scale` compute, before anything is printed: one code path for the CLI
(`--json` and the rich tables) and for `ftplan serve`'s JSON API. Keyword arguments are the CLI's
option names; each answer's `json()` is exactly what `--json` prints."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftplan.options import LORA_DROPOUT, switches
from planner.errors import PlanError
from planner.estimate import Estimate, Limits
from planner.search import PlanResult
from planner.strategy import (
    Attn,
    CrossEntropy,
    FsdpStrategy,
    GradCkpt,
    Kernels,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
    Stage,
    TrainConfig,
)


def limits_from(host_memory: float | None, nvme: float, headroom: float) -> Limits:
    # written so that NaN fails too (NaN passes `<= 0`, and would switch the capacity check off)
    if host_memory is not None and not 0 < host_memory < math.inf:
        raise PlanError(f"--host-memory must be a positive number of GiB, got {host_memory:g}")
    if not 0 <= nvme < math.inf:
        raise PlanError(f"--nvme must not be negative, got {nvme:g}")
    if not 0 <= headroom < 1:
        raise PlanError(f"--headroom must lie in [0, 1), got {headroom:g}")
    return Limits(headroom_fraction=headroom,
                  host_bytes_per_node=None if host_memory is None else host_memory * 2**30,
                  nvme_bytes_per_node=nvme * 2**30)


def parse_choices(text: str | None, enum: type, option: str) -> tuple:
    """A comma-separated list of enum values (`adamw,adamw_8bit`); None when not given."""
    if text is None:
        return ()
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            out.append(enum(part))
        except ValueError:
            raise PlanError(f"{option}: unknown value '{part}'; choose from "
                            f"{', '.join(e.value for e in enum)}") from None
    if not out:
        raise PlanError(f"{option} is empty")
    return tuple(dict.fromkeys(out))


def check_positions(base: TrainConfig, seq_len: int) -> None:
    if seq_len > base.model.max_seq_len:
        raise PlanError(f"--seq-len {seq_len} exceeds the {base.model.max_seq_len} positions of {base.model.name}"
                        " (add --rope-scaling, e.g. linear:2.0)")


@dataclass(frozen=True)
class EstimateAnswer:
    est: Estimate
    job: Any  # planner.timing.JobTime | None

    def json(self) -> dict[str, Any]:
        from planner.estimate import estimate_to_dict
        from planner.timing import job_to_dict

        return {**estimate_to_dict(self.est), **({"job": job_to_dict(self.job)} if self.job else {})}


def estimate_answer(*, model: str, gpus: str, method: Method = Method.lora, lora_r: int = 8, lora_alpha: int = 16,
                    lora_targets: str = "all", quant: Quant | None = None,
                    precision: Precision = Precision.bf16_mixed, optimizer: Optimizer = Optimizer.adamw,
                    zero: int | None = None, offload: Offload = Offload.none,
                    offload_device: OffloadDevice = OffloadDevice.cpu, fsdp: FsdpStrategy | None = None,
                    tp: int = 1, pp: int = 1, sequence_parallel: bool = False, micro_batch: int = 1,
                    grad_accum: int = 1, seq_len: int = 2048, grad_ckpt: GradCkpt = GradCkpt.none,
                    attn: Attn = Attn.sdpa, stage: Stage = Stage.sft, freeze_layers: int = 0,
                    rope_scaling: str | None = None, host_memory: float | None = None, nvme: float = 2048.0,
                    headroom: float = 0.0, calibration: Path | None = None, tokens: float | None = None,
                    samples: float | None = None, epochs: float = 1.0,
                    cross_entropy: CrossEntropy = CrossEntropy.standard, kernels: Kernels = Kernels.eager,
                    activation_offload: bool = False, fsdp_version: int = 2,
                    torch_compile: bool = False, bnb_version: str = "",
                    frozen_fp32: bool = False, lora_dropout: float = LORA_DROPOUT,
                    kbit_prep: bool = True) -> EstimateAnswer:
    from planner.build import build_config
    from planner.calibration import load_calibration
    from planner.estimate import estimate
    from planner.timing import job_size, job_time

    cfg = build_config(model=model, gpus=gpus, method=method, lora_r=lora_r, lora_alpha=lora_alpha,
                       lora_targets=lora_targets, quant=quant, precision=precision, optimizer=optimizer, zero=zero,
                       offload=offload, offload_device=offload_device, fsdp=fsdp, tp=tp, pp=pp,
                       sequence_parallel=sequence_parallel, micro_batch=micro_batch, grad_accum=grad_accum,
                       seq_len=seq_len, grad_ckpt=grad_ckpt, attn=attn, stage=stage, freeze_layers=freeze_layers,
                       rope_scaling=rope_scaling,
                       **switches(cross_entropy, kernels, activation_offload, fsdp_version, torch_compile, bnb_version,
                                  frozen_fp32, lora_dropout, kbit_prep))
    size = job_size(tokens, samples, epochs)
    est = estimate(cfg, limits_from(host_memory, nvme, headroom), load_calibration(calibration))
    job = job_time(est.time, cfg, size) if size is not None and est.time is not None else None
    return EstimateAnswer(est, job)


@dataclass(frozen=True)
class PlanAnswer:
    result: PlanResult
    size: Any  # planner.timing.JobSize | None
    top: int
    all_plans: bool

    @property
    def job(self) -> Any:
        from planner.timing import job_time

        best = self.result.plans[0] if self.result.plans else None
        if self.size is None or best is None or best.time is None:
            return None
        return job_time(best.time, best.config, self.size)

    def chosen(self) -> list[Estimate]:
        """The plans `--json` lists, best first: every fitting plan with --all, else the best `top` per method."""
        if self.all_plans:
            return list(self.result.plans)
        shown: dict[Method, int] = {}
        out = []
        for est in self.result.plans:
            if shown.get(est.config.method, 0) < self.top:
                shown[est.config.method] = shown.get(est.config.method, 0) + 1
                out.append(est)
        return out

    def json(self) -> dict[str, Any]:
        from planner.estimate import estimate_to_dict
        from planner.timing import job_time, job_to_dict

        plans = []
        for est in self.chosen():
            entry = estimate_to_dict(est)
            if self.size is not None and est.time is not None:
                entry["job"] = job_to_dict(job_time(est.time, est.config, self.size))
            plans.append(entry)
        r = self.result
        return {"plans": plans, "candidates_evaluated": r.candidates_evaluated, "valid": r.valid,
                "fitting": len(r.plans), "rejected": r.rejected}


def plan_answer(*, model: str, gpus: str, method: list[Method] | None = None, seq_len: int = 2048,
                global_batch: int | None = None, lora_r: int = 8, lora_alpha: int = 16, lora_targets: str = "all",
                precision: Precision = Precision.bf16_mixed, stage: Stage = Stage.sft,
                rope_scaling: str | None = None, host_memory: float | None = None, nvme: float = 2048.0,
                headroom: float = 0.0, top: int = 3, all_plans: bool = False, calibration: Path | None = None,
                tokens: float | None = None, samples: float | None = None, epochs: float = 1.0,
                optimizer: Optimizer = Optimizer.adamw, optimizers: str | None = None, attns: str | None = None,
                cross_entropy: CrossEntropy = CrossEntropy.standard, kernels: Kernels = Kernels.eager,
                activation_offload: bool = False, fsdp_version: int = 2,
                torch_compile: bool = False, bnb_version: str = "",
                frozen_fp32: bool = False, lora_dropout: float = LORA_DROPOUT, kbit_prep: bool = True,
                include_unrunnable: bool = False) -> PlanAnswer:
    from planner.build import build_config
    from planner.calibration import load_calibration
    from planner.runnable import runnable_first
    from planner.search import SearchSpace, plan, search_space
    from planner.timing import job_size

    if global_batch is not None and global_batch < 1:
        raise PlanError(f"--global-batch must be a positive integer, got {global_batch}")
    if top < 1:
        raise PlanError(f"--top must be a positive integer, got {top}")
    base = build_config(model=model, gpus=gpus, seq_len=seq_len, lora_r=lora_r, lora_alpha=lora_alpha,
                        lora_targets=lora_targets, precision=precision, stage=stage, rope_scaling=rope_scaling,
                        check=False, **switches(cross_entropy, kernels, activation_offload, fsdp_version,
                                                torch_compile, bnb_version, frozen_fp32, lora_dropout, kbit_prep))
    check_positions(base, seq_len)
    space = search_space(base, methods=method, global_batch=global_batch,
                         optimizers=parse_choices(optimizers, Optimizer, "--optimizers") or (optimizer,),
                         attns=parse_choices(attns, Attn, "--attns") or SearchSpace().attns)
    size = job_size(tokens, samples, epochs)
    result = plan(base, space, limits_from(host_memory, nvme, headroom), load_calibration(calibration))
    if not include_unrunnable:  # the winner (and --emit's pick) is a plan `ftplan run` executes
        result = dataclasses.replace(result, plans=runnable_first(result.plans))
    return PlanAnswer(result, size, top, all_plans)


@dataclass(frozen=True)
class ScaleAnswer:
    result: Any  # planner.scaling.ScaleResult
    model: str
    gpu: str
    method: Method
    seq_len: int

    def json(self) -> dict[str, Any]:
        from reports.scale_report import scale_json

        return scale_json(self.result, model=self.model, gpu=self.gpu, method=self.method.value,
                          seq_len=self.seq_len)


def scale_answer(*, model: str, gpu: str, max_gpus: int = 64, method: Method = Method.lora, seq_len: int = 2048,
                 global_batch: int | None = None, lora_r: int = 8, lora_alpha: int = 16, lora_targets: str = "all",
                 precision: Precision = Precision.bf16_mixed, stage: Stage = Stage.sft,
                 rope_scaling: str | None = None, host_memory: float | None = None, nvme: float = 2048.0,
                 headroom: float = 0.0, calibration: Path | None = None,
                 cross_entropy: CrossEntropy = CrossEntropy.standard, kernels: Kernels = Kernels.eager,
                 activation_offload: bool = False, fsdp_version: int = 2,
                 torch_compile: bool = False, bnb_version: str = "",
                 frozen_fp32: bool = False, lora_dropout: float = LORA_DROPOUT,
                 kbit_prep: bool = True) -> ScaleAnswer:
    from planner.build import build_config
    from planner.calibration import load_calibration
    from planner.gpus import gpu_from_name
    from planner.scaling import gpu_counts, scale
    from planner.search import search_space

    spec = gpu_from_name(gpu)
    gpu_counts(max_gpus, spec.gpus_per_node)  # checks --max-gpus before any work
    if global_batch is not None and global_batch < 1:
        raise PlanError(f"--global-batch must be a positive integer, got {global_batch}")
    base = build_config(model=model, gpus=f"1x{spec.name}", method=method, seq_len=seq_len, lora_r=lora_r,
                        lora_alpha=lora_alpha, lora_targets=lora_targets, precision=precision, stage=stage,
                        rope_scaling=rope_scaling, check=False,
                        **switches(cross_entropy, kernels, activation_offload, fsdp_version,
                                   torch_compile, bnb_version, frozen_fp32, lora_dropout, kbit_prep))
    check_positions(base, seq_len)
    result = scale(base, max_gpus, search_space(base, methods=(method,), global_batch=global_batch),
                   limits_from(host_memory, nvme, headroom), load_calibration(calibration))
    return ScaleAnswer(result, base.model.name, spec.name, method, seq_len)


def models_json() -> list[dict[str, Any]]:
    """What `ftplan models --json` prints."""
    from planner.models import from_name, model_names
    from reports.catalog_report import models_json as rows_json

    return rows_json([from_name(n) for n in model_names()])


def gpus_json() -> list[dict[str, Any]]:
    """What `ftplan gpus --json` prints."""
    from planner.gpus import GPUS
    from reports.catalog_report import gpus_json as rows_json

    return rows_json(list(GPUS.values()))
