"""One fine-tuning configuration, built from typed parts, each checking itself.

- `Adapter`: what trains (method, LoRA shape, quantized base, frozen layers);
- `ParallelLayout`: tensor / pipeline parallelism, whose arithmetic against the GPU count checks itself
  like torchtitan's `ParallelDims` (`TP(2) * PP(2) * DP(3) = 12 != 8 GPUs`);
- `Batch`: micro-batch, accumulation, sequence length;
- `EngineChoice`: DDP, DeepSpeed ZeRO-0..3 or FSDP with its offload; only the combinations the engines
  accept can be built (planner/engine_combinations.py);
- precision, optimizer, checkpointing, attention and training stage, flat.

`TrainConfig(...)` also takes the flat keywords (`zero=3`, `tp=2`, `micro_batch=4`), so
`dataclasses.replace(cfg, zero=ZeroStage.WEIGHTS)` works, and reads them back as properties
(`cfg.zero`, `cfg.tp`). `str(cfg)` names it like Z3-TP2-PP1-DP4-mb2-ga8.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

from planner.choices import (
    Attn,
    CrossEntropy,
    Engine,
    FsdpStrategy,
    FsdpVersion,
    GradCkpt,
    Kernels,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    PipeSchedule,
    Precision,
    Quant,
    Stage,
    ZeroStage,
)
from planner.engine_combinations import combination_problem
from planner.errors import PlanError
from planner.fields import option
from planner.gpus import Cluster
from planner.models import ModelSpec
from planner.rl.settings import Generation, Rollout, default_rollout, is_online_rl

__all__ = ["Adapter", "Attn", "Batch", "CrossEntropy", "Engine", "EngineChoice", "FLAT_FIELDS", "FsdpStrategy",
           "FsdpVersion", "Generation", "GradCkpt", "Kernels", "Method", "Offload", "OffloadDevice", "Optimizer",
           "ParallelLayout", "PipeSchedule", "Precision", "Quant", "ROLLOUT_FIELDS", "Rollout", "Stage", "Switches",
           "TrainConfig", "ZeroStage"]


# peft's LoraConfig.lora_dropout as ftplan plans and emits it unless --lora-dropout says otherwise (MedicalGPT's and
# Qwen's scripts use 0.05; PEFT's and LLaMA-Factory's own default is 0)
LORA_DROPOUT = 0.05


@dataclass(frozen=True, kw_only=True, slots=True)
class Adapter:
    """What of the model trains: all weights (`full`, optionally freezing the first layers), or LoRA
    adapters on a 16-bit (`lora`) or bitsandbytes-quantized (`qlora`) base."""

    method: Method = Method.lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("all",)
    lora_dropout: float = LORA_DROPOUT
    quant: Quant = Quant.none
    double_quant: bool = True
    freeze_layers: int = 0  # full method: the first N decoder layers (and the embedding) stay frozen

    @property
    def trains_adapter(self) -> bool:
        return self.method is not Method.full


@dataclass(frozen=True, kw_only=True, slots=True)
class ParallelLayout:
    """Tensor and pipeline parallelism; data parallelism takes the GPUs left over."""

    tp: int = 1
    sequence_parallel: bool = False
    pp: int = 1
    pp_schedule: PipeSchedule = PipeSchedule.one_f_one_b
    virtual_stages: int = 1
    # expert parallelism: the data-parallel ranks split a MoE layer's experts ep ways and send tokens to them
    # (planner/moe.py); 1 = every rank computes all experts of its tokens
    ep: int = 1

    def dp(self, world: int) -> int:
        return world // (self.tp * self.pp)

    def problems(self, world: int, dp: int | None = None) -> list[str]:
        """Why TP x PP (x DP, when given) does not multiply out to `world` GPUs (torchtitan ParallelDims)."""
        if world % (self.tp * self.pp):
            return [f"TP({self.tp}) * PP({self.pp}) = {self.tp * self.pp} does not divide {world} GPUs"]
        if dp is not None and dp * self.tp * self.pp != world:
            return [f"TP({self.tp}) * PP({self.pp}) * DP({dp}) = {self.tp * self.pp * dp} != {world} GPUs"]
        return []


@dataclass(frozen=True, kw_only=True, slots=True)
class Batch:
    """Sequences per forward per data-parallel rank, forwards per optimizer step, tokens per sequence."""

    micro_batch: int = 1
    grad_accum: int = 1
    seq_len: int = 2048


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineChoice:
    """A legal engine / ZeRO stage / FSDP strategy / offload combination (PlanError otherwise). `fsdp`
    means something only under FSDP; the other engines carry its default."""

    engine: Engine = Engine.ddp
    zero: ZeroStage = ZeroStage.DISABLED
    fsdp: FsdpStrategy = FsdpStrategy.full_shard
    offload: Offload = Offload.none
    offload_device: OffloadDevice = OffloadDevice.cpu
    fsdp_version: FsdpVersion = FsdpVersion.TWO  # under FSDP: per-parameter FSDP2, or FSDP1 when asked

    def __post_init__(self) -> None:
        problem = combination_problem(self.engine, self.zero, self.offload, self.offload_device)
        if problem:
            raise PlanError(problem)
        if self.engine is not Engine.fsdp and self.fsdp is not FsdpStrategy.full_shard:
            object.__setattr__(self, "fsdp", FsdpStrategy.full_shard)
        if self.engine is not Engine.fsdp and self.fsdp_version is not FsdpVersion.TWO:
            object.__setattr__(self, "fsdp_version", FsdpVersion.TWO)


@dataclass(frozen=True, kw_only=True, slots=True)
class Switches:
    """The memory switches users turn on (planner.memory_knobs): the loss's implementation, Liger's fused
    kernels, saved activations kept in host memory, torch.compile, the bitsandbytes release QLoRA runs
    with ("" = a current one; planner.bnb_versions), frozen weights loaded in fp32 (planner.engines.ddp),
    whether peft's prepare_model_for_kbit_training runs on a 4-bit model (planner.states.kbit_prepared), torch's
    AdamW as its fused kernel (planner.engines.ddp.adamw_step_items), the transformers release whose loss the
    run computes ("" = a current one; planner.transformers_versions), whether the training loop keeps the model's
    output through backward (planner.memory_knobs.held_output_bytes_per_logit), the mean length of the documents
    packed into each sequence under a per-document attention mask (planner.kernels.document_block_share: the
    attention core's time; planner.compute.attended_tokens: MFU's attention FLOPs), and whether that mask comes
    from the data collator, one tensor every layer shares (planner.memory.collator_mask_bytes), rather than from
    transformers, converted in every layer (planner.activations.sdpa_packed_mask_bytes_per_token), and whether the
    run is litgpt's own model code rather than transformers + peft (a validation case's framework)."""

    cross_entropy: CrossEntropy = option(CrossEntropy.standard, help=(
        "Loss: standard (transformers, fp32 logits), chunked (torchtune's chunked loss), fused (Liger's fused "
        "linear cross-entropy)."))
    kernels: Kernels = option(Kernels.eager, help="eager (transformers' modules) or liger (Liger's fused RMSNorm, "
                                                  "SwiGLU, RoPE).")
    activation_offload: bool = option(False, help="Keep saved activations (checkpoints) in host memory.")
    torch_compile: bool = option(False, flags=("--compile/--no-compile",), help=(
        "torch.compile (Trainer torch_compile): fewer saved activations, measured."))
    bnb_version: str = option("", help=(
        "bitsandbytes release QLoRA runs with, e.g. 0.41.1 (before 0.43.2 each 4-bit linear kept its input for "
        "backward); default: a current release."))
    frozen_fp32: bool = option(False, help=(
        "Frozen weights loaded in fp32 (from_pretrained without torch_dtype); DDP and FSDP keep them so, "
        "DeepSpeed casts them to 16 bits."))
    kbit_prep: bool = option(True, help=(
        "QLoRA: peft's prepare_model_for_kbit_training runs (TRL, the QLoRA script, MedicalGPT, ftplan run; not "
        "LLaMA-Factory): fp32 non-quantized weights and residual stream under DDP autocast."))
    transformers_version: str = option("", help=(
        "transformers release the run uses, e.g. 4.46.1 (4.46-4.48's causal-LM loss kept a shifted fp32 copy of the "
        "logits beside the 16-bit ones); default: a current release."))
    fused_adamw: bool = option(False, help=(
        "--optimizer adamw as torch's fused kernel (the Trainer's adamw_torch_fused, its default from torch 2.8; "
        "torchtune's fused: True) instead of foreach: no parameter-sized step temporaries."))
    keeps_output: bool = option(False, help=(
        "Your training loop keeps the model's output (its logits) through backward and the optimizer step, as "
        "Answer.AI's fsdp_qlora train.py does; the Trainer drops it before backward."))
    sync_each_batch: bool = option(False, help=(
        "Your training loop reduces gradients on every micro-batch (accelerate's sync_each_batch, verl's actors): "
        "FSDP keeps gradient shards between micro-batches; the Trainer's no_sync keeps unsharded gradients."))
    doc_len: int | None = option(None, panel="Batch", help=(
        "Mean tokens of the documents packed into each --seq-len sequence, attention kept within each document "
        "(TRL packing / padding_free, LLaMA-Factory neat_packing, torchtune's packed datasets): with --attn flash "
        "FlashAttention-2's varlen kernel computes each document's own causal blocks; eager attention still "
        "computes the whole s x s. Default: one causal sequence per --seq-len."))
    collator_mask: bool = option(False, panel="Batch", help=(
        "With --doc-len under SDPA or eager attention: the packed documents' mask comes from the data collator as "
        "one 4-D tensor per micro-batch that every layer shares (LLaMA-Factory's neat_packing; --from sets it), "
        "held with the step's prefetched micro-batches. Default: transformers builds it from the position_ids and "
        "SDPA converts it in every layer (TRL's padding_free and bfd packing)."))
    litgpt: bool = option(False, help=(
        "Your run is litgpt's finetune/lora.py (lit-gpt of Oct 2023, Lightning Fabric, bf16-true) rather than "
        "transformers + peft: its model code saves a fused qkv, 16-bit RMSNorm inputs and one LoRA dropout per "
        "layer, and its loop holds the fp32 logits Fabric returns through backward. Emitted configs stay the "
        "Trainer's."))

    PANEL: ClassVar[str] = "Switches"


_PARTS: dict[str, type] = {"adapter": Adapter, "layout": ParallelLayout, "batch": Batch, "engine_choice": EngineChoice,
                           "switches": Switches, "rollout": Rollout}
_PART_OF: dict[str, str] = {f.name: part for part, cls in _PARTS.items() for f in dataclasses.fields(cls)}
# the flat names, in the order of plan.json's "config" (the JSON contract)
FLAT_FIELDS: tuple[str, ...] = (
    "model", "cluster", "method", "lora_r", "lora_alpha", "lora_targets", "lora_dropout", "quant", "double_quant",
    "freeze_layers", "precision", "optimizer", "engine", "zero", "fsdp", "offload", "offload_device", "tp",
    "sequence_parallel", "pp", "pp_schedule", "virtual_stages", "micro_batch", "grad_accum", "seq_len", "grad_ckpt",
    "attn", "stage", "cross_entropy", "kernels", "activation_offload", "fsdp_version", "torch_compile", "bnb_version",
    "frozen_fp32", "kbit_prep", "transformers_version", "fused_adamw", "keeps_output", "sync_each_batch", "doc_len",
    "collator_mask", "litgpt", "num_generations",
    "completion_len", "kl_beta", "generation", "vllm_memory", "vllm_sleep", "vllm_server_gpus", "vllm_tp",
    "generation_steps", "num_iterations", "reward_model", "completion_len_mean")
# the online RL stages' settings (planner.rl.settings.Rollout): plan.json carries them for those stages only
ROLLOUT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Rollout))


@dataclass(frozen=True, init=False, slots=True)
class TrainConfig:
    """One fine-tuning configuration on one cluster; `str()` names it like Z3-TP2-PP1-DP4-mb2-ga8."""

    model: ModelSpec
    cluster: Cluster
    adapter: Adapter
    layout: ParallelLayout
    batch: Batch
    engine_choice: EngineChoice
    switches: Switches
    rollout: Rollout
    precision: Precision
    optimizer: Optimizer
    grad_ckpt: GradCkpt
    attn: Attn
    stage: Stage

    def __init__(self, *, model: ModelSpec, cluster: Cluster, adapter: Adapter | None = None,
                 layout: ParallelLayout | None = None, batch: Batch | None = None,
                 engine_choice: EngineChoice | None = None, switches: Switches | None = None,
                 rollout: Rollout | None = None, precision: Precision = Precision.bf16_mixed,
                 optimizer: Optimizer = Optimizer.adamw, grad_ckpt: GradCkpt = GradCkpt.none, attn: Attn = Attn.sdpa,
                 stage: Stage = Stage.sft, **flat: Any) -> None:
        given: dict[str, Any] = {"adapter": adapter, "layout": layout, "batch": batch, "engine_choice": engine_choice,
                                 "switches": switches, "rollout": rollout}
        overrides: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            part = _PART_OF.get(name)
            if part is None:
                raise TypeError(f"TrainConfig got an unexpected keyword argument '{name}'")
            overrides.setdefault(part, {})[name] = value
        for part, cls in _PARTS.items():
            value = given[part]
            if value is None and part == "rollout":
                value = default_rollout(stage)  # each stage's trainer defaults (RLOO: 2 generations, beta 0.05)
            if part in overrides:
                value = cls(**overrides[part]) if value is None else dataclasses.replace(value, **overrides[part])
            object.__setattr__(self, part, cls() if value is None else value)
        for name, value in (("model", model), ("cluster", cluster), ("precision", precision),
                            ("optimizer", optimizer), ("grad_ckpt", grad_ckpt), ("attn", attn), ("stage", stage)):
            object.__setattr__(self, name, value)

    # --- the parts' fields, read flat -------------------------------------------------------------
    method = property(attrgetter("adapter.method"))
    lora_r = property(attrgetter("adapter.lora_r"))
    lora_alpha = property(attrgetter("adapter.lora_alpha"))
    lora_targets = property(attrgetter("adapter.lora_targets"))
    lora_dropout = property(attrgetter("adapter.lora_dropout"))
    quant = property(attrgetter("adapter.quant"))
    double_quant = property(attrgetter("adapter.double_quant"))
    freeze_layers = property(attrgetter("adapter.freeze_layers"))
    engine = property(attrgetter("engine_choice.engine"))
    zero = property(attrgetter("engine_choice.zero"))
    fsdp = property(attrgetter("engine_choice.fsdp"))
    offload = property(attrgetter("engine_choice.offload"))
    offload_device = property(attrgetter("engine_choice.offload_device"))
    fsdp_version = property(attrgetter("engine_choice.fsdp_version"))
    cross_entropy = property(attrgetter("switches.cross_entropy"))
    kernels = property(attrgetter("switches.kernels"))
    activation_offload = property(attrgetter("switches.activation_offload"))
    torch_compile = property(attrgetter("switches.torch_compile"))
    bnb_version = property(attrgetter("switches.bnb_version"))
    frozen_fp32 = property(attrgetter("switches.frozen_fp32"))
    kbit_prep = property(attrgetter("switches.kbit_prep"))
    fused_adamw = property(attrgetter("switches.fused_adamw"))
    keeps_output = property(attrgetter("switches.keeps_output"))
    sync_each_batch = property(attrgetter("switches.sync_each_batch"))
    doc_len = property(attrgetter("switches.doc_len"))
    collator_mask = property(attrgetter("switches.collator_mask"))
    litgpt = property(attrgetter("switches.litgpt"))
    transformers_version = property(attrgetter("switches.transformers_version"))
    tp = property(attrgetter("layout.tp"))
    sequence_parallel = property(attrgetter("layout.sequence_parallel"))
    pp = property(attrgetter("layout.pp"))
    pp_schedule = property(attrgetter("layout.pp_schedule"))
    virtual_stages = property(attrgetter("layout.virtual_stages"))
    ep = property(attrgetter("layout.ep"))
    micro_batch = property(attrgetter("batch.micro_batch"))
    grad_accum = property(attrgetter("batch.grad_accum"))
    seq_len = property(attrgetter("batch.seq_len"))
    num_generations = property(attrgetter("rollout.num_generations"))
    completion_len = property(attrgetter("rollout.completion_len"))
    completion_len_mean = property(attrgetter("rollout.completion_len_mean"))
    kl_beta = property(attrgetter("rollout.kl_beta"))
    generation = property(attrgetter("rollout.generation"))
    vllm_memory = property(attrgetter("rollout.vllm_memory"))
    vllm_sleep = property(attrgetter("rollout.vllm_sleep"))
    vllm_server_gpus = property(attrgetter("rollout.vllm_server_gpus"))
    vllm_tp = property(attrgetter("rollout.vllm_tp"))
    generation_steps = property(attrgetter("rollout.generation_steps"))
    num_iterations = property(attrgetter("rollout.num_iterations"))
    reward_model = property(attrgetter("rollout.reward_model"))

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name, in plan.json's order."""
        return {name: getattr(self, name) for name in FLAT_FIELDS}

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def dp(self) -> int:
        return self.layout.dp(self.world_size)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.dp

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def trains_adapter(self) -> bool:
        return self.adapter.trains_adapter

    def strategy_name(self) -> str:
        if self.engine is Engine.deepspeed:
            head = f"Z{int(self.zero)}"
        elif self.engine is Engine.fsdp:
            head = {"full_shard": "FSDP", "shard_grad_op": "FSDP-SGO", "hybrid_shard": "FSDP-HYB",
                    "no_shard": "FSDP-NS"}[self.fsdp.value]
        else:
            head = "DDP" if self.world_size > 1 else "1GPU"
        if self.offload is not Offload.none:
            head += f"+off-{'opt' if self.offload is Offload.optimizer else 'all'}"
            if self.offload_device is OffloadDevice.nvme:
                head += "-nvme"
        return head

    def __str__(self) -> str:
        sp = "SP" if self.sequence_parallel else ""
        parts = [self.strategy_name(), f"TP{self.tp}{sp}", f"PP{self.pp}", f"DP{self.dp}",
                 f"mb{self.micro_batch}", f"ga{self.grad_accum}"]
        if self.ep > 1:
            parts.insert(4, f"EP{self.ep}")
        if self.grad_ckpt is not GradCkpt.none:
            parts.append(f"ckpt-{self.grad_ckpt.value}")
        if self.sync_each_batch and self.grad_accum > 1:
            parts.append("sync-each")
        if self.optimizer is not Optimizer.adamw:
            parts.append(self.optimizer.value)
        if self.doc_len:
            parts.append(f"doc{self.doc_len}")
        if is_online_rl(self.stage):
            parts.append(self.rollout_name())
        return "-".join(parts)

    def rollout_name(self) -> str:
        """The generation engine as plan names show it: gen (transformers), vllm0.3 / vllm0.3-sleep (colocated,
        with its memory share), vllm-srv2 (a server on 2 GPUs)."""
        r = self.rollout
        if r.generation is Generation.transformers:
            return "gen"
        if r.generation is Generation.vllm_server:
            return f"vllm-srv{r.vllm_server_gpus}"
        return f"vllm{r.vllm_memory:g}" + ("-sleep" if r.vllm_sleep else "")
