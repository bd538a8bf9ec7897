"""Which implementation of torch.optim.AdamW a run gets, and what that implementation adds to a step.

torch.optim.AdamW given neither `foreach` nor `fused` (the Trainer's `adamw_torch`: transformers
trainer_optimizer.py `_get_adamw_torch` adds only `fused=True` for `adamw_torch_fused`; ftplan's runner and
profiler worker likewise) picks its implementation from the parameters' device (torch/optim/optimizer.py
`_default_to_fused_or_foreach`): the multi-tensor (foreach) kernels when every parameter lives on a device of
torch/utils/_foreach_utils.py `_get_foreach_kernels_supported_devices` (cuda, xpu, mtia and the private-use
backend), else the single-tensor for-loop (`_single_tensor_adam`) - on the CPU. `fused=True` (--fused-adamw) runs
`_fused_adam` on either.

What each leaves live during `step()` beyond the states (torch/optim/adam.py):
- foreach (`_multi_tensor_adam`): `exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)`, divided and
  shifted in place, one state-sized buffer for the whole parameter list;
- single-tensor: per parameter `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`: the sqrt and the
  quotient are both live while the division runs, with the previous parameter's `denom` (`single_tensor_temporary_
  bytes`): a few parameter-sized buffers of the largest parameters, not a state-sized one;
- fused: updates in place.
The values each reads and writes per parameter are the same for foreach and single-tensor (planner/timing.py
TORCH_ADAMW_VALUES: the same eight elementwise passes, one parameter at a time in the loop); the loop adds host
work per parameter tensor: ten eager ops (`step_t += 1`, `param.mul_`, `exp_avg.lerp_`, `exp_avg_sq.mul_`,
`addcmul_`, `_get_value`'s `.item()`, `sqrt`, the division, `add_`, `addcdiv_`) and its Python, which the CPU device
fit measures (profiler/device_fit.py measure_single_tensor_optimizer: a per-tensor cost and a per-byte rate).
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING

from planner import collectives as col
from planner.choices import Engine, Method, Offload, Optimizer, Stage
from planner.configs.ds_config import needs_ds_optimizer
from planner.gpus import SINGLE_OVER_FOREACH_TIME, SINGLE_TENSOR_HOST_OPS, GPUSpec, is_cpu  # measured ratios: see there
from planner.params import adapted_linears, lora_tensor_elements
from planner.states import score_params

if TYPE_CHECKING:
    from planner.model_layers import LinearShape
    from planner.models import ModelSpec
    from planner.states import StageParams
    from planner.strategy import Adapter, TrainConfig


# `_single_tensor_adam`'s parameter-sized temporaries live at once: sqrt(exp_avg_sq) and its quotient
SINGLE_TENSOR_TEMPORARIES = 2
# `_multi_tensor_adam`'s state-sized temporary: exp_avg_sq_sqrt, divided and shifted in place
FOREACH_TEMPORARIES = 1


class AdamwKernel(StrEnum):
    fused = "fused"
    foreach = "foreach"
    single_tensor = "single_tensor"


def _device_kernel(cfg: TrainConfig) -> AdamwKernel:
    """What torch.optim.AdamW runs where it steps tensors on the plan's device: `fused=True` as asked (--fused-adamw),
    else `_default_to_fused_or_foreach`'s choice, the single-tensor loop on the CPU and foreach on a GPU."""
    if cfg.fused_adamw:
        return AdamwKernel.fused
    return AdamwKernel.single_tensor if is_cpu(cfg.cluster.gpu) else AdamwKernel.foreach


def adamw_kernel(cfg: TrainConfig) -> AdamwKernel | None:
    """The torch AdamW implementation the run's step executes on the model's own parameters; None where no torch
    AdamW steps them (SGD, bitsandbytes' optimizers, DeepSpeed's optimizer over its flat partitions, an offloaded
    step)."""
    if cfg.optimizer is not Optimizer.adamw or cfg.offload is not Offload.none or cfg.engine is Engine.deepspeed:
        return None
    return _device_kernel(cfg)


def deepspeed_client_kernel(cfg: TrainConfig) -> AdamwKernel | None:
    """The torch AdamW implementation DeepSpeed's ZeRO optimizer steps over its flat fp32 partitions, one parameter
    group at a time (stage_1_and_2.py `_optimizer_step`; stage3.py per sub-group): the client optimizer, since
    ftplan's ds_config without offload has no optimizer section (planner/configs/ds_config.py needs_ds_optimizer)
    and the Trainer builds `adamw_torch` (`adamw_torch_fused` with --fused-adamw). None where DeepSpeed builds its own
    (offload: DeepSpeed's CPU Adam) or the optimizer is not AdamW. The partitions live on the device, so the kernel is
    the device's, as for the model's own parameters (adamw_kernel)."""
    if cfg.engine is not Engine.deepspeed or cfg.optimizer is not Optimizer.adamw or needs_ds_optimizer(cfg):
        return None
    return _device_kernel(cfg)


def step_temporaries(kernel: AdamwKernel | None, list_elements: float, largest_elements: float) -> float:
    """Elements torch AdamW's step() holds beyond its states over one parameter list of `list_elements` elements
    whose largest tensor has `largest_elements`: foreach, `exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)`
    for the whole list (FOREACH_TEMPORARIES); the single-tensor loop, its SINGLE_TENSOR_TEMPORARIES of the largest
    tensor; fused, none. DeepSpeed's flat partition is a list of one tensor (list and largest alike); the model's own
    parameters' single-tensor peak adds the previous parameter's denom (single_tensor_temporary_bytes)."""
    if kernel is AdamwKernel.foreach:
        return FOREACH_TEMPORARIES * list_elements
    if kernel is AdamwKernel.single_tensor:
        return SINGLE_TENSOR_TEMPORARIES * largest_elements
    return 0.0


def _elements_of(lin: LinearShape) -> int:
    return lin.copies * lin.in_features * lin.out_features


@lru_cache(maxsize=4096)
def trainable_tensors(m: ModelSpec, adapter: Adapter, stage: Stage) -> float:
    """Trainable parameter tensors of the whole model, as the optimizer's for-loop visits them. Full: a decoder
    layer's parameter tensors (planner.collectives.layer_structure: its linears' weights and biases, a fused expert
    tensor one, and its norms, Qwen3's q/k norms and Gemma 3's sandwich norms included for a derived model), the
    embedding (and BLOOM's embedding norm), the final norm and an untied head, less the frozen layers and embedding
    (--freeze-layers). LoRA: A and B per adapted linear or parameter in the layers that hold it
    (planner.collectives.trainable_tensors). A reward model adds its score head."""
    head = 1 if stage is Stage.rm else 0
    if adapter.method is not Method.full:
        return col.trainable_tensors(m, m.num_layers, adapter.method, adapter.lora_targets) + head
    norm = 2 if m.layernorm_bias else 1
    layers = m.num_layers - (min(adapter.freeze_layers, m.num_layers) if adapter.freeze_layers else 0)
    embedding = 0 if adapter.freeze_layers else 1 + (norm if m.embedding_norm else 0)
    head = 1 if stage is Stage.rm or not m.tie_embeddings else 0
    return layers * col.layer_structure(m)[1] + embedding + norm + head


@lru_cache(maxsize=4096)
def largest_trainable_tensors(m: ModelSpec, adapter: Adapter, stage: Stage, *, has_embedding: bool = True,
                              has_head: bool = True) -> tuple[float, float]:
    """Elements of the largest trainable parameter tensor (outside the decoder layers, inside one), of the whole model
    or of a pipeline stage that holds the input embedding or not (`has_embedding`) and the model's output or not
    (`has_head`: planner.states.StageParams). Full: the embedding (unless frozen), an untied LM head or a reward model's
    `score` (h x num_labels: transformers' GenericForSequenceClassification, no lm_head); the largest linear (a fused
    expert tensor whole). LoRA: none outside but a reward model's score (h); inside, the largest A or B of an adapted
    linear (planner.params.lora_tensor_elements)."""
    score = score_params(m, stage) if has_head else 0
    if adapter.method is Method.full:
        vocab = m.vocab_size * m.hidden_size
        embedding = vocab if has_embedding and not adapter.freeze_layers else 0
        head = vocab if has_head and stage is not Stage.rm and not m.tie_embeddings else 0
        return float(max(embedding, head, score)), float(max((_elements_of(lin) for lin in m.linears()), default=0))
    widest = max((max(lora_tensor_elements(lin, adapter.lora_r))
                  for lin in adapted_linears(m, adapter.lora_targets)), default=0.0)
    return float(score), widest


def single_tensor_temporary_bytes(cfg: TrainConfig, state_dtype_bytes: float, shards: int,
                                  sp: StageParams | None = None) -> float:
    """`_single_tensor_adam`'s step peak above the states, in the states' dtype (the parameter's). At parameter i
    the sqrt and the quotient are live together, and the loop variable `denom` still holds parameter i-1's until the
    new one is bound (torch/optim/adam.py `_single_tensor_adam`: `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt)
    .add_(eps)`, per parameter of the list): 2 x size(i) + size(i-1), in the order of the Trainer's weight-decay group
    (transformers trainer.py `create_optimizer`: model.parameters() less the norms and biases, which
    `get_decay_parameter_names` leaves to the second group). The embedding comes first: 2 x its size; an untied head
    follows the last decoder layer's last weight (the final norm is in the other group): 2 x its size + that weight's
    (_head_pair_elements). Inside a decoder layer the largest tensor follows one of its
    own size (transformers' Llama-style order q, k, v, o, gate, up, down: up after gate; LoRA's A and B of a square
    or, for the MLP, B of up (i x r) before A of down (r x i)): 3 x its size, which bounds the layer's pairs. Per rank:
    its tensor-parallel slice; FSDP's shard (FSDP2 shards each parameter on dim 0; FSDP1's flat shard holds at most
    that many of its elements). `sp`: the pipeline stage whose own parameters the optimizer steps (DeepSpeed's
    pipeline engine wraps the optimizer around the stage's module, runtime/pipe/engine.py): the embedding counts only
    where the stage holds it, the head only on the last; None: the whole model (pp 1).
    Measured (benchmarks/cpu_adamw_step.py, profiler.tracker): LLAMA_16M full 24.6 MB
    (2 x the 8000 x 384 embedding), LoRA r 8 98 KB (3 x 8 x 1024); DeepSpeed ZeRO-0 in bf16 over the 3.7M Llama of
    tests/validation/zero_step_probe.py, its head untied, the Trainer's groups: 2,801,664 B (2 x the 256 x 1024 head
    + the 688 x 256 down_proj before it; tests/validation/test_memory_zero_adamw_step_measured.py); its pipeline in
    fp32 at pp 2 (tests/validation/test_memory_pipeline_step_measured.py): 2,113,536 B on the first stage (3 x the
    down_proj: the embedding's pair, 2 x 262,144, is smaller) and 2,801,664 B on the last."""
    has_embedding = sp.has_embedding if sp is not None else True
    has_head = sp.has_head if sp is not None else True
    outer, layer = largest_trainable_tensors(cfg.model, cfg.adapter, cfg.stage, has_embedding=has_embedding,
                                             has_head=has_head)
    head_pair = _head_pair_elements(cfg.model, cfg.adapter, cfg.stage) if has_head else 0.0
    largest = max(SINGLE_TENSOR_TEMPORARIES * outer, (SINGLE_TENSOR_TEMPORARIES + 1) * layer, head_pair)
    return largest / cfg.tp / shards * state_dtype_bytes


def _head_pair_elements(m: ModelSpec, adapter: Adapter, stage: Stage) -> float:
    """A fully trained untied LM head's single-tensor step: its sqrt and quotient, beside the denom of the tensor
    before it in the weight-decay group, the last decoder layer's last linear (m.linears() in module order; a fused
    expert tensor whole). None with a tied head, LoRA or a reward model's score head."""
    if adapter.method is not Method.full or stage is Stage.rm or m.tie_embeddings:
        return 0.0
    linears = m.linears()
    before = _elements_of(linears[-1]) if linears and adapter.freeze_layers < m.num_layers else 0
    return float(SINGLE_TENSOR_TEMPORARIES * m.vocab_size * m.hidden_size + before)


def single_tensor_host_s(gpu: GPUSpec) -> float:
    """Seconds the single-tensor loop adds per parameter tensor: the device fit's measured cost where it has one,
    else SINGLE_TENSOR_HOST_OPS eager ops at the device's host_op_s."""
    if gpu.adamw_single_tensor_s:  # None or 0: not measured
        return gpu.adamw_single_tensor_s
    return SINGLE_TENSOR_HOST_OPS * gpu.host_op_s


def single_tensor_bytes_per_s(gpu: GPUSpec) -> float:
    """The rate the single-tensor step (with its clipping) moves its counted bytes: the device fit's measurement
    where it has one, else the foreach step's (optimizer_bytes_per_s, else the memory bandwidth) over
    SINGLE_OVER_FOREACH_TIME."""
    if gpu.adamw_single_tensor_bytes_per_s:  # None or 0: not measured
        return gpu.adamw_single_tensor_bytes_per_s
    return (gpu.optimizer_bytes_per_s or gpu.hbm_bytes_per_s) / SINGLE_OVER_FOREACH_TIME
