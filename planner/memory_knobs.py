"""The memory switches users turn on, as the memory model (planner.memory) applies them to one config:
cross-entropy implementation, Liger kernels, torch.compile, activation offloading, FSDP version, QLoRA sharded
storage, the bitsandbytes and transformers releases. The formulas live in planner.loss_memory,
planner.liger_kernels, planner.torch_compile, planner.offload_activations, planner.bnb_versions and
planner.transformers_versions."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from planner import bnb_versions, liger_kernels, loss_memory, offload_activations, transformers_versions
from planner.activations import (
    LayerTraining,
    hf_layer_bytes_per_token,
    kept_quantized_input_bytes_per_token,
    litgpt_layer_bytes_per_token,
    packed_mask,
)
from planner.choices import CrossEntropy, Engine, FsdpStrategy, GradCkpt, Kernels, Method, Quant, Stage
from planner.compute import rows_per_sample
from planner.models import ModelSpec
from planner.params import embedding_params, layer_params, quantizable_params, resolve_lora_targets
from planner.states import fp32_adapters, is_mixed, kbit_prepared, output_params, quant_bytes_per_param

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

NF4_DATA_BYTES = 0.5  # two 4-bit codes per byte (Dettmers et al. 2023)


def head_weight_compute_bytes(cfg: TrainConfig, grad_bytes: float) -> float:
    """Bytes per element of the LM head's weight as the loss sees it: FSDP's MixedPrecision all-gathers it in
    16 bits and DeepSpeed runs the module in 16 bits, so a gradient computed against it (Liger's fused loss:
    `grad_weight = torch.zeros_like(weight)`, liger_kernel/ops/fused_linear_cross_entropy.py) takes that dtype;
    under DDP autocast the weight is the fp32 parameter."""
    sharded_fsdp = cfg.engine is Engine.fsdp and cfg.fsdp is not FsdpStrategy.no_shard
    if is_mixed(cfg.precision) and (sharded_fsdp or cfg.engine is Engine.deepspeed):
        return 2.0
    return grad_bytes


# lit_gpt/utils.py chunked_cross_entropy's default chunk, the chunks finetune/lora.py asks the head for
# (`model(input_ids, lm_head_chunk_size=128)`, finetune/lora.py:216 at lit-gpt 8641822)
LITGPT_CHUNK_TOKENS = 128


def litgpt_loss_bytes(tokens: int, vocab: float) -> float:
    """litgpt's head and loss in its training loop (lit-gpt 8641822), besides the logits the loop holds
    (held_output_bytes_per_logit): Fabric's bf16-true returns the head's chunks converted to the default dtype,
    fp32 (lightning/fabric/wrappers.py _FabricModule.forward `convert_output`; plugins/precision/half.py
    `convert_output(... dst_type=torch.get_default_dtype())`), and `chunked_cross_entropy` (lit_gpt/utils.py:256-262)
    runs cross_entropy on each fp32 chunk: log_softmax keeps its fp32 output (4 V per token), and backward adds
    one chunk's two fp32 gradients (nll's and log_softmax's, 8 V per chunk token) before the cast back. Forward's
    own peak (the 16-bit chunks beside their fp32 copies, 6 V per token) is lower."""
    return 4.0 * vocab * tokens + 8.0 * vocab * min(tokens, LITGPT_CHUNK_TOKENS)


def litgpt_layer_delta_per_token(cfg: TrainConfig, act_bytes: int, train: LayerTraining) -> float:
    """Per token per layer, what litgpt's Block saves beyond transformers' decoder layer
    (planner.activations.litgpt_layer_bytes_per_token less hf_layer_bytes_per_token): for a --litgpt run in 16-bit
    true precision (litgpt's bf16-true / 16-true), LoRA on frozen weights, no checkpointing, one GPU's layer (no
    TP); 0 otherwise, where transformers' bookkeeping stands."""
    m = cfg.model
    if (not cfg.litgpt or train.weights or is_mixed(cfg.precision) or cfg.grad_ckpt is not GradCkpt.none
            or cfg.tp > 1 or m.layer_kinds or m.is_moe or not m.gated_mlp or m.layernorm_bias):
        return 0.0
    return (litgpt_layer_bytes_per_token(m, act_bytes=act_bytes, attn=cfg.attn, train=train)
            - hf_layer_bytes_per_token(m, act_bytes=act_bytes, attn=cfg.attn, train=train, seq_len=cfg.seq_len))


def head_loss_bytes(cfg: TrainConfig, tokens: int, act_bytes: int, grad_bytes: float) -> float:
    """The LM head and loss of one micro-batch (planner.loss_memory), vocabulary split by TP.
    Liger's fused loss keeps the head's weight gradient from forward when the head trains."""
    m = cfg.model
    if cfg.litgpt:
        return litgpt_loss_bytes(tokens, m.vocab_size / cfg.tp)
    head_weight = 0.0
    if cfg.method is Method.full:
        head_weight = head_weight_compute_bytes(cfg, grad_bytes) * m.vocab_size * m.hidden_size / cfg.tp
    loss = loss_memory.loss_bytes(cfg.cross_entropy, tokens=tokens, vocab=m.vocab_size / cfg.tp,
                                  hidden=m.hidden_size, logit_bytes=act_bytes, head_weight_bytes=head_weight,
                                  compiled=cfg.torch_compile, shifted_copy=loss_keeps_shifted_copy(cfg))
    held = held_output_bytes(cfg, tokens, act_bytes)
    if held:
        # forward's peak counts the output already (it lives through forward in every release): what the loss adds
        # beside it is the rest of forward's peak or backward's buffers, whichever is larger
        loss = max(loss - held, loss_memory.standard_loss_backward_bytes(tokens, m.vocab_size / cfg.tp))
    return loss


def held_output_bytes_per_logit(cfg: TrainConfig, act_bytes: int) -> float:
    """Bytes per logit of the model's output when the training loop keeps it through backward and the optimizer step
    (--keeps-output): Answer.AI's fsdp_qlora train.py binds `output = model(input_ids, labels=...)`, runs
    `loss.backward()` and `optimizer.step()`, and only then sets `output = None` (train.py at 05ed9f2, "Delete the
    output so more memory frees up before the next forward pass"); the Trainer's compute_loss returns the loss alone,
    so its output is gone before backward. The logits are fp32 where the model upcasts them (transformers 4.31 to
    4.45) and in the compute dtype otherwise (planner.transformers_versions.output_logits_fp32). transformers' eager
    standard loss only: Liger's fused loss returns no logits, the chunked and compiled losses are not modelled so.
    litgpt's loop (--litgpt) holds its fp32 logit chunks the same way (litgpt_loss_bytes)."""
    if cfg.litgpt:
        # finetune/lora.py:216 binds `logits = model(...)`, the fp32 chunks Fabric returns (litgpt_loss_bytes), and
        # rebinds it only at the next iteration's forward
        return 4.0
    if not cfg.keeps_output or cfg.cross_entropy is not CrossEntropy.standard or cfg.torch_compile:
        return 0.0
    return 4.0 if transformers_versions.output_logits_fp32(cfg.transformers_version) else float(act_bytes)


def held_output_bytes(cfg: TrainConfig, tokens: int, act_bytes: int) -> float:
    """The logits of one micro-batch that the loop keeps (held_output_bytes_per_logit), vocabulary split by TP."""
    return held_output_bytes_per_logit(cfg, act_bytes) * cfg.model.vocab_size / cfg.tp * tokens


def loss_keeps_shifted_copy(cfg: TrainConfig) -> bool:
    """transformers 4.46-4.48's shifted fp32 copy of the logits (planner.transformers_versions): with one sequence
    per micro-batch `logits[..., :-1, :]` is already contiguous and `.contiguous()` copies nothing (measured:
    tests/profiler/test_loss_releases.py)."""
    return cfg.micro_batch > 1 and transformers_versions.loss_keeps_shifted_copy(cfg.transformers_version)


def fused_norm_and_mlp(cfg: TrainConfig) -> bool:
    """Liger's kernels and torch.compile make the same savings (planner.torch_compile), counted once."""
    return cfg.kernels is Kernels.liger or cfg.torch_compile


def kernel_saving_per_token(cfg: TrainConfig, act_bytes: int, *, recomputed: bool = False) -> float:
    """Saved bytes per token per decoder layer that Liger's kernels or torch.compile remove. With full
    checkpointing a layer keeps only its input, so the saving applies to the one layer backward recomputes."""
    if not fused_norm_and_mlp(cfg) or (cfg.grad_ckpt is GradCkpt.full and not recomputed):
        return 0.0
    return liger_kernels.liger_layer_saving_bytes_per_token(cfg.model, act_bytes=act_bytes, t=cfg.tp,
                                                            sequence_parallel=cfg.sequence_parallel,
                                                            norms_train=cfg.method is Method.full)


def final_norm_saving_per_token(cfg: TrainConfig, act_bytes: int) -> float:
    if cfg.litgpt and not cfg.model.layernorm_bias and cfg.method is not Method.full:
        # litgpt's RMSNorm computes in the activation dtype (lit_gpt/rmsnorm.py:19-21): its input, e*h, not 4h
        return (4.0 - act_bytes) * cfg.model.hidden_size
    if not fused_norm_and_mlp(cfg):
        return 0.0
    return liger_kernels.liger_final_norm_saving_bytes_per_token(cfg.model, act_bytes=act_bytes,
                                                                 weight_trains=cfg.method is Method.full)


def bnb_kept_input_per_token(cfg: TrainConfig, act_bytes: int, train: LayerTraining) -> float:
    """Per token per trainable layer: the 4-bit linears' inputs an old bitsandbytes keeps (planner.bnb_versions),
    in every layer whether checkpointed or not (a ctx attribute escapes the checkpoint's saved-tensor hooks)."""
    if cfg.quant is not Quant.nf4 or not bnb_versions.keeps_quantized_input(cfg.bnb_version):
        return 0.0
    return kept_quantized_input_bytes_per_token(cfg.model, act_bytes=act_bytes, attn=cfg.attn, train=train,
                                                t=cfg.tp)


def gpu_activation_bytes(cfg: TrainConfig, per_layer_bytes: float, layers: int) -> float:
    """Saved activations on the GPU for one micro-batch: all layers', or the resident ones when offloaded."""
    if cfg.activation_offload:
        return offload_activations.gpu_resident_activation_bytes(per_layer_bytes, layers)
    return per_layer_bytes * layers


def host_activation_bytes(cfg: TrainConfig, per_layer_bytes: float, layers: int) -> float:
    """Pinned host bytes per rank for offloaded activations of one micro-batch (0 without offload)."""
    if not cfg.activation_offload:
        return 0.0
    return offload_activations.host_activation_bytes(per_layer_bytes, layers)


def fsdp_backward_only_items(cfg: TrainConfig) -> tuple[str, ...]:
    """Sharded FSDP frees every unit's unsharded parameters and gradients by the end of backward, so at the
    optimizer step only the sharded states exist. FSDP2: each group reshards in post_backward and the root's final
    callback reshards whatever is left (torch/distributed/fsdp/_fully_shard/_fsdp_state.py,
    _root_post_backward_final_callback). FSDP1: each handle's post-backward hook reshards when
    `_should_free_in_backward` (every sharded strategy when gradients sync) and `_catch_all_reshard` catches the
    rest, the root's included (torch/distributed/fsdp/_runtime_utils.py)."""
    if cfg.engine is not Engine.fsdp or cfg.fsdp is FsdpStrategy.no_shard:
        return ()
    return ("FSDP unsharded parameters", "FSDP unsharded layers", "FSDP unsharded gradients",
            "FSDP2 head reduce-scatter")  # planner.engines.fsdp.HEAD_REDUCE_SCATTER


def replicated_quant_state_bytes(cfg: TrainConfig, quantized_params: float, n: int) -> float:
    """QLoRA under FSDP / ZeRO-3 with `bnb_4bit_quant_storage` set to the compute dtype: the packed
    4-bit codes are an ordinary float tensor that FSDP and ZeRO-3 shard, while the quantization
    statistics (absmax per 64-weight block and, with double quantization, their constants) live in
    the parameter's `quant_state` attribute (bitsandbytes/nn/modules.py, Params4bit), which every rank
    keeps whole. Returns what the per-rank `weights / n` misses: the statistics' (1 - 1/n) share."""
    if cfg.quant is not Quant.nf4 or quantized_params <= 0 or n <= 1:
        return 0.0
    return quantized_params * nf4_state_bytes_per_param(cfg) * (1.0 - 1.0 / n)


def nf4_state_bytes_per_param(cfg: TrainConfig) -> float:
    """NF4's quantization statistics per quantized weight: its bytes per weight less the packed 4-bit code."""
    return quant_bytes_per_param(cfg.quant, cfg.double_quant) - NF4_DATA_BYTES


def offload_kept_quant_state_bytes(cfg: TrainConfig, quantized_params: float) -> float:
    """QLoRA under FSDP's CPU offload: the quantization statistics stay on the GPU, whole on every rank. FSDP moves
    the FlatParameter's storage to the host (torch/distributed/fsdp/_flat_param.py: the local shard is a view of the
    flattened `.data`), while the statistics are no tensor FSDP flattens: Params4bit.to moves its `quant_state` to the
    device with the weight when the model is moved there, the Linear4bit module keeps a reference (`module.quant_state`)
    and reattaches it to the flattened view it gets back (bitsandbytes/nn/modules.py 0.50.2,
    `fix_4bit_weight_quant_state_from_module`: "the quant state got lost when the parameter got converted. This
    happens for example for fsdp"), and dequantizes with it on the device. The packed 4-bit codes go to the host with
    the shard."""
    if cfg.engine is not Engine.fsdp or cfg.quant is not Quant.nf4 or quantized_params <= 0:
        return 0.0
    return quantized_params * nf4_state_bytes_per_param(cfg)


def fsdp_quantized_units_bytes(cfg: TrainConfig, compute_bytes: float) -> float:
    """FSDP's gathered units for QLoRA: the running and the prefetched decoder layer (packed 4-bit codes
    plus their 16-bit norms, biases and adapters) and the root unit (embedding, final norm, and the LM head or a
    reward model's score: planner.states.output_params) in 16 bits."""
    m, t = cfg.model, cfg.tp
    quantized_per_layer = quantizable_params(m) / m.num_layers
    layer = quantized_per_layer * NF4_DATA_BYTES + (layer_params(m) - quantized_per_layer) * compute_bytes
    root = (embedding_params(m) + output_params(m, cfg.stage)) * compute_bytes
    return (2 * layer + root) / t


def layer_training(cfg: TrainConfig) -> LayerTraining:
    """What of each decoder layer trains, as planner.activations counts it.

    TRL's RewardTrainer and DPOTrainer set every dropout to p=0 (disable_dropout=True by default,
    trl/trainer/utils.py disable_dropout_in_model), LoRA's included: no dropout copy is saved. peft keeps the
    adapters in fp32 on a 16-bit model (get_peft_model autocast_adapter_dtype=True; ftplan's runner and dry run
    keep them 16-bit under bf16-true) and casts each adapted linear's input to fp32 (lora/layer.py Linear.forward);
    under mixed-precision autocast every branch then saves its own 16-bit copy. Its bitsandbytes layers cast only
    without autocast (lora/bnb.py), so QLoRA branches read the shared input, unless prepare_model_for_kbit_training
    made the stream fp32 (planner.states.kbit_prepared): autocast then casts each branch's fp32 input to 16 bits
    on its own, and the stream and the 4-bit linears' outputs are 4 bytes per element."""
    targets = _lora_targets(cfg.model, cfg.lora_targets) if cfg.trains_adapter else frozenset()
    dropout = cfg.lora_dropout > 0 and cfg.stage not in (Stage.rm, Stage.dpo)
    prepared = kbit_prepared(cfg)
    copies = bool(targets) and is_mixed(cfg.precision) and (
        (fp32_adapters(cfg.precision) and cfg.quant is Quant.none) or prepared)
    return LayerTraining(weights=cfg.method is Method.full, lora_targets=targets, lora_dropout=dropout,
                         lora_input_copies=copies, stream_bytes=4 if prepared else 0, mixed=is_mixed(cfg.precision),
                         lora_r=cfg.lora_r,
                         packed_mask=packed_mask(cfg.attn, cfg.seq_len, cfg.doc_len, collator=cfg.collator_mask),
                         shared_mask=cfg.collator_mask and cfg.doc_len is not None,
                         one_row=cfg.micro_batch * rows_per_sample(cfg) == 1)


@cache  # the search asks per candidate; models and target tuples are hashable
def _lora_targets(m: ModelSpec, targets: tuple[str, ...]) -> frozenset[str]:
    return frozenset(resolve_lora_targets(m, targets))


def offloaded_activation_bytes_per_micro_batch(cfg: TrainConfig) -> float:
    """Bytes one rank copies to the host (and back) per micro-batch with --activation-offload: every trainable
    layer's saved tensors on the most loaded pipeline stage (the first), as planner.memory counts them."""
    if not cfg.activation_offload:
        return 0.0
    from planner.states import activation_dtype_bytes, stage_params

    e = activation_dtype_bytes(cfg.precision)
    train = layer_training(cfg)
    per_token = hf_layer_bytes_per_token(cfg.model, act_bytes=e, attn=cfg.attn, train=train, seq_len=cfg.seq_len,
                                         t=cfg.tp, sequence_parallel=cfg.sequence_parallel,
                                         recompute=cfg.grad_ckpt) - kernel_saving_per_token(cfg, e) \
        + litgpt_layer_delta_per_token(cfg, e, train)
    tokens = cfg.micro_batch * cfg.seq_len * (2 if cfg.stage.value == "dpo" else 1)
    return per_token * tokens * stage_params(cfg, first=True).trainable_layers


def activation_offload_exposed_s(cfg: TrainConfig, fwd_s: float, bwd_s: float) -> float:
    """Exposed PCIe seconds per micro-batch: device-to-host under forward, host-to-device under backward."""
    moved = offloaded_activation_bytes_per_micro_batch(cfg)
    if moved <= 0:
        return 0.0
    one_way = offload_activations.offload_transfer_s(moved, cfg.cluster.gpu.host_link_bytes_per_s)
    return (offload_activations.exposed_offload_s(one_way, fwd_s)
            + offload_activations.exposed_offload_s(one_way, bwd_s))
