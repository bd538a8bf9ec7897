"""Build a TrainConfig from the CLI's vocabulary (strings and enums), with user-facing errors."""

from __future__ import annotations

from planner.bnb_versions import parse_bnb_version
from planner.errors import PlanError
from planner.gpus import parse_gpus
from planner.input_checks import check_config
from planner.models import resolve
from planner.params import resolve_lora_targets
from planner.rope import with_rope_scaling
from planner.strategy import (
    LORA_DROPOUT,
    Adapter,
    Attn,
    Batch,
    CrossEntropy,
    Engine,
    EngineChoice,
    FsdpStrategy,
    FsdpVersion,
    GradCkpt,
    Kernels,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    ParallelLayout,
    Precision,
    Quant,
    Stage,
    Switches,
    TrainConfig,
    ZeroStage,
)
from planner.validity import validate


def parse_targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise PlanError("--lora-targets is empty; name modules (q_proj,v_proj) or 'all'")
    return targets


def _fsdp_version(value: int) -> FsdpVersion:
    if value not in (1, 2):
        raise PlanError(f"--fsdp-version must be 1 or 2, got {value}")
    return FsdpVersion(value)


def build_config(*, model: str, gpus: str, method: Method = Method.lora, lora_r: int = 8, lora_alpha: int = 16,
                 lora_targets: str = "all", quant: Quant | None = None, precision: Precision = Precision.bf16_mixed,
                 optimizer: Optimizer = Optimizer.adamw, zero: int | None = None, offload: Offload = Offload.none,
                 offload_device: OffloadDevice = OffloadDevice.cpu, fsdp: FsdpStrategy | None = None,
                 tp: int = 1, pp: int = 1, sequence_parallel: bool = False, micro_batch: int = 1,
                 grad_accum: int = 1, seq_len: int = 2048, grad_ckpt: GradCkpt = GradCkpt.none,
                 attn: Attn = Attn.sdpa, stage: Stage = Stage.sft, freeze_layers: int = 0,
                 rope_scaling: str | None = None, cross_entropy: CrossEntropy = CrossEntropy.standard,
                 kernels: Kernels = Kernels.eager, activation_offload: bool = False, fsdp_version: int = 2,
                 torch_compile: bool = False, bnb_version: str = "", frozen_fp32: bool = False,
                 lora_dropout: float = LORA_DROPOUT, double_quant: bool = True, kbit_prep: bool = True,
                 check: bool = True) -> TrainConfig:
    for name, value in (("--micro-batch", micro_batch), ("--grad-accum", grad_accum), ("--seq-len", seq_len),
                        ("--tp", tp), ("--pp", pp), ("--lora-r", lora_r)):
        if value < 1:
            raise PlanError(f"{name} must be a positive integer, got {value}")
    if not 0.0 <= lora_dropout < 1.0:
        raise PlanError(f"--lora-dropout must be in [0, 1), got {lora_dropout}")
    if freeze_layers < 0:
        raise PlanError(f"--freeze-layers must not be negative, got {freeze_layers}")
    if zero is not None and fsdp is not None:
        raise PlanError("FSDP and ZeRO are exclusive: give --zero or --fsdp, not both")
    engine = Engine.deepspeed if zero is not None else Engine.fsdp if fsdp is not None else Engine.ddp
    if quant is None:
        quant = Quant.nf4 if method is Method.qlora else Quant.none
    model_spec, cluster = with_rope_scaling(resolve(model), rope_scaling), parse_gpus(gpus)
    engine_choice = EngineChoice(engine=engine, zero=ZeroStage(zero or 0), fsdp=fsdp or FsdpStrategy.full_shard,
                                 offload=offload, offload_device=offload_device,
                                 fsdp_version=_fsdp_version(fsdp_version))
    adapter = Adapter(method=method, lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=parse_targets(lora_targets),
                      lora_dropout=lora_dropout, quant=quant, double_quant=double_quant, freeze_layers=freeze_layers)
    cfg = TrainConfig(model=model_spec, cluster=cluster, adapter=adapter, engine_choice=engine_choice,
                      layout=ParallelLayout(tp=tp, pp=pp, sequence_parallel=sequence_parallel),
                      batch=Batch(micro_batch=micro_batch, grad_accum=grad_accum, seq_len=seq_len),
                      switches=Switches(cross_entropy=cross_entropy, kernels=kernels,
                                        activation_offload=activation_offload, torch_compile=torch_compile,
                                        bnb_version=parse_bnb_version(bnb_version), frozen_fp32=frozen_fp32,
                                        kbit_prep=kbit_prep),
                      precision=precision, optimizer=optimizer, grad_ckpt=grad_ckpt, attn=attn, stage=stage)
    check_config(cfg)  # the domain's bounds (planner/input_checks.py), the same as a plan.json's
    if cfg.trains_adapter:
        resolve_lora_targets(cfg.model, cfg.lora_targets)
    return validate(cfg) if check else cfg
