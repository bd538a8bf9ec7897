"""PyTorch's CUDA caching allocator: how much more it reserves than the tensors it hands out (fragmentation).

`torch.cuda.max_memory_reserved` exceeds `max_memory_allocated` by the free blocks of cached segments that
the step's requests could not reuse: a new segment is cudaMalloc'ed when no cached free block is large
enough, while smaller free blocks stay reserved (c10/cuda/CUDACachingAllocator.cpp, `malloc`: the block
pools are searched, then `alloc_block` grows the reservation). Tensors made once at start (weights, the
optimizer's states, gradient and bucket buffers reused every step) are laid out once; what fragments is what
a step allocates and frees in irregular order: activations, recomputation's, gathered parameters, the
optimizer step's temporaries, offload's staging copies.

The share lost is a published measurement, by engine and by the memory-saving techniques switched on, as
GMLake (Guo et al., ASPLOS 2024, Fig. "Scalability on Memory-efficient Strategy", and the GMLake README
figures of the same runs) measured it on LLM fine-tuning runs. The
utilization u = peak active / peak reserved; ftplan applies it to the step's transient bytes only:
reserve = (1/u - 1) x transient. (GMLake's runs filled an 80 GB card with activations, so their peak is
mostly transient; applying u to the whole peak would charge fragmentation to states laid out once.)
`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` maps segments growably (CUDA virtual memory) and
fragments less; it is not modelled (the runs below used the default).

The standard loss's blocks are the step's largest, and what the allocator reserves for them is set by its block
rules, not by the step's size: replayed under those rules (planner.loss_allocations, planner.caching_allocator) they
give a floor under the reserve wherever the loss sets the peak (reserve_bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING

from planner import deepspeed_sizes, loss_allocations, zero3_init_allocations
from planner.caching_allocator import Replay
from planner.choices import Attn, CrossEntropy, Engine, GradCkpt, Method, Offload, Stage, ZeroStage
from planner.engines import zero as zero_engine
from planner.params import embedding_params
from planner.states import activation_dtype_bytes, compute_copy_bytes, optimizer_state_bytes_per_param, output_params
from planner.torch_adamw import deepspeed_client_kernel, step_temporaries

if TYPE_CHECKING:
    from planner.strategy import TrainConfig


class Technique(str, Enum):
    """GMLake's memory-reduction techniques: recomputation (R), LoRA (L), offload (O)."""

    recompute = "R"
    lora = "L"
    offload = "O"


class EngineFamily(str, Enum):
    single = "single GPU / DDP"
    zero12 = "DeepSpeed ZeRO-1/2"
    zero3 = "DeepSpeed ZeRO-3"
    fsdp = "FSDP"


@dataclass(frozen=True, kw_only=True, slots=True)
class Utilization:
    """Peak active over peak reserved bytes, as published."""

    ratio: float
    source: str


_GMLAKE = "GMLake (Guo et al. ASPLOS 2024) README figure"
N, R, LR, RO, LRO = (frozenset(), frozenset({Technique.recompute}),
                     frozenset({Technique.lora, Technique.recompute}),
                     frozenset({Technique.recompute, Technique.offload}),
                     frozenset({Technique.lora, Technique.recompute, Technique.offload}))

# GMLake's strategy figure: DeepSpeed ZeRO-3 on 4 A100-80GB, OPT-1.3B / Vicuna-13B / GPT-NeoX-20B, PyTorch's
# allocator ("P-R" points, read off the plots): N 0.93 / 0.99 / 0.96, R 0.665 / 0.84 / 0.96, LR 0.645 / 0.76
# / 0.79, RO 0.64 / 0.775 / 0.73, LRO 0.64 / 0.80 / 0.715; the median of the three models per strategy.
GENERIC: dict[frozenset[Technique], Utilization] = {
    N: Utilization(ratio=0.96, source=f"{_GMLAKE} stra-*.png, N, median of 3 models (ZeRO-3, 4 GPUs)"),
    R: Utilization(ratio=0.84, source=f"{_GMLAKE} stra-*.png, R, median of 3 models (ZeRO-3, 4 GPUs)"),
    LR: Utilization(ratio=0.76, source=f"{_GMLAKE} stra-*.png, LR, median of 3 models (ZeRO-3, 4 GPUs)"),
    RO: Utilization(ratio=0.73, source=f"{_GMLAKE} stra-*.png, RO, median of 3 models (ZeRO-3, 4 GPUs)"),
    LRO: Utilization(ratio=0.715, source=f"{_GMLAKE} stra-*.png, LRO, median of 3 models (ZeRO-3, 4 GPUs)"),
}
# Where an engine was measured on its own, its figure replaces the generic one:
# - one GPU, LoRA + recomputation: GMLake's scale-out figure at 1 GPU (OPT-13B 0.86, Vicuna-13B 0.75,
#   GPT-NeoX-20B 0.89; median 0.86);
# - FSDP, LoRA + recomputation: GMLake's platform figure, GLM-10B under FSDP 0.69.
# Not used: OpenTau PR 273's allocated / reserved table (8xA100, a vision-language-action policy, not an LLM
# fine-tune; FSDP + checkpointing 0.63-0.66, ZeRO-2 + checkpointing 0.98-0.99): its images and action chunks give
# the step other tensor shapes than a causal LM's.
BY_ENGINE: dict[tuple[EngineFamily, frozenset[Technique]], Utilization] = {
    (EngineFamily.single, LR): Utilization(ratio=0.86, source=f"{_GMLAKE} scale-*.png, 1 GPU, LR, median"),
    (EngineFamily.fsdp, LR): Utilization(ratio=0.69, source=f"{_GMLAKE} platforms.png, FSDP (GLM-10B), LR"),
}


def engine_family(cfg: TrainConfig) -> EngineFamily:
    if cfg.engine is Engine.fsdp:  # NO_SHARD too: FSDP's flat parameters and hooks (Answer.AI's NO_SHARD rows)
        return EngineFamily.fsdp
    if cfg.engine is Engine.deepspeed and cfg.zero is ZeroStage.WEIGHTS:
        return EngineFamily.zero3
    if cfg.engine is Engine.deepspeed and cfg.zero > ZeroStage.DISABLED:
        return EngineFamily.zero12
    return EngineFamily.single


def techniques(cfg: TrainConfig) -> frozenset[Technique]:
    out = set()
    if cfg.grad_ckpt is not GradCkpt.none:
        out.add(Technique.recompute)
    if cfg.trains_adapter:
        out.add(Technique.lora)
    if cfg.offload is not Offload.none or cfg.activation_offload:
        out.add(Technique.offload)
    return frozenset(out)


def utilization(cfg: TrainConfig) -> Utilization:
    """The engine's own measurement for the largest measured subset of the plan's techniques, else the
    generic (ZeRO-3) figure of the largest measured subset. GMLake measured no strategy without recomputation
    but N, so LoRA or offload alone count as N."""
    return _utilization(engine_family(cfg), techniques(cfg))


@cache
def _utilization(family: EngineFamily, used: frozenset[Technique]) -> Utilization:
    subsets = sorted((s for s in GENERIC if s <= used), key=len, reverse=True)
    for strategy in subsets:
        if (family, strategy) in BY_ENGINE:
            return BY_ENGINE[(family, strategy)]
    return GENERIC[subsets[0]]


# How much of that reserve stays when the card runs short. The allocator frees every cached segment that holds no
# live block and retries before it fails (c10/cuda/CUDACachingAllocator.cpp `malloc`: release_cached_blocks), but
# a segment that still holds a live block keeps its free part: PyTorch's out-of-memory message names it ("reserved
# but unallocated ... set expandable_segments to avoid fragmentation"). GMLake's batch sweep (batch-opt-13b.png:
# OPT-13B, LoRA + recomputation + ZeRO-3, 4 A100-80GB) puts a bound on it: PyTorch's allocator ran batch 100 at
# utilization 0.76 and failed at batch 120, where GMLake's stitching allocator held ~69 GB live (77 GB reserved at
# 0.90): 69 GB live plus the ~1 GB context could not be placed in 80 GB, so at least 10 of the ~22 GB that batch's
# fragmentation would reach unconstrained (69 x (1/0.76 - 1)) stayed: 0.46 or more. ftplan keeps half.
RETAINED_RESERVE_FRACTION = 0.5


def loss_replay(cfg: TrainConfig) -> Replay | None:
    """The caching allocator's replay of the loss's blocks (planner.loss_allocations) where the plan runs transformers'
    eager standard loss on the whole vocabulary (pretraining and SFT: the preference and RL stages compute log-probs
    their own way, the reward model has no LM head; no torch.compile; no tensor parallelism, whose vocabulary-parallel
    loss is another sequence) and its blocks outsize every block a layer frees before them (V at least the MLP's width
    and, under eager attention, the heads x sequence of the scores), so that none of them is served from the layers'
    cached blocks; None otherwise."""
    m = cfg.model
    layer_width = max(m.intermediate_size, m.num_heads * cfg.seq_len if cfg.attn is Attn.eager else 0)
    if (cfg.cross_entropy is not CrossEntropy.standard or cfg.torch_compile or cfg.tp != 1
            or cfg.stage not in (Stage.pt, Stage.sft) or m.vocab_size < layer_width):
        return None
    return loss_allocations.standard_loss_replay(
        batch=cfg.micro_batch, seq_len=cfg.seq_len, vocab=m.vocab_size,
        logit_bytes=activation_dtype_bytes(cfg.precision), version=cfg.transformers_version,
        keeps_output=cfg.keeps_output)


def reserve_bytes(cfg: TrainConfig, transient_bytes: float, *, loss_live: bool = False) -> float:
    """Reserved minus allocated bytes at the peak: (1/u - 1) x the step's transient bytes, and where the loss's blocks
    are live at the peak (`loss_live`) at least their replayed reserve (loss_replay); 0 on a device without a caching
    allocator (the CPU: tensors go back to malloc).

    The replay is a floor: at a peak set by the loss, the segments made for the loss's blocks are all reserved and
    the step's other segments hold at least their live blocks, so reserved - allocated >= the loss's segments - the
    loss's live peak. GMLake's share is a whole-step average: the larger of the two is the reserve."""
    if cfg.cluster.gpu.sm_count == 0 or transient_bytes <= 0:
        return 0.0
    share = (1.0 / utilization(cfg).ratio - 1.0) * transient_bytes
    replayed = loss_replay(cfg) if loss_live else None
    return share if replayed is None else max(share, float(replayed.reserve_bytes))


def zero3_sub_groups(cfg: TrainConfig, trained: float, n: int) -> tuple[int, ...]:
    """ZeRO-3's sub-groups on a rank (planner.engines.zero.zero3_sub_group_elements) where DeepSpeed runs ZeRO-3 without
    offload on a GPU, whose construction and step zero3_optimizer_replay replays; () otherwise. `trained`: the stage's
    trained parameters, `n`: the ranks they are partitioned over."""
    if (cfg.cluster.gpu.sm_count == 0 or cfg.engine is not Engine.deepspeed or cfg.zero is not ZeroStage.WEIGHTS
            or cfg.offload is not Offload.none or trained <= 0):
        return ()
    return tuple(math.ceil(s) for s in zero_engine.zero3_sub_group_elements(cfg, trained, n))


def zero3_optimizer_replay(cfg: TrainConfig, sub_groups: tuple[int, ...], n: int) -> Replay | None:
    """The caching allocator's replay of ZeRO-3's optimizer construction and one step on a rank
    (planner.zero3_init_allocations) as the run's DeepSpeed release allocates them (planner.deepspeed_sizes.release),
    for the sub-groups zero3_sub_groups gives; None where there are none."""
    if not sub_groups:
        return None
    m, c16 = cfg.model, int(compute_copy_bytes(cfg.precision))
    state_bytes = optimizer_state_bytes_per_param(cfg.optimizer, cfg.precision)
    # Adam's two fp32 moments are two tensors; another optimizer's state one tensor of its bytes per element
    states = (4.0, 4.0) if state_bytes == 8 else ((state_bytes,) if state_bytes else ())
    return zero3_init_allocations.init_and_step_replay(
        sub_groups=sub_groups, c16=c16, state_bytes=states, bucket=deepspeed_sizes.reduce_bucket_elements(m),
        largest_partition=math.ceil(zero3_largest_partition_elements(cfg, n)), version=deepspeed_sizes.release(),
        temporaries=step_temporaries(deepspeed_client_kernel(cfg), 1.0, 1.0))


def zero3_largest_partition_elements(cfg: TrainConfig, n: int) -> float:
    """A rank's partition of the largest trained tensor outside the layers, which zero3_optimizer_replay replays: the
    input embedding, or what follows the last layer (planner.states.output_params: the final norm and an untied LM
    head, or a reward model's h x num_labels `score`: transformers' GenericForSequenceClassification has no lm_head,
    so its embedding is its largest); none under LoRA."""
    if cfg.method is not Method.full:
        return 0.0
    return max(embedding_params(cfg.model), output_params(cfg.model, cfg.stage)) / cfg.tp / n
