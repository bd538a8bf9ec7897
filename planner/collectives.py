"""How many collectives a data-parallel engine issues per step, and the host work around them.

A collective's fixed cost (latency alpha per ring hop, planner/comm.py, or gloo's measured per-call
cost on the CPU) is paid per call, so splitting the same bytes into more calls costs more: the time of
`calls` equal messages is `calls x t(bytes / calls)`. Call counts follow each engine's own bucketing:
- DDP (torch/nn/parallel/distributed.py): a first bucket of 1 MiB (`dist._DEFAULT_FIRST_BUCKET_BYTES`),
  then `bucket_cap_mb` = 25 MiB buckets, one all-reduce each;
- DeepSpeed ZeRO-1/2 (runtime/zero/stage_1_and_2.py): gradients reduced in `reduce_bucket_size`
  buckets, updated partitions all-gathered in `allgather_bucket_size` buckets (both h*h elements in the
  emitted ds_config, planner/deepspeed_sizes.py);
- DeepSpeed ZeRO-3 (runtime/zero/partitioned_param_coordinator.py): one all-gather per submodule that
  owns parameters, in forward, in the recomputed forward under full checkpointing, and in backward,
  and gradients reduce-scattered per `reduce_bucket_size`; every submodule also runs DeepSpeed's
  pre/post hooks in Python (fetch_sub_module / release_sub_module), which wait on the gather, so the
  host work is on the critical path: "the idle time between layers was caused by the overhead
  associated with handling hooks that launch allgather/reduce_scatter" (DeepSpeed maintainer,
  deepspeedai/DeepSpeed#5047);
- FSDP1: one unit per decoder layer plus the root (the transformer auto-wrap policy), an all-gather per
  unit in forward and (FULL_SHARD) in backward, a reduce-scatter per unit; FSDP2 in accelerate's units (the layers,
  the embedding, the [final norm, head] tail kept gathered into backward, the root), counted per call and size in
  planner/engines/fsdp2_traffic.py.
Host work per hooked module: on the CPU device measured (`ftplan profile calibrate --device`, GPUSpec
fields); on GPUs counted in eager-op dispatches from the code path of one module per micro-batch and
multiplied by the host's `host_op_s`. DeepSpeed ZeRO-3, per pass (forward, backward): fetch_sub_module
-> __all_gather_params -> all_gather_coalesced (flat buffer, a narrow + copy per parameter, the
collective, its handle: ~6), the wait (event query, stream wait, event record: ~4), release_sub_module
-> partition (the parameter's storage freed and its handle reset: ~3), the Pre/PostBackwardFunction
autograd wrappers around the module (~3), the gradient hook's copy into the reduce bucket (~2, backward):
about 20 per pass, 40 per micro-batch. FSDP2 per unit and pass: all-gather copy-in (empty + foreach copy),
the collective, copy-out (split_with_sizes_copy), reshard (storage free), and in backward the
reduce-scatter copy-in, collective and copy-out: about 12 per pass, 24 per micro-batch.
A submodule without parameters of its own (a decoder layer, its attention and MLP containers, peft's ModuleDicts
and Dropout) runs the same hooks with an empty parameter set: fetch_sub_module skips the gather, the wait and the
release (`params_to_fetch` is empty), leaving the stream wait on the all-gather stream, the trace bookkeeping and the
Pre/PostBackwardFunction autograd wrappers in both passes: about 8 per micro-batch.
ZeRO-3's gradient path adds, per trainable parameter tensor and micro-batch, the backward hook's copy into the
reduce bucket (stage3.py __add_grad_to_ipg_bucket: stream wait, narrow, view, copy_, record_stream, the .data swap)
and its share of partition_grads (the partition's narrow, the copy or add into the flat gradient buffer, the
bookkeeping): about 15; and per reduce bucket (__reduce_and_partition_ipg_grads: the event checks, the
reduce-scatter's flatten / pad / collective / chunk, the event record): about 20. World size 1 runs them too.
"""

from __future__ import annotations

import math
from functools import lru_cache

from planner.choices import Method
from planner.models import LinearShape, ModelSpec
from planner.params import adapted_count, adapted_linears, adapted_per_layer, lora_tensor_elements

DDP_FIRST_BUCKET_BYTES = 2**20
DDP_BUCKET_BYTES = 25 * 2**20
# Host work per ZeRO-3 submodule and per FSDP unit and micro-batch, in eager-op dispatches (counted above)
ZERO3_MODULE_HOST_OPS = 40.0
ZERO3_CONTAINER_HOST_OPS = 8.0
ZERO3_GRAD_TENSOR_HOST_OPS = 15.0
ZERO3_REDUCE_BUCKET_HOST_OPS = 20.0
FSDP_UNIT_HOST_OPS = 24.0
# The CPU device fit's ZeRO-3 probe (profiler/device_fit.py `_hook_rank`): 48 Linear(8, 8) modules in one Sequential,
# each owning 2 trainable tensors, all in one reduce bucket; its measured time per module is this many op-equivalents
# of the counts above, so the planner prices a model's hooks at that measured cost per op-equivalent.
ZERO3_PROBE_MODULES = 48
ZERO3_PROBE_OPS_PER_MODULE = ZERO3_MODULE_HOST_OPS + 2 * ZERO3_GRAD_TENSOR_HOST_OPS + \
    (ZERO3_CONTAINER_HOST_OPS + ZERO3_REDUCE_BUCKET_HOST_OPS) / ZERO3_PROBE_MODULES


def ddp_buckets(grad_bytes: float) -> int:
    """All-reduce calls of DDP's gradient buckets."""
    if grad_bytes <= 0:
        return 0
    return 1 + math.ceil(max(0.0, grad_bytes - DDP_FIRST_BUCKET_BYTES) / DDP_BUCKET_BYTES)


def buckets(total_bytes: float, bucket_bytes: float) -> int:
    """Calls of a bucketed collective."""
    if total_bytes <= 0:
        return 0
    return max(1, math.ceil(total_bytes / max(1.0, bucket_bytes)))


# Modules of one decoder layer in transformers' modeling code that a forward calls and that own no parameter: the
# layer, its attention and MLP containers and the activation (modeling_llama.py LlamaDecoderLayer; Mixtral's
# `experts.act_fn` in place of the MLP's); its norms and linears (the fused experts one module) own parameters.
LAYER_CONTAINERS = 4
# Top-level modules: the CausalLM wrapper, the base model, embedding, final norm, rotary embedding, LM head.
ROOT_MODULES = 6
# Modules peft adds per adapted linear whose forward runs (peft/tuners/lora/layer.py Linear.forward): the
# lora.Linear wrapper (its base_layer is the original linear), lora_dropout[adapter] (Dropout or Identity),
# lora_A[adapter] and lora_B[adapter]; plus PeftModel and LoraModel at the top. LoraLayer also registers the
# lora_dropout / lora_A / lora_B / lora_magnitude_vector ModuleDicts and the lora_embedding_A/B ParameterDicts
# (9 modules per linear in all), but those are only indexed, never called, so the module hooks DeepSpeed puts
# on them never run (counted on a peft model: tests/profiler/test_zero3_hook_modules.py).
LORA_MODULES_PER_LINEAR = 4
# Modules peft adds per adapted parameter whose forward runs: the ParamWrapper only (peft/tuners/lora/layer.py
# ParamWrapper.forward calls its base_layer under a parametrization that reads lora_A / lora_B's weights,
# `_activate_lora`, never calling them); an experts module with both fused tensors adapted is wrapped twice, nested
# (counted on tiny DeepSeek-V3 and Qwen3-MoE models: tests/profiler/test_layer_share_counts.py). Under ZeRO-3 the
# weights it reads are gathered on first access and registered as external parameters of the module then running
# (deepspeed/runtime/zero/parameter_offload.py ZeROOrderedDict.__getitem__), which later fetches take with that
# module's own (partitioned_param_coordinator.py get_all_parameters: ds_external_parameters): no fetch of their
# own; it trains to DDP's adapter within fp32 rounding on 2 CPU processes (tests/runner/test_moe_lora_sharded.py).
LORA_MODULES_PER_PARAMETER = 1
PEFT_ROOT_MODULES = 2


def _owner(lin: LinearShape) -> str:
    """The module that owns a linear's weight: the linear itself, or for fused expert tensors (transformers >= 5
    stores a MoE layer's experts as 3-D parameters of one experts module) that module."""
    where = lin.path or lin.name
    return where.rsplit(".", 1)[0] if lin.copies > 1 and "." in where else where


@lru_cache(maxsize=1024)
def layer_structure(m: ModelSpec) -> tuple[float, float]:
    """(modules that own parameters, parameter tensors) of a mean decoder layer. A hand-written family: its linears
    (Mixtral's fused experts one module) and two norms (weight, and bias for LayerNorm); a model read from
    transformers: each layer kind's own modules (the fused experts one module with two or four tensors, Qwen3's q/k
    norms, Gemma 3's four sandwich norms) and its parameters that no linear or norm holds (gpt-oss's
    `self_attn.sinks`, which makes its attention module an owner: transformers/models/gpt_oss/modeling_gpt_oss.py
    GptOssAttention), weighted by the kind's share of the layers."""
    if not m.layer_kinds:
        per_norm = 2 if m.layernorm_bias else 1
        return float(len({_owner(lin) for lin in m.linears()}) + 2), \
            float(sum(2 if lin.bias else 1 for lin in m.linears()) + 2 * per_norm)
    owners = tensors = 0.0
    for kind in m.layer_kinds:
        share = kind.count / m.num_layers
        held = {_owner(lin) for lin in kind.linears} | {norm.path for norm in kind.norms}
        others = {p.path.rsplit(".", 1)[0] if "." in p.path else "" for p in kind.other_params}
        owners += share * len(held | others)
        tensors += share * (sum(2 if lin.bias else 1 for lin in kind.linears) +
                            sum(2 if norm.bias else 1 for norm in kind.norms) + len(kind.other_params))
    return owners, tensors


def called_per_layer(m: ModelSpec) -> float:
    """Modules of a mean decoder layer that a forward calls: as measured per layer kind where the spec holds it
    (profiler/spec_derive.py `called_modules`: DeepSeek-V3's MoE layer also calls its shared expert and two
    `act_fn`, gpt-oss's experts no `act_fn`), else the rule: its parameter owners and LAYER_CONTAINERS (hand-written
    families, and specs derived before the calls were measured)."""
    if m.layer_kinds and all(kind.called_modules for kind in m.layer_kinds):
        return sum(kind.count * kind.called_modules for kind in m.layer_kinds) / m.num_layers
    return layer_structure(m)[0] + LAYER_CONTAINERS


def zero3_modules(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...]) -> int:
    """Modules whose ZeRO-3 hooks run per pass: every submodule that is called, with parameters or not
    (parameter_offload.py `_register_hooks_recursively` walks all children, and fetch_sub_module runs for
    each called one, with an empty parameter set for containers; a module hook runs only when the module is
    called, torch/nn/modules/module.py `_call_impl`)."""
    per_layer = called_per_layer(m)
    root = ROOT_MODULES
    if method is not Method.full:
        linears, params = adapted_per_layer(m, lora_targets)  # each weighted by the share of layers holding it
        per_layer += LORA_MODULES_PER_LINEAR * linears + LORA_MODULES_PER_PARAMETER * params
        root += PEFT_ROOT_MODULES
    return round(layers * per_layer) + root


def param_modules(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...]) -> int:
    """Modules that own parameters, one ZeRO-3 all-gather each per pass: each layer's linears (fused experts one
    module) and norms (for LoRA also each adapted linear's or parameter's A and B, peft/tuners/lora/layer.py
    LoraLayer.update_layer and ParamWrapper.update_layer: two nn.Linear each, in the layers that hold the target),
    the embedding, the final norm, an untied head."""
    lora = 2 * adapted_count(m, lora_targets) if method is not Method.full else 0
    return round(layers * (layer_structure(m)[0] + lora)) + 2 + (0 if m.tie_embeddings else 1)


def fsdp_units(layers: int) -> int:
    """FSDP1's units: decoder layers wrapped one unit each, plus the root unit (embedding, norm, head); FSDP2's:
    planner/engines/fsdp2_traffic.py `fsdp2_units`."""
    return layers + 1


def zero3_host_ops(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...]) -> float:
    """Eager-op equivalents of DeepSpeed ZeRO-3's hooks per micro-batch (forward and backward): the full fetch /
    release path for the modules that own parameters, the empty-set path for the others (module docstring)."""
    owners = param_modules(m, layers, method, lora_targets)
    containers = max(0, zero3_modules(m, layers, method, lora_targets) - owners)
    return owners * ZERO3_MODULE_HOST_OPS + containers * ZERO3_CONTAINER_HOST_OPS


def trainable_tensors(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...]) -> int:
    """Trainable parameter tensors on one stage: every weight (and bias) of a full fine-tune's layers plus the
    embedding, final norm and untied head; LoRA's A and B per adapted linear or parameter, in the layers that hold
    it (DeepSeek-V3's 3 dense layers of 61 hold no experts: `adapted_per_layer`)."""
    if method is not Method.full:
        return round(layers * 2 * adapted_count(m, lora_targets))
    return round(layers * layer_structure(m)[1]) + 2 + (0 if m.tie_embeddings else 1)


def _tensor_elements(lin: LinearShape, tp: int) -> tuple[float, ...]:
    weight = lin.copies * lin.in_features * lin.out_features / tp
    return (weight, lin.copies * lin.out_features / tp) if lin.bias else (weight,)


def _layer_tensor_elements(m: ModelSpec, method: Method, lora_r: int, lora_targets: tuple[str, ...],
                           tp: int) -> tuple[tuple[float, tuple[float, ...]], ...]:
    """(share of the layers, trainable tensor sizes in elements, in module order) per layer kind, TP-split."""
    kinds = [(k.count / m.num_layers, k.linears, k.norms, k.other_params) for k in m.layer_kinds]
    if method is not Method.full:
        adapted = {lin.name for lin in adapted_linears(m, lora_targets)}
        # lora_A then lora_B of each adapted linear, at their own sizes (r x in, out x r: params.lora_tensor_elements)
        return tuple((share, tuple(x / tp for lin in lins if lin.name in adapted
                                   for x in lora_tensor_elements(lin, lora_r)))
                     for share, lins, _, _ in kinds or [(1.0, m.linears(), (), ())])
    if not kinds:
        norms = (float(m.hidden_size),) * (4 if m.layernorm_bias else 2)
        return ((1.0, norms + tuple(x for lin in m.linears() for x in _tensor_elements(lin, tp))),)
    # then the parameters no linear or norm holds (gpt-oss's sinks, one element per head) at their whole size, as
    # the norms: a bucket holds thousands of them
    return tuple((share, tuple(float(n.width) for n in norms for _ in range(2 if n.bias else 1)) +
                  tuple(x for lin in lins for x in _tensor_elements(lin, tp)) +
                  tuple(float(p.elements) for p in others))
                 for share, lins, norms, others in kinds)


def reduce_bucket_calls(m: ModelSpec, layers: int, method: Method, lora_r: int, lora_targets: tuple[str, ...],
                        tp: int, bucket_elements: int, outside_elements: tuple[float, ...] = ()) -> int:
    """Gradient reductions DeepSpeed issues per micro-batch over one stage's trainable tensors: a tensor whose
    gradient would overflow the bucket flushes it first, and a tensor larger than the bucket is reduced alone
    (deepspeed/runtime/zero/stage3.py and stage_1_and_2.py `reduce_independent_p_g_buckets_and_remove_grads`:
    `if bucket.elements + param.numel() > reduce_bucket_size: reduce`), so a model of few large tensors (a MoE
    layer's fused experts) makes about one call per tensor, not one per bucket of its total size.
    `outside_elements`: the trainable tensors outside the layers (embedding, final norm, head), packed last."""
    return sum(n for _, n in reduce_bucket_sizes(m, layers, method, lora_r, lora_targets, tp, bucket_elements,
                                                 outside_elements))


@lru_cache(maxsize=1024)  # per candidate in the search; pure in hashable arguments
def reduce_bucket_sizes(m: ModelSpec, layers: int, method: Method, lora_r: int, lora_targets: tuple[str, ...],
                        tp: int, bucket_elements: int, outside_elements: tuple[float, ...] = ()
                        ) -> tuple[tuple[float, int], ...]:
    """The reductions of `reduce_bucket_calls` as (elements, how many calls of that size): a device whose
    collective time is not linear in the size (gloo, measured points) prices each size apart."""
    bucket = max(1, bucket_elements)
    calls: dict[float, int] = {}
    filled = 0.0

    def flush() -> None:
        calls[filled] = calls.get(filled, 0) + 1

    for share, sizes in _layer_tensor_elements(m, method, lora_r, lora_targets, tp):
        for _ in range(round(share * layers)):  # a kind of share f holds round(f x layers) of the stage's layers
            for size in reversed(sizes):  # backward reaches a layer's tensors last-first
                if filled > 0 and filled + size > bucket:
                    flush()
                    filled = 0.0
                filled += size
    for size in outside_elements:
        if filled > 0 and filled + size > bucket:
            flush()
            filled = 0.0
        filled += size
    if filled > 0:
        flush()
    return tuple(calls.items())
