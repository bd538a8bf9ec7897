"""Dry run: two training steps of the real transformers model at full size on fake tensors.

The model is built on the meta device (no bytes), peft LoRA is applied there, and the parameters are
then materialized with `to_empty(device="cpu")` inside FakeTensorMode, so every tensor has a shape,
a dtype and a storage identity but no data. (Applying peft to a model already under FakeTensorMode
fails with "Couldn't swap Linear.weight", hence meta first.) Two optimizer steps run with the plan's
precision, checkpointing and attention implementation: the optimizer state exists from the second
step, whose forward, backward and optimizer step give the peak reported (the first step only creates
the state, see `dry_run`). `profiler.tracker.StorageTracker`
counts bytes by storage and splits the peak into categories.

GPU emulation on the CPU: the run uses device "cpu" (fake tensors need no GPU), CPU autocast with the
plan's 16-bit dtype, and for a GPU plan AdamW with `foreach=True` given explicitly, because torch picks the
multi-tensor implementation by default only for CUDA-like tensors (torch/optim/optimizer.py,
_default_to_fused_or_foreach) and the fake tensors live on "cpu": the planner models that GPU default (its "AdamW
foreach temporaries"). A plan for the CPU itself gets torch's default there, the single-tensor loop, as its run
would (planner/torch_adamw.py; "AdamW single-tensor temporaries").
Dropout on the CPU draws a noise tensor of the input's dtype and saves it (aten/src/ATen/native/
Dropout.cpp, `_dropout_impl`; the fused `native_dropout` with a 1-byte bool mask is used only when
`is_fused_kernel_acceptable`, i.e. for CUDA inputs), so the dry run swaps every `nn.Dropout` with
p > 0 (peft's LoRA dropout) for `torch.native_dropout`, which has the CUDA kernel's saved mask.
transformers cannot read the values of fake position ids, so it would treat every batch as packed
sequences and materialize a 4D mask per layer (masking_utils.find_packed_sequence_indices returns the
mask when `is_tracing`); real unpacked batches skip the mask and call SDPA with is_causal=True, which
the dry run reproduces by reporting "not packed".
SDPA on the CPU runs the flash kernel for CPU (aten::_scaled_dot_product_flash_attention_for_cpu),
which saves the same output and fp32 log-sum-exp as the CUDA flash/efficient kernels.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any
from unittest import mock

from planner.configs.ds_config import DEFAULT_HYPER
from planner.errors import PlanError
from planner.gpus import is_cpu
from planner.loss_memory import TORCHTUNE_OUTPUT_CHUNKS
from planner.model_catalog import HF_CONFIGS
from planner.models import ModelSpec
from planner.params import resolve_lora_targets
from planner.states import fp32_adapters
from planner.strategy import (
    Attn,
    CrossEntropy,
    Engine,
    GradCkpt,
    Kernels,
    Method,
    Optimizer,
    Precision,
    Quant,
    TrainConfig,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class DryRunResult:
    peak_bytes: dict[str, int]  # total and one key per category, at the highest peak of step 2
    peak_phase: str  # forward / backward / optimizer
    step_peaks_bytes: tuple[int, ...]  # the peak of each step
    params_total: int
    params_trainable: int
    wall_s: float


def hf_config_dict(m: ModelSpec) -> dict[str, Any]:
    """The config.json a catalog name or a user's file stands for."""
    if m.source.startswith("catalog:"):
        return dict(HF_CONFIGS[m.source.removeprefix("catalog:")])
    from planner.input_files import read_json_file

    # a plan.json names this file: a regular file of bounded size, strict JSON (planner/input_files.py)
    return read_json_file(m.source, what=f"model '{m.name}': config")


def check_supported(cfg: TrainConfig) -> None:
    """The dry run emulates one process; sharding and quantization need other tools."""
    if cfg.world_size != 1 or cfg.engine is not Engine.ddp:
        raise PlanError(f"the dry run emulates one process with plain torch (--gpus 1x..., no --zero/--fsdp); "
                        f"got {cfg.strategy_name()} on {cfg.world_size} GPUs: use `ftplan profile run` for those")
    if cfg.quant is not Quant.none:
        raise PlanError("the dry run cannot fake bitsandbytes quantized weights; use --method lora or full")
    if cfg.grad_ckpt is GradCkpt.selective:
        raise PlanError("transformers checkpoints whole decoder layers only; --grad-ckpt selective "
                        "cannot be dry-run (use full or none)")
    if cfg.optimizer not in (Optimizer.adamw, Optimizer.sgd):
        raise PlanError(f"the dry run supports the torch optimizers adamw and sgd, not {cfg.optimizer.value}")
    if cfg.stage.value != "sft":
        raise PlanError(f"the dry run runs the sft stage only, not {cfg.stage.value}")
    if cfg.cross_entropy is CrossEntropy.fused or cfg.kernels is Kernels.liger:
        raise PlanError("Liger's Triton kernels need a CUDA GPU; the dry run follows --cross-entropy "
                        "standard or chunked and --kernels eager")
    if cfg.activation_offload:
        raise PlanError("the dry run has no host memory to offload activations to; drop --activation-offload")
    if cfg.torch_compile:
        raise PlanError("the dry run's fake tensors run eager PyTorch; drop --compile (what compiled layers save is "
                        "measured by benchmarks/compile_saved.py)")


def weights_dtype(method: Method, precision: Precision) -> Any:
    """Frozen weights load in 16 bits under mixed precision (peft / LLaMA-Factory); full fine-tuning keeps fp32
    master weights; bf16-true is bf16 throughout; 32-true fp32 throughout."""
    import torch

    sixteen = torch.float16 if precision is Precision.fp16_mixed else torch.bfloat16
    if precision is Precision.fp32 or (method is Method.full and precision is not Precision.bf16_true):
        return torch.float32
    return sixteen


def _attn_impl(attn: Attn) -> str:
    # flash_attention_2 needs CUDA; on fake CPU tensors its memory is that of SDPA's flash kernel
    return "eager" if attn is Attn.eager else "sdpa"


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text.split(". ")[0] if ". " in text else text)[:200]


def build_model(cfg: TrainConfig) -> Any:
    """The transformers model (and peft wrapper) on the meta device, in the plan's dtypes."""
    import torch
    from transformers import AutoModelForCausalLM

    from profiler.spec_structure import load_config

    raw = hf_config_dict(cfg.model)
    model_type = raw.get("model_type")
    try:
        loaded = load_config(raw, name=cfg.model.name)
    except PlanError as exc:
        raise PlanError(f"the dry run cannot build model {cfg.model.name} (model_type {model_type!r}): {exc}; "
                        "transformers has no built-in class for it and the dry run never runs remote code") from None
    hf_cfg = loaded.config
    impl = _attn_impl(cfg.attn)
    if impl not in cfg.model.attn_kernels:
        raise PlanError(f"{cfg.model.name} has no {cfg.attn.value} attention in transformers (its class takes "
                        f"{', '.join(cfg.model.attn_kernels)}); the dry run stands SDPA in for flash: use --attn eager")
    hf_cfg._attn_implementation = impl
    hf_cfg.use_cache = False
    dtype = weights_dtype(cfg.method, cfg.precision)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    except Exception as exc:  # transformers raises many types for configs it cannot build
        raise PlanError(f"the dry run cannot build model {cfg.model.name} (model_type {model_type!r}): "
                        f"{_first_sentence(exc)}") from None
    if cfg.method is Method.lora:
        from peft import LoraConfig, get_peft_model

        # "all": peft's own all-linear selection, as the runner passes it (runner/model.py lora_target_modules)
        targets: Any = "all-linear" if cfg.lora_targets == ("all",) else \
            list(resolve_lora_targets(cfg.model, cfg.lora_targets))
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg, autocast_adapter_dtype=fp32_adapters(cfg.precision))
        if cfg.precision is Precision.bf16_true:
            model.to(torch.bfloat16)
    elif cfg.freeze_layers:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.model.embed_tokens.requires_grad_(False)
        for layer in base.model.layers[: cfg.freeze_layers]:
            layer.requires_grad_(False)
    if cfg.grad_ckpt is GradCkpt.full:
        # non-reentrant checkpointing, as transformers' Trainer uses by default since 4.35
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    emulate_cuda_dropout(model)
    model.train()
    return model


def retie_embeddings(model: Any) -> None:
    """Tie the input embedding and the LM head again after `to_empty`.

    `Module.to_empty` gives every module's parameters new storage one module at a time, so a Parameter
    shared by two modules (tie_word_embeddings: Llama 3.2, Qwen2.5 0.5-3B, Gemma) comes out as two
    tensors: the dry run would hold, train and step both. transformers' `tie_weights` shares them again
    (PreTrainedModel.tie_weights; it does nothing when the config does not tie)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.tie_weights()


def _native_dropout_module(p: float) -> Any:
    import torch

    class NativeDropout(torch.nn.Module):
        """nn.Dropout as CUDA runs it: `native_dropout`, saving a bool mask (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            self.p = p

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.native_dropout(x, self.p, self.training)[0]

    return NativeDropout()


def emulate_cuda_dropout(model: Any) -> None:
    import torch

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Dropout) and child.p > 0:
                setattr(module, child_name, _native_dropout_module(child.p))


def chunked_cross_entropy_loss(model: Any, tokens: Any, labels: Any, num_chunks: int = TORCHTUNE_OUTPUT_CHUNKS) -> Any:
    """torchtune's chunked loss on a transformers model, step by step as torchtune runs it.

    torchtune's TransformerDecoder splits the final hidden states into `num_output_chunks` pieces along
    the sequence *before* the output projection (`[self.output(chunk) for chunk in h.tensor_split(n,
    dim=1)]`), and CEWithChunkedOutputLoss upcasts and scores one chunk at a time
    (`F.cross_entropy(logits_chunk.float(), labels_chunk, reduction="sum")`), dividing the sum by the
    count of labelled tokens (torchtune/modules/loss/ce_chunked_output_loss.py, PR 1390). Labels are
    the next tokens, as transformers' ForCausalLMLoss shifts them (pad with -100, drop the first).
    """
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=tokens).last_hidden_state
    head = base.get_output_embeddings()
    chunks = [head(h) for h in hidden.tensor_split(num_chunks, dim=1)]
    del hidden
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    total = 0.0
    for logits, target in zip(chunks, shifted.tensor_split(num_chunks, dim=1), strict=True):
        total = total + F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                                        ignore_index=-100, reduction="sum")
    del chunks  # the recipe drops the model's output before backward, as the Trainer does
    return total / (shifted != -100).sum()


def training_loss(cfg: TrainConfig, model: Any, tokens: Any, labels: Any) -> Any:
    """The loss of one micro-batch along the plan's cross-entropy path."""
    if cfg.cross_entropy is CrossEntropy.chunked:
        return chunked_cross_entropy_loss(model, tokens, labels)
    return model(input_ids=tokens, labels=labels).loss


def fake_tensor_patches() -> contextlib.ExitStack:
    """What running transformers on fake tensors needs:
    - "not packed": transformers cannot read the values of fake position ids and would treat every batch as packed
      sequences (see the module docstring); real unpacked batches call SDPA with is_causal=True.
    - MoE experts in fp32: transformers' grouped_mm path calls torch's grouped_mm, whose CPU kernel takes fp32 and
      bf16 but whose meta kernel (the one fake tensors run) mirrors CUDA's bf16-only check
      (torch/_meta_registrations.py `_meta_grouped_mm_common`); for other dtypes the experts take transformers'
      registered fallback op (transformers/integrations/moe.py `grouped_mm_fallback`), which saves the same input
      and weight for backward."""
    import torch
    import transformers.integrations.moe as moe
    import transformers.masking_utils as masking_utils

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(masking_utils, "find_packed_sequence_indices", lambda position_ids: None))
    can_use = moe._can_use_grouped_mm
    stack.enter_context(mock.patch.object(
        moe, "_can_use_grouped_mm",
        lambda input, weight, offs: weight.dtype == torch.bfloat16 and can_use(input, weight, offs)))
    return stack


def _make_optimizer(cfg: TrainConfig, params: list[dict[str, Any]]) -> Any:
    import torch

    # foreach=True: the GPU default; None on a CPU plan: torch's CPU default (see the module docstring)
    foreach = None if is_cpu(cfg.cluster.gpu) else True
    if cfg.optimizer is Optimizer.sgd:
        return torch.optim.SGD(params, lr=1e-4, momentum=DEFAULT_HYPER.sgd_momentum, foreach=foreach)
    if cfg.fused_adamw:  # torch's fused kernel (it has fake-tensor kernels): no foreach temporaries
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    return torch.optim.AdamW(params, lr=1e-4, foreach=foreach)


def dry_run(cfg: TrainConfig, *, steps: int = 2, full_first_step: bool = False) -> DryRunResult:
    """Peak bytes by category of the last of `steps` training steps of `cfg` on fake tensors.

    Unless `full_first_step`, the steps before the last skip forward and backward and step the
    optimizer on empty gradients: that creates its state exactly as a full step would (the state
    depends on the parameters' shapes and dtypes only), at a fraction of the time, and only the
    last step's peak is reported."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from profiler.param_groups import trainer_param_groups
    from profiler.tracker import StorageTracker

    check_supported(cfg)
    t0 = time.perf_counter()
    model = build_model(cfg)
    tracker = StorageTracker()
    sixteen = torch.float16 if cfg.precision is Precision.fp16_mixed else torch.bfloat16
    autocast = (torch.autocast("cpu", dtype=sixteen) if cfg.precision in (Precision.bf16_mixed, Precision.fp16_mixed)
                else contextlib.nullcontext())
    step_peaks: list[int] = []
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake, tracker, fake_tensor_patches():
        model.to_empty(device="cpu")
        # rotary inv_freq is a non-persistent buffer computed at init: to_empty leaves it uninitialized,
        # which fake tensors do not mind (no values are read)
        retie_embeddings(model)
        params = list(model.parameters())
        trainable = [p for p in params if p.requires_grad]
        tracker.weight_serials = {s for p in params if (s := tracker.serial_of(p)) is not None}
        # the Trainer's two groups, as the runner and the profiler worker step them (profiler.worker)
        opt = _make_optimizer(cfg, trainer_param_groups(model))
        def enter_head(*_: Any) -> None:
            tracker.in_head = True

        # the planner's "logits and loss": the final norm, the LM head and the loss
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.model.norm.register_forward_pre_hook(enter_head)
        tokens = torch.zeros(cfg.micro_batch, cfg.seq_len, dtype=torch.long)
        labels = torch.zeros(cfg.micro_batch, cfg.seq_len, dtype=torch.long)
        gradients: set[int] = set()
        optimizer: set[int] = set()
        snapshots = []
        for step in range(steps):
            tracker.reset_peak()
            if step == 0 and steps > 1 and not full_first_step:
                # the first step only has to leave the optimizer's state behind: gradients of the right
                # shapes and dtypes give the same state as a forward and backward would, in no time
                for p in trainable:
                    p.grad = torch.empty_like(p)
            for _ in range(cfg.grad_accum if step > 0 or steps == 1 or full_first_step else 0):
                tracker.label = "forward"
                with tracker.saved_tensors(), autocast:
                    loss = training_loss(cfg, model, tokens, labels)
                tracker.in_head = False
                tracker.label = "backward"
                loss.backward()
                del loss
                gradients |= {s for p in trainable if p.grad is not None and (s := tracker.serial_of(p.grad))}
            tracker.label = "optimizer"
            opt.step()
            optimizer |= {s for st in opt.state.values() for v in st.values()
                          if isinstance(v, torch.Tensor) and (s := tracker.serial_of(v)) is not None}
            opt.zero_grad(set_to_none=True)

            snap = tracker.finish()
            snapshots.append(snap)
            step_peaks.append(snap.total_bytes)
        last = snapshots[-1]
        peak = tracker.categorize(last, weights=tracker.weight_serials, gradients=gradients, optimizer=optimizer)
        n_total = sum(p.numel() for p in params)
        n_train = sum(p.numel() for p in trainable)
    return DryRunResult(peak_bytes=peak, peak_phase=last.label, step_peaks_bytes=tuple(step_peaks),
                        params_total=n_total, params_trainable=n_train, wall_s=time.perf_counter() - t0)
