"""Build a TrainConfig, Limits and a search space from the options object (planner.options: the CLI's
vocabulary, strings and enums), with user-facing errors."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

from planner import device_fit_file
from planner.bnb_versions import parse_bnb_version
from planner.errors import PlanError
from planner.estimate import Limits
from planner.gpus import parse_gpus, with_device_fit
from planner.input_checks import check_config
from planner.models import resolve
from planner.options import AdapterArgs, LimitArgs, Options, StrategyArgs, Target, from_flat, group_of
from planner.params import ALL_TARGETS, default_lora_targets, lora_dropout_for, resolve_lora_targets
from planner.rl.options import rollout_from
from planner.rope import with_rope_scaling
from planner.strategy import (
    LORA_DROPOUT,
    Adapter,
    Batch,
    Engine,
    EngineChoice,
    FsdpStrategy,
    FsdpVersion,
    Method,
    ParallelLayout,
    Quant,
    Switches,
    TrainConfig,
    ZeroStage,
)
from planner.transformers_versions import parse_transformers_version
from planner.validity import default_attn, validate

# the groups a TrainConfig is made of; the others (search, limits, job, show) do not change one
CONFIG_GROUPS = ("target", "adapter", "strategy", "switches", "rollout")


def parse_targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise PlanError("--lora-targets is empty; name modules (q_proj,v_proj) or 'all'")
    return targets


def _fsdp_version(value: int) -> FsdpVersion:
    if value not in (1, 2):
        raise PlanError(f"--fsdp-version must be 1 or 2, got {value}")
    return FsdpVersion(value)


def required(target: Target) -> tuple[str, str]:
    """The model and devices, which every question names (on the command line or in --from FILE)."""
    if not target.model:
        raise PlanError("--model is required: a catalog name (7b, llama-3-8b), a config.json or a model directory")
    if not target.gpus:
        raise PlanError("--gpus is required: COUNTxTYPE or NODESxPER_NODExTYPE, e.g. 8xA800, 2x8xH100, 2xCPU")
    return target.model, target.gpus


def _adapter(a: AdapterArgs) -> Adapter:
    if a.lora_r < 1:
        raise PlanError(f"--lora-r must be a positive integer, got {a.lora_r}")
    if a.lora_dropout is not None and not 0.0 <= a.lora_dropout < 1.0:
        raise PlanError(f"--lora-dropout must be in [0, 1), got {a.lora_dropout}")
    if a.freeze_layers < 0:
        raise PlanError(f"--freeze-layers must not be negative, got {a.freeze_layers}")
    quant = a.quant if a.quant is not None else Quant.nf4 if a.method is Method.qlora else Quant.none
    return Adapter(method=a.method, lora_r=a.lora_r, lora_alpha=a.lora_alpha,
                   lora_targets=parse_targets(a.lora_targets or ALL_TARGETS),
                   lora_dropout=LORA_DROPOUT if a.lora_dropout is None else a.lora_dropout, quant=quant,
                   double_quant=a.double_quant, freeze_layers=a.freeze_layers)


def _engine_choice(s: StrategyArgs) -> EngineChoice:
    if s.zero is not None and s.fsdp is not None:
        raise PlanError("FSDP and ZeRO are exclusive: give --zero or --fsdp, not both")
    engine = Engine.deepspeed if s.zero is not None else Engine.fsdp if s.fsdp is not None else Engine.ddp
    return EngineChoice(engine=engine, zero=ZeroStage(s.zero or 0), fsdp=s.fsdp or FsdpStrategy.full_shard,
                        offload=s.offload, offload_device=s.offload_device, fsdp_version=_fsdp_version(s.fsdp_version))


def config_from(opts: Options, *, check: bool = True) -> TrainConfig:
    """The configuration the options describe; `check` validates it (a search base skips that)."""
    model, gpus = required(opts.target)
    s = opts.strategy
    for name, value in (("--micro-batch", s.micro_batch), ("--grad-accum", s.grad_accum), ("--seq-len", s.seq_len),
                        ("--tp", s.tp), ("--pp", s.pp)):
        if value < 1:
            raise PlanError(f"{name} must be a positive integer, got {value}")
    adapter, engine_choice = _adapter(opts.adapter), _engine_choice(s)
    model_spec, cluster = with_rope_scaling(resolve(model), opts.target.rope_scaling), parse_gpus(gpus)
    if opts.adapter.lora_targets is None:  # unset: what peft's all-linear adapts and can run (planner.params)
        adapter = dataclasses.replace(adapter, lora_targets=default_lora_targets(model_spec))
    if opts.adapter.lora_dropout is None:
        # unset: ftplan's default, or 0 where peft wraps a target as a parameter (planner.params.lora_dropout_for);
        # resolved whatever the method, since `plan` searches LoRA from this adapter (targets a full fine-tune does
        # not use may not resolve: those keep the default)
        with contextlib.suppress(PlanError):
            adapter = dataclasses.replace(adapter, lora_dropout=lora_dropout_for(
                model_spec, adapter.lora_targets, None, LORA_DROPOUT))
    fit = device_fit_file.resolve(opts.limits.device_fit, cluster.gpu.name)
    if fit is not None:
        cluster = dataclasses.replace(cluster, gpu=with_device_fit(cluster.gpu, fit.constants()))
    switches: Switches = dataclasses.replace(
        opts.switches, bnb_version=parse_bnb_version(opts.switches.bnb_version),
        transformers_version=parse_transformers_version(opts.switches.transformers_version))
    cfg = TrainConfig(model=model_spec, cluster=cluster, adapter=adapter, engine_choice=engine_choice,
                      layout=ParallelLayout(tp=s.tp, pp=s.pp, sequence_parallel=s.sequence_parallel),
                      batch=Batch(micro_batch=s.micro_batch, grad_accum=s.grad_accum, seq_len=s.seq_len),
                      switches=switches, precision=opts.adapter.precision, optimizer=s.optimizer,
                      grad_ckpt=s.grad_ckpt, attn=default_attn(model_spec) if s.attn is None else s.attn,
                      stage=opts.target.stage,
                      rollout=rollout_from(opts.rollout, opts.target.stage))
    check_config(cfg)  # the domain's bounds (planner/input_checks.py), the same as a plan.json's
    if cfg.trains_adapter:
        resolve_lora_targets(cfg.model, cfg.lora_targets)
    return validate(cfg) if check else cfg


def build_config(*, check: bool = True, **flat: Any) -> TrainConfig:
    """config_from with the options given flat, by their CLI names (`build_config(model="7b", gpus="8xA800",
    method=Method.full, zero=3)`): the short form tests, benchmarks and the runner use. It reads no device fit
    (the catalog's constants, whatever this machine holds)."""
    where = group_of(Options)
    stray = [name for name in flat if where.get(name) not in CONFIG_GROUPS]
    if stray:
        raise TypeError(f"build_config got an unexpected keyword argument '{stray[0]}'")
    opts, _ = from_flat(Options, {**flat, "device_fit": device_fit_file.NONE})
    return config_from(opts, check=check)


def device_fit_for(opts: Options) -> device_fit_file.DeviceFitFile | None:
    """The device fit config_from applies to these options (None: the catalog's constants), for reports."""
    if not opts.target.gpus:
        return None
    return device_fit_file.resolve(opts.limits.device_fit, parse_gpus(opts.target.gpus).gpu.name)


def limits_from(args: LimitArgs) -> Limits:
    # written so that NaN fails too (NaN passes `<= 0`, and would switch the capacity check off)
    if args.host_memory is not None and not 0 < args.host_memory < math.inf:
        raise PlanError(f"--host-memory must be a positive number of GiB, got {args.host_memory:g}")
    if not 0 <= args.nvme < math.inf:
        raise PlanError(f"--nvme must not be negative, got {args.nvme:g}")
    if not 0 <= args.headroom < 1:
        raise PlanError(f"--headroom must lie in [0, 1), got {args.headroom:g}")
    return Limits(headroom_fraction=args.headroom,
                  host_bytes_per_node=None if args.host_memory is None else args.host_memory * 2**30,
                  nvme_bytes_per_node=args.nvme * 2**30)


def parse_choices(text: str | None, enum: type, option: str) -> tuple:
    """A comma-separated list of enum values (`adamw,adamw_8bit`); () when not given."""
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


def check_positions(base: TrainConfig) -> None:
    if base.seq_len > base.model.max_seq_len:
        raise PlanError(f"--seq-len {base.seq_len} exceeds the {base.model.max_seq_len} positions of "
                        f"{base.model.name} (add --rope-scaling, e.g. linear:2.0)")


def check_global_batch(global_batch: int | None) -> None:
    if global_batch is not None and global_batch < 1:
        raise PlanError(f"--global-batch must be a positive integer, got {global_batch}")
