"""The options object: what a person asks the planner, in the CLI's vocabulary (names, strings, enums),
grouped once. `ftplan` builds every command's flags from these groups (ftplan/options.py), `ftplan serve`
takes their names as JSON fields, `--from FILE` fills them from a training setup, and planner.build turns
them into a TrainConfig, Limits and a search space.

A new option goes into the group it belongs to, as `name: type = option(default, help=...)`
(planner.fields); every command that shows the group gets the flag. Memory switches are the TrainConfig part
`planner.strategy.Switches` itself, so a new switch is one field there.

- `Target`: the model and the devices (and how the model's positions are stretched, the training stage);
- `AdapterArgs`: what trains (method, LoRA shape, quantized base, frozen layers) and the precision;
- `StrategyArgs`: one strategy (engine, ZeRO stage, offload, TP/PP, micro-batch, checkpointing, ...);
- `Switches`: the memory switches (planner.strategy);
- `SearchArgs`: what `plan` searches (methods, global batch, optimizers, attentions);
- `LimitArgs`: memory beside the GPU, headroom, the calibration and device-fit files;
- `JobArgs`: job size for time and GPU-hours; `ShowArgs`: how many plans the answer lists;
- `SolveArgs`: a limit to solve for (the longest sequence or the largest micro-batch that fits).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from enum import Enum
from functools import cache
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Union

from planner.choices import (
    Attn,
    Engine,
    FsdpStrategy,
    GradCkpt,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
    Stage,
)
from planner.errors import PlanError
from planner.fields import option
from planner.limits import Knob
from planner.rl.settings import Generation
from planner.strategy import LORA_DROPOUT, Switches


@dataclass(frozen=True, kw_only=True)
class Target:
    """The model, the devices it trains on, its positions and its training stage."""

    # required, checked when the config is built (planner.build), since --from FILE may name them
    model: str | None = option(None, flags=("--model", "-m"), panel="Model", help=(
        "Catalog name or alias (7b, llama-3-8b), a config.json, or a model directory. Required."))
    gpus: str | None = option(None, flags=("--gpus", "-g"), panel="Hardware", help=(
        "COUNTxTYPE or NODESxPER_NODExTYPE: 8xA800, 2x8xH100, 2xCPU. Required."))
    rope_scaling: str | None = option(None, help="TYPE:FACTOR (linear, dynamic, yarn, llama3), e.g. linear:2.0: "
                                                 "positions x FACTOR.", panel="Model")
    stage: Stage = option(Stage.sft, help="Training stage.", panel="Model")


@dataclass(frozen=True, kw_only=True)
class AdapterArgs:
    """What of the model trains, and in which precision."""

    method: Method = option(Method.lora, help="Fine-tuning method.")
    lora_r: int = option(8, help="LoRA rank.")
    lora_alpha: int = option(16, help="LoRA alpha.")
    lora_targets: str | None = option(None, help=(
        "Comma-separated LoRA target modules, or 'all' (peft's all-linear). Default: all, less the linears peft's "
        "LoRA cannot run (Llama 4's router), named one by one."))
    lora_dropout: float | None = option(None, help=(
        f"LoRA dropout (peft lora_dropout): above 0 every adapted linear keeps a dropped-out copy of its input and "
        f"a mask for backward. Default {LORA_DROPOUT}, or 0 where peft adapts a target as a parameter (the fused "
        f"experts of Qwen3-MoE, Mixtral, DeepSeek-V3 under 'all'), which takes no dropout."))
    quant: Quant | None = option(None, help="Base-weight quantization (QLoRA); default nf4 for qlora.")
    double_quant: bool = option(True, help="QLoRA's double quantization of the quantization constants.", cli=False)
    freeze_layers: int = option(0, help="Full method: freeze the first N decoder layers.")
    precision: Precision = option(Precision.bf16_mixed, help="Precision: fp32 master under *-mixed, none under "
                                                             "bf16-true.")

    PANEL: ClassVar[str] = "Method"


@dataclass(frozen=True, kw_only=True)
class StrategyArgs:
    """One strategy: the engine with its sharding and offload, model parallelism, batch shape, checkpointing,
    attention and optimizer."""

    optimizer: Optimizer = option(Optimizer.adamw, help="Optimizer.", panel="Method")
    zero: int | None = option(None, help="DeepSpeed ZeRO stage (0-3).", min=0, max=3)
    offload: Offload = option(Offload.none, help="Offload optimizer states, or everything.")
    offload_device: OffloadDevice = option(OffloadDevice.cpu, help="Where offloaded states go.")
    fsdp: FsdpStrategy | None = option(None, help="Use FSDP with this sharding strategy.")
    fsdp_version: int = option(2, help="FSDP2 (per-parameter, accelerate fsdp_version: 2) or FSDP1.", min=1, max=2)
    tp: int = option(1, help="Tensor-parallel degree.")
    pp: int = option(1, help="Pipeline-parallel degree.")
    sequence_parallel: bool = option(False, help="Sequence parallelism with TP.")
    micro_batch: int = option(1, help="Sequences per GPU per forward.", panel="Batch")
    grad_accum: int = option(1, help="Gradient-accumulation steps.", panel="Batch")
    seq_len: int = option(2048, help="Tokens per sequence.", panel="Batch")
    grad_ckpt: GradCkpt = option(GradCkpt.none, help="Activation checkpointing.", panel="Memory")
    attn: Attn | None = option(None, help="Attention implementation; default what transformers picks: sdpa, or "
                                          "eager where the model has no sdpa path (gpt-oss).", panel="Memory")

    PANEL: ClassVar[str] = "Parallelism"


@dataclass(frozen=True, kw_only=True)
class RolloutArgs:
    """The online RL stages' rollout (grpo, rloo: TRL's GRPOConfig / RLOOConfig fields; ppo: verl's). A field left
    unset takes the stage's default in `estimate` and is searched by `plan` where it decides fit and speed."""

    num_generations: int | None = option(None, help=(
        "Completions per prompt (num_generations); default the stage's: grpo 8, rloo 2, ppo 1."))
    completion_len: int = option(512, help="Tokens of a completion (max_completion_length); --seq-len is the "
                                           "prompt plus this.")
    completion_len_mean: int | None = option(None, help=(
        "Average tokens of a completion (completions stop at EOS; --completion-len is the longest): generation "
        "decodes until a batch's longest is done, training runs at the length TRL pads to (verl: the mean), "
        "memory plans the longest. Default: every completion runs --completion-len."))
    kl_beta: float | None = option(None, help=(
        "KL coefficient; 0 loads no reference model. Default the stage's: grpo 0, rloo 0.05, ppo 0.001."))
    generation: Generation | None = option(None, help=(
        "Where completions are generated: transformers' generate, vLLM beside training, or a vLLM server on "
        "GPUs of its own. Default: plan searches all three, estimate uses transformers (ppo: vllm-colocate)."))
    vllm_memory: float | None = option(None, min=0.05, max=1.0, help=(
        "vllm_gpu_memory_utilization. Default: plan picks the share the KV cache needs; estimate 0.3 colocated "
        "(TRL), 0.9 for a server (trl vllm-serve), 0.5 for ppo (verl)."))
    vllm_sleep: bool | None = option(None, help=(
        "vLLM sleep mode: its weights and KV cache freed while training (default: plan searches both)."))
    vllm_server_gpus: int | None = option(None, help=(
        "GPUs of --gpus given to the vLLM server (--generation vllm-server; default: plan searches powers of two)."))
    vllm_tp: int | None = option(None, help="vLLM tensor parallelism (default: the least that holds the model).")
    generation_steps: int | None = option(None, help=(
        "Optimizer steps one generation feeds (steps_per_generation / grad accumulation; default: plan searches "
        "1, 2, 4; estimate 1)."))
    num_iterations: int = option(1, help="Passes over each generation batch (GRPO's mu).")
    reward_model: str | None = option(None, help=(
        "A reward model scoring the completions (catalog name, config.json or directory); default rule rewards."))

    PANEL: ClassVar[str] = "Online RL"


@dataclass(frozen=True, kw_only=True)
class SearchArgs:
    """What `plan` searches beyond the engines and batch shapes: methods, global batch, optimizers, attentions."""

    methods: list[Method] | None = option(None, flags=("--method",), panel="Method",
                                          help="Methods to plan (repeat); default all three.")
    global_batch: int | None = option(None, help="Sequences per optimizer step, held fixed (default 8 per GPU).",
                                      panel="Batch")
    optimizers: str | None = option(None, panel="Method", help=(
        "Search these optimizers (comma-separated, e.g. adamw,adamw_8bit) instead of --optimizer."))
    attns: str | None = option(None, panel="Memory", help=(
        "Search these attention implementations (comma-separated, e.g. sdpa,eager) instead of what transformers "
        "picks (sdpa, or eager where the model has no sdpa path)."))
    include_unrunnable: bool = option(False, flags=("--include-unrunnable",), panel="Output", help=(
        "Rank every plan by speed, also those `ftplan run` does not execute (default: the winner is the best plan "
        "it runs)."))


@dataclass(frozen=True, kw_only=True)
class LimitArgs:
    """What besides the GPU bounds a plan (host RAM, NVMe, headroom) and the files that correct the models."""

    host_memory: float | None = option(None, panel="Memory", help=(
        "Host RAM per node in GiB (default: 2x the node's GPU memory)."))
    nvme: float = option(2048.0, help="NVMe space per node in GiB for ZeRO-Infinity.", panel="Memory")
    headroom: float = option(0.0, help="Fraction of GPU memory to keep free.", panel="Memory", min=0.0, max=0.9)
    calibration: Path | None = option(None, help="Calibration JSON written by `ftplan profile`.", panel="Hardware")
    # planner.device_fit_file: "auto" finds this machine's fit of the plan's device; build_config passes "none"
    device_fit: str | None = option("auto", panel="Hardware", help=(
        "Device fit from `ftplan profile calibrate --device`: a file, 'auto' (this machine's fit of the plan's "
        "device, when one was written) or 'none' (the catalog's constants)."))


@dataclass(frozen=True, kw_only=True)
class JobArgs:
    """The job's size, for its wall time and GPU-hours."""

    tokens: float | None = option(None, help=(
        "Job size in tokens per epoch (packed into --seq-len sequences): job time and GPU-hours."))
    samples: float | None = option(None, help="Job size in sequences per epoch: job time and GPU-hours.")
    epochs: float = option(1.0, help="Passes over --tokens / --samples.")

    PANEL: ClassVar[str] = "Batch"


@dataclass(frozen=True, kw_only=True)
class ShowArgs:
    """How many plans an answer lists."""

    top: int = option(3, help="Plans to show per method.")
    all_plans: bool = option(False, flags=("--all",), help="List every fitting plan, not the best --top per method.")

    PANEL: ClassVar[str] = "Output"


@dataclass(frozen=True, kw_only=True)
class SolveArgs:
    """A limit the answer solves for (planner.limits): for `estimate` of its configuration, for `plan` of the
    recommended plan."""

    solve: Knob | None = option(None, help=(
        "Also find the largest value of this knob that fits, the rest held: seq-len (the longest sequence) or "
        "micro-batch."))

    PANEL: ClassVar[str] = "Output"


@dataclass(frozen=True, kw_only=True)
class ScaleArgs:
    """`scale`: the GPU type and the largest count."""

    gpu: str = option(help="GPU type from the catalog (ftplan gpus), e.g. A800.", flags=("--gpu",))
    max_gpus: int = option(64, help="Largest GPU count: 1, 2, 4, 8, then whole nodes up to it.")

    PANEL: ClassVar[str] = "Hardware"


@dataclass(frozen=True, kw_only=True)
class TuneSpaceArgs:
    """`tune`: which values of each dimension to search (each repeatable; default: all of them)."""

    engine: list[Engine] | None = option(None, help="Engines to search (repeat).")
    zero: list[int] | None = option(None, min=0, max=3, help="ZeRO stages to search (repeat; DeepSpeed only).")
    offload: list[Offload] | None = option(None, help="Offload settings to search (repeat).")
    micro_batch: list[int] | None = option(None, help="Micro-batches to search (repeat).")
    grad_ckpt: list[GradCkpt] | None = option(None, help="Checkpointing to search (repeat).")
    attn: list[Attn] | None = option(None, help="Attention implementations (repeat).")
    optimizer: list[Optimizer] | None = option(None, help="Optimizers (repeat).")
    tp: list[int] | None = option(None, help="TP degrees (repeat; default powers of two).")
    pp: list[int] | None = option(None, help="PP degrees (repeat; default powers of two).")
    virtual_stages: list[int] | None = option(None, help="Interleaved virtual stages per pipeline rank (repeat; "
                                                         "default 1).")

    PANEL: ClassVar[str] = "Search"


@dataclass(frozen=True, kw_only=True)
class Options:
    """Everything `estimate`, `plan`, `scale` and `tune` are asked, one group per concern."""

    target: Target = field(default_factory=Target)
    adapter: AdapterArgs = field(default_factory=AdapterArgs)
    strategy: StrategyArgs = field(default_factory=StrategyArgs)
    switches: Switches = field(default_factory=Switches)
    rollout: RolloutArgs = field(default_factory=RolloutArgs)
    search: SearchArgs = field(default_factory=SearchArgs)
    limits: LimitArgs = field(default_factory=LimitArgs)
    job: JobArgs = field(default_factory=JobArgs)
    show: ShowArgs = field(default_factory=ShowArgs)
    solve: SolveArgs = field(default_factory=SolveArgs)


def is_group(cls: Any) -> bool:
    return isinstance(cls, type) and dataclasses.is_dataclass(cls)


@cache
def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's field types, resolved (this module and strategy.py write them as strings)."""
    return typing.get_type_hints(cls)


@cache
def group_of(cls: type) -> dict[str, str]:
    """For a composite such as Options: flat field name -> the group holding it."""
    types = field_types(cls)
    return {f.name: g.name for g in fields(cls) for f in fields(types[g.name])}


def from_flat(cls: type, flat: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A group, or a composite of groups, from flat `name: value` pairs (the CLI's parameters, a JSON body);
    missing fields keep their defaults. Returns the object and the pairs no field took."""
    types = field_types(cls)
    own = {f.name for f in fields(cls)}
    if all(is_group(types[name]) for name in own):
        where = group_of(cls)
        parts: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            if name in where:
                parts.setdefault(where[name], {})[name] = value
        given = {g: from_flat(types[g], parts[g])[0] for g in parts}
        rest = {k: v for k, v in flat.items() if k not in where}
        return cls(**given), rest
    return (cls(**{k: _typed_value(types[k], k, v) for k, v in flat.items() if k in own}),
            {k: v for k, v in flat.items() if k not in own})


def _typed_value(kind: Any, name: str, value: Any) -> Any:
    """A value as its field's type where a parser hands over text: a choice given by its name (`fsdp="full_shard"`,
    as the CLI and a JSON body spell it) as its enum member, a list of choices (`--method lora --method full`)
    as a list of members, a path's text as a Path; anything else as it is. Click's parameters (typer up to 0.28)
    and a JSON body give text here, typer 0.29's pydantic coercion the types: both end as the same object."""
    kinds = [k for k in (typing.get_args(kind) if typing.get_origin(kind) in (Union, UnionType) else (kind,))
             if k is not type(None)]
    if len(kinds) != 1 or value is None:  # `int | None` and the like stay as they are
        return value
    kind = kinds[0]
    if typing.get_origin(kind) is list and isinstance(value, list | tuple):
        (item,) = typing.get_args(kind)
        return [_typed_value(item, name, v) for v in value]
    if isinstance(kind, type) and issubclass(kind, Path) and isinstance(value, str):
        return Path(value)
    if not (isinstance(kind, type) and issubclass(kind, Enum) and isinstance(value, str)):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in kind)
        raise PlanError(f"{name} must be one of {choices}, got {value!r}") from None


def to_flat(obj: Any) -> dict[str, Any]:
    """The inverse of from_flat: every field by its flat name."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_group(type(value)):
            out.update(to_flat(value))
        else:
            out[f.name] = value
    return out


def replace_flat(opts: Any, **changes: Any) -> Any:
    """`opts` with some flat fields changed (`replace_flat(opts, seq_len=512)`), whichever group holds them."""
    where = group_of(type(opts))
    parts: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        if name not in where:
            raise TypeError(f"{type(opts).__name__} has no option '{name}'")
        parts.setdefault(where[name], {})[name] = value
    return dataclasses.replace(opts, **{g: dataclasses.replace(getattr(opts, g), **v) for g, v in parts.items()})
