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
- FSDP: one unit per decoder layer plus the root (the transformer auto-wrap policy), an all-gather per
  unit in forward and (FULL_SHARD) in backward, a reduce-scatter per unit.
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

from planner.choices import Method
from planner.models import ModelSpec
from planner.params import resolve_lora_targets

DDP_FIRST_BUCKET_BYTES = 2**20
DDP_BUCKET_BYTES = 25 * 2**20
# Host work per ZeRO-3 submodule and per FSDP unit and micro-batch, in eager-op dispatches (counted above)
ZERO3_MODULE_HOST_OPS = 40.0
ZERO3_CONTAINER_HOST_OPS = 8.0
ZERO3_GRAD_TENSOR_HOST_OPS = 15.0
ZERO3_REDUCE_BUCKET_HOST_OPS = 20.0
FSDP_UNIT_HOST_OPS = 24.0


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


# Modules of one decoder layer in transformers' modeling code besides its linears: the layer, its
# attention and MLP containers, the activation and two norms (modeling_llama.py LlamaDecoderLayer).
LAYER_MODULES_BESIDES_LINEARS = 6
# Top-level modules: the CausalLM wrapper, the base model, embedding, final norm, rotary embedding, LM head.
ROOT_MODULES = 6
# Modules peft adds per adapted linear (peft/tuners/lora/layer.py LoraLayer): the lora_dropout, lora_A,
# lora_B and lora_magnitude_vector ModuleDicts, the lora_embedding_A/B ParameterDicts, and the Dropout
# and the two Linear layers inside them; plus PeftModel and LoraModel at the top.
LORA_MODULES_PER_LINEAR = 9
PEFT_ROOT_MODULES = 2


def zero3_modules(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...]) -> int:
    """Modules DeepSpeed hooks: every submodule, with parameters or not
    (parameter_offload.py `_register_hooks_recursively` walks all children, and fetch_sub_module runs for
    each, with an empty parameter set for containers)."""
    per_layer = len(m.linears()) + LAYER_MODULES_BESIDES_LINEARS
    root = ROOT_MODULES
    if method is not Method.full:
        per_layer += LORA_MODULES_PER_LINEAR * len(resolve_lora_targets(m, lora_targets))
        root += PEFT_ROOT_MODULES
    return layers * per_layer + root


def param_modules(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...]) -> int:
    """Modules that own parameters, one ZeRO-3 all-gather each per pass: the linears and two norms per
    layer (for LoRA also each adapted linear's A and B), the embedding, the final norm, an untied head."""
    lora = 2 * len(resolve_lora_targets(m, lora_targets)) if method is not Method.full else 0
    return layers * (len(m.linears()) + 2 + lora) + 2 + (0 if m.tie_embeddings else 1)


def fsdp_units(layers: int) -> int:
    """Decoder layers wrapped one unit each, plus the root unit (embedding, norm, head)."""
    return layers + 1


def zero3_host_ops(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...]) -> float:
    """Eager-op equivalents of DeepSpeed ZeRO-3's hooks per micro-batch (forward and backward): the full fetch /
    release path for the modules that own parameters, the empty-set path for the others (module docstring)."""
    owners = param_modules(m, layers, method, lora_targets)
    containers = max(0, zero3_modules(m, layers, method, lora_targets) - owners)
    return owners * ZERO3_MODULE_HOST_OPS + containers * ZERO3_CONTAINER_HOST_OPS


def trainable_tensors(m: ModelSpec, layers: int, method: Method, lora_targets: tuple[str, ...]) -> int:
    """Trainable parameter tensors on one stage: every weight (and bias) of a full fine-tune's layers plus the
    embedding, final norm and untied head; LoRA's A and B per adapted linear."""
    if method is not Method.full:
        return layers * 2 * len(resolve_lora_targets(m, lora_targets))
    per_layer = sum(2 if lin.bias else 1 for lin in m.linears()) + 2 * (2 if m.layernorm_bias else 1)
    return layers * per_layer + 2 + (0 if m.tie_embeddings else 1)
