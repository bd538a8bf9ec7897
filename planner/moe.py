"""Mixture of experts in time: how transformers 5.25 runs a MoE layer's experts, and what expert parallelism adds.

- Which experts a token meets (FLOPs, planner/compute.py): the top-k routed experts for transformers' experts
  implementations (transformers/integrations/moe.py, `use_experts_implementation`), every expert for Llama 4's
  experts (modeling_llama4.py Llama4TextExperts: torch.bmm over all of them); read from the model
  (planner.model_layers.MlpShape.dispatch, LinearShape.active).
- Grouped vs looped expert GEMMs: transformers 5 defaults to `experts_implementation="grouped_mm"`
  (modeling_utils.get_correct_experts_implementation): one grouped GEMM per projection over all experts, each group
  the tokens routed to one expert (grouped_mm_experts_forward sorts them). torch runs it as one kernel where it has
  one (integrations/moe.py `_can_use_grouped_mm`: CUDA compute capability >= 8.0, and the CPU with torch >= 2.10);
  elsewhere (V100, T4) transformers' fallback op loops over the experts (`_grouped_mm_fallback`: one matmul per
  expert), each its own launch and wave. Each group pays tile quantization (NVIDIA "Matrix Multiplication
  Background" guide, Sec. 3.1: a group of m rows fills ceil(m / 128) tiles) and the grouped kernel shares the
  SMs' waves across groups (Sec. 3.2).
- Router and dispatch: the router is a linear (its FLOPs are the linear's); the sort, gather, histogram and
  scatter around the grouped GEMMs are eager ops the host dispatches (`MOE_OPS_PER_LAYER_FORWARD`).
- Load imbalance and all-to-all exist only under expert parallelism (`ep` ranks each own experts / ep experts):
  the step waits for the rank whose experts received the most tokens, and tokens travel to their experts and back
  in all-to-alls (GShard, Lepikhin et al. 2021, Sec. 2.2 and 3.2: dispatch and combine per MoE layer in forward,
  the same in backward; DeepSpeed-MoE, Rajbhandari et al. 2022, Sec. 5.2).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from planner.gpus import GPUSpec
from planner.models import ModelSpec

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

# Eager ops of one MoE layer's forward besides its GEMMs, counted in transformers 5.25's grouped_mm path
# (integrations/moe.py grouped_mm_experts_forward: reshape, sort, index (perm // k), floor-divide, index of the
# weights, float, histc, cumsum, for each of the two projections transpose, cast and grouped_mm, the gate's chunk,
# activation and product, the weighting multiply and unsqueeze, empty_like, arange, index_put, index, view, sum,
# cast: 27) and the router (Qwen3MoeTopKRouter: linear, softmax, topk, sum, divide, cast: 6).
MOE_OPS_PER_LAYER_FORWARD = 33
# transformers' `_grouped_mm_fallback` loops over the experts: per expert and grouped call one slice of the
# input, one of the output and a matmul forward; in backward (`_grouped_mm_fallback_bwd`) two slices and two
# matmuls (input and weight gradients). Two grouped calls (gate_up, down) per layer.
LOOPED_OPS_PER_EXPERT_FORWARD = 2 * 3
LOOPED_OPS_PER_EXPERT_BACKWARD = 2 * 4


GROUPED_MM_MIN_CAPABILITY = (8, 0)


def grouped_mm_available(gpu: GPUSpec) -> bool:
    """Whether torch runs transformers' grouped_mm as one kernel, as transformers decides it
    (transformers/integrations/moe.py `_can_use_grouped_mm`, 5.x with torch >= 2.9: on CUDA
    `torch.cuda.get_device_capability() >= (8, 0)`; on the CPU from torch 2.10); None is the CPU (no CUDA
    capability, planner/gpus.py)."""
    cc = gpu.compute_capability
    return cc is None or cc >= GROUPED_MM_MIN_CAPABILITY


def _tile_efficiency(m: int, n: int, groups: int, sm_count: int, tiles: tuple[tuple[int, int], ...]) -> float:
    """Useful share of the SMs' time for `groups` GEMMs of m x n outputs sharing their waves: useful elements over
    waves x SMs x tile area, for the best tile shape (tile quantization and wave quantization, NVIDIA GEMM guide
    Sec. 3.1-3.2)."""
    best = 0.0
    for tm, tn in tiles:
        per_group = math.ceil(m / tm) * math.ceil(n / tn)
        waves = math.ceil(groups * per_group / sm_count)
        best = max(best, groups * m * n / (waves * sm_count * tm * tn))
    return min(1.0, best)


def grouped_wave_efficiency(m: int, n: int, groups: int, sm_count: int, tiles: tuple[tuple[int, int], ...]) -> float:
    """One grouped GEMM over `groups` experts of m routed rows each (1 on the CPU, which has no waves)."""
    if sm_count <= 0 or m <= 0 or n <= 0:
        return 1.0
    return _tile_efficiency(m, n, groups, sm_count, tiles)


def looped_wave_efficiency(m: int, n: int, sm_count: int, tiles: tuple[tuple[int, int], ...]) -> float:
    """One expert's GEMM launched alone (transformers' fallback loop)."""
    if sm_count <= 0 or m <= 0 or n <= 0:
        return 1.0
    return _tile_efficiency(m, n, 1, sm_count, tiles)


def moe_layers(m: ModelSpec, layers: int) -> float:
    """MoE layers among `layers` decoder layers (the share of MoE layers in the model)."""
    if not m.is_moe:
        return 0.0
    if not m.layer_kinds:
        return float(layers)
    share = sum(k.count for k in m.layer_kinds if k.mlp.kind == "moe") / m.num_layers
    return layers * share


def moe_host_ops_per_micro_batch(m: ModelSpec, gpu: GPUSpec, layers: int, passes: int) -> float:
    """Eager ops the MoE layers add per micro-batch: the dispatch around the grouped GEMMs in every pass (forward,
    backward counted twice as for the other ops, recompute), and where torch has no grouped kernel the fallback's
    per-expert loop (forward, recomputed forward, backward)."""
    n = moe_layers(m, layers)
    if n == 0:
        return 0.0
    ops = n * MOE_OPS_PER_LAYER_FORWARD * passes
    if not grouped_mm_available(gpu):
        forwards = passes - 2  # passes = forward + 2 (backward) + recompute
        ops += n * m.num_experts * (LOOPED_OPS_PER_EXPERT_FORWARD * forwards + LOOPED_OPS_PER_EXPERT_BACKWARD)
    return ops


# --- expert parallelism -------------------------------------------------------------------------------------

def load_imbalance_factor(tokens: int, experts: int, top_k: int, ep: int) -> float:
    """Expected load of the busiest of `ep` ranks over the mean, for tokens x top_k assignments spread over the
    ranks: balls into bins, m = tokens x k balls into ep bins, max load m/ep + sqrt(2 (m/ep) ln ep) (Raab and
    Steger 1998, "Balls into Bins - A Simple and Tight Analysis", Theorem 1, m >> ep ln ep). A router trained with
    a balancing loss (the models here are) is at best this even; a less even one is slower still."""
    if ep <= 1 or experts <= 1:
        return 1.0
    mean = tokens * top_k / ep
    if mean <= 0:
        return 1.0
    return 1.0 + math.sqrt(2.0 * math.log(ep) / mean)


def all_to_all_bytes_per_rank(tokens: int, hidden: int, top_k: int, ep: int, elem_bytes: float) -> float:
    """Bytes one rank sends in one all-to-all of a MoE layer: each of its tokens goes to top_k experts, of which
    (ep - 1) / ep live on other ranks (GShard, Lepikhin et al. 2021, Sec. 3.2)."""
    if ep <= 1:
        return 0.0
    return tokens * top_k * hidden * elem_bytes * (ep - 1) / ep


def all_to_alls_per_layer(recompute: bool) -> int:
    """Dispatch and combine in forward, their gradients in backward, and again for a recomputed forward."""
    return 4 + (2 if recompute else 0)


def all_to_all_time_s(message_bytes: float, ep: int, link_bytes_per_s: float, alpha_s: float) -> float:
    """One all-to-all over ep ranks: ep - 1 point-to-point exchanges of message / (ep - 1) bytes each on the
    rank's link (pairwise exchange, Thakur et al. 2005, "Optimization of Collective Communication Operations in
    MPICH", Sec. 4.5: (p - 1) alpha + n beta)."""
    if ep <= 1 or message_bytes <= 0:
        return 0.0
    return (ep - 1) * alpha_s + message_bytes / link_bytes_per_s


def ep_problems(cfg: TrainConfig) -> list[str]:
    """Where an expert-parallel degree exists: a MoE model whose experts split evenly, FSDP (transformers'
    DistributedConfig shards experts over `ep` ranks and FSDP2-shards them over the other fsdp x tp / ep,
    transformers/distributed/configuration_utils.py), ep dividing the data-parallel ranks, no TP or PP beside it."""
    m, out = cfg.model, []
    if not m.is_moe:
        return [f"expert parallelism needs a mixture-of-experts model; {m.name} is dense"]
    if m.num_experts % cfg.ep:
        out.append(f"EP({cfg.ep}) must divide the {m.num_experts} experts of {m.name}")
    if cfg.dp % cfg.ep:
        out.append(f"EP({cfg.ep}) must divide the {cfg.dp} data-parallel ranks")
    if cfg.engine.value != "fsdp":
        out.append("expert parallelism runs on FSDP2 (transformers' DistributedConfig), not "
                   f"{cfg.engine.value}")
    if cfg.tp > 1 or cfg.pp > 1:
        out.append("expert parallelism is planned beside data parallelism only (TP 1, PP 1)")
    return out


def expert_params_per_layer(m: ModelSpec) -> float:
    """Mean parameters per decoder layer in fused expert tensors (all experts)."""
    return sum(lin.layer_share * lin.copies * lin.in_features * lin.out_features for lin in m.linears()
               if lin.role == "expert")


def ep_unsharded_saving_bytes(cfg: TrainConfig, compute_bytes: float) -> tuple[float, float]:
    """(parameters, gradients) bytes that expert parallelism takes off FSDP's unsharded units: a rank gathers only
    the experts it owns (experts / ep of them) for the running and the prefetched layer, and holds one layer's
    unsharded gradients of those."""
    if cfg.ep <= 1:
        return 0.0, 0.0
    layer = compute_bytes * expert_params_per_layer(cfg.model) * (1 - 1 / cfg.ep)
    return 2 * layer, layer


def ep_other_ranks_expert_elements(cfg: TrainConfig) -> float:
    """Trained expert elements that live on the other ranks of the EP group: a rank owns experts / ep of them
    (transformers/distributed/expert_parallel.py `apply_expert_parallelism` shards the fused expert tensors over
    the `ep` mesh) and FSDP2-shards only those over `efsdp` (transformers/distributed/fsdp.py
    `apply_fully_sharded_data_parallelism`). Full fine-tuning only: adapters are not expert-sharded."""
    if cfg.ep <= 1 or cfg.method.value != "full":
        return 0.0
    return expert_params_per_layer(cfg.model) * cfg.model.num_layers * (1 - 1 / cfg.ep)


def ep_gradient_share(cfg: TrainConfig) -> float:
    """Share of the trainable parameters whose FSDP traffic stays: the experts' all-gathers and reduce-scatters
    run over the dp / ep ranks holding the same experts, carrying 1/ep of them."""
    if cfg.ep <= 1 or cfg.method.value != "full":
        return 1.0
    from planner.params import total_params

    return 1.0 - ep_other_ranks_expert_elements(cfg) / total_params(cfg.model)


def ep_comm_s(cfg: TrainConfig, *, tokens: int, layers: int, comm_eff: float) -> float:
    """All-to-all seconds per micro-batch on the busiest rank: dispatch and combine per MoE layer and pass, over
    the EP group's links (NVLink within a node, the network beyond), NCCL's per-hop latency; the busiest rank
    also carries the imbalance factor."""
    if cfg.ep <= 1:
        return 0.0
    from planner.comm import ALPHA_INTER_S, ALPHA_INTRA_S

    m, gpu = cfg.model, cfg.cluster.gpu
    within = cfg.ep <= cfg.cluster.gpus_per_node
    link = (gpu.intra_node_bytes_per_s if within else gpu.inter_node_bytes_per_s) * comm_eff
    alpha = ALPHA_INTRA_S if within else ALPHA_INTER_S
    elem = 4.0 if cfg.precision.value == "32-true" else 2.0
    message = all_to_all_bytes_per_rank(tokens, m.hidden_size, m.experts_per_token, cfg.ep, elem)
    message *= load_imbalance_factor(tokens, m.num_experts, m.experts_per_token, cfg.ep)
    calls = all_to_alls_per_layer(cfg.grad_ckpt.value == "full")
    return moe_layers(m, layers) * calls * all_to_all_time_s(message, cfg.ep, link, alpha)


def overlapped_ep_comm_s(all_to_all_s: float, expert_compute_s: float) -> float:
    """Exposed all-to-all when the dispatch overlaps expert compute (DeepEP's normal kernels, Zhao et al. 2025,
    DeepEP README: communication runs on separate SMs beside the computation of other micro-batch chunks): what
    exceeds the compute it can hide behind. transformers 5.25's own expert parallelism calls the collectives in
    line (all_to_all_single_autograd), so planned EP plans count the all-to-all whole (`ep_comm_s`); this is for
    comparing with engines that overlap (tests/validation/test_moe_throughput.py)."""
    return max(0.0, all_to_all_s - expert_compute_s)


def expert_compute_share(m: ModelSpec) -> float:
    """Share of a layer's forward linear FLOPs in its experts (routed and shared): the compute an overlapped
    dispatch can hide behind."""
    total = expert = 0.0
    for lin in m.linears():
        flops = lin.layer_share * lin.active_copies * lin.in_features * lin.out_features
        total += flops
        if lin.role in ("expert", "shared_expert"):
            expert += flops
    return expert / total if total else 0.0


def grouped_expert_params(m: ModelSpec, layers: int) -> float:
    """Parameters of the fused expert tensors that transformers runs through grouped_mm (routed dispatch) in
    `layers` decoder layers. torch's autocast does not list grouped_mm, and transformers casts the input to the
    weights' dtype before it (integrations/moe.py `_grouped_mm`), so autocast makes no 16-bit copy of them: under
    bf16-mixed full fine-tuning the fp32 experts run in fp32 (the dry run of Qwen3-30B-A3B at 16 sequences had 55 GiB
    of autocast copies fewer than a count over every weight)."""
    if not m.is_moe:
        return 0.0
    if not m.layer_kinds:
        per_layer = sum(lin.copies * lin.in_features * lin.out_features for lin in m.linears() if lin.copies > 1)
        return layers * per_layer
    total = 0.0
    for kind in m.layer_kinds:
        if kind.mlp.kind != "moe" or kind.mlp.dispatch != "routed":
            continue
        per_layer = sum(lin.copies * lin.in_features * (lin.out_features + (1 if lin.bias else 0))
                        for lin in kind.linears if lin.role == "expert")
        total += kind.count * per_layer
    return total * layers / m.num_layers
