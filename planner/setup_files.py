"""A user's own training setup, read into the options object (`--from FILE`): which option each key of a
LLaMA-Factory YAML, an axolotl YAML, a transformers TrainingArguments JSON (or a training script's arguments
JSON), a DeepSpeed ds_config.json or an accelerate config YAML sets. Pure functions over the parsed dicts;
ftplan/from_file.py reads the files (YAML is parsed there: the planner imports no YAML library).

Each reader returns what the file sets (`values`), what the tool assumes where the file is silent
(`defaults`: a setup means what its tool would run, so LLaMA-Factory's LoRA dropout is 0 and its
checkpointing on, the Trainer's micro-batch 8), the configs it points to (`deepspeed: ds_z3.json`) and
values that need the model (`pending`). Keys that change nothing the planner models (datasets, learning
rate, logging, ...) are ignored; keys whose effect the planner does not model (DoRA, GaLore, trained
embeddings, ...) or that contradict each other are refused with one line naming file and key.

Packing (`packing_of`): a setup that packs documents with attention kept within each (LLaMA-Factory's neat_packing,
TRL's padding_free or bfd packing, axolotl's sample_packing under flash / sdp / xformers attention) gives no mean
document length, and the plan needs one (--doc-len): ftplan asks for it in one line rather than guess it; a setup that
packs across documents (LLaMA-Factory's packing without neat_packing, its pre-training, TRL's wrapped packing,
axolotl's sample_packing under eager attention) refuses --doc-len.

Sources: LLaMA-Factory 0.9.5 src/llamafactory/hparams/{model,data,finetuning}_args.py and model/adapter.py;
axolotl's config reference (docs/config-reference) and src/axolotl/utils/config/__init__.py (resolve_dtype);
transformers 5.25 TrainingArguments (training_args.py, OptimizerNames, FSDPOption); DeepSpeed's config-json
reference (zero_optimization, offload_optimizer / offload_param, bf16 / fp16, optimizer); accelerate's
config file (distributed_type, mixed_precision, fsdp_config, deepspeed_config).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from planner.choices import (
    Attn,
    CrossEntropy,
    FsdpStrategy,
    GradCkpt,
    Kernels,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
    Stage,
)
from planner.errors import PlanError

KINDS = {"llamafactory": "LLaMA-Factory YAML", "axolotl": "axolotl YAML", "trainer": "TrainingArguments JSON",
         "deepspeed": "DeepSpeed config", "accelerate": "accelerate config"}


@dataclass(frozen=True)
class Reading:
    """What one file says, by flat option name (planner.options)."""

    source: str
    kind: str
    values: dict[str, Any] = field(default_factory=dict)  # set by the file
    defaults: dict[str, Any] = field(default_factory=dict)  # the tool's defaults where the file is silent
    references: tuple[tuple[str, Any], ...] = ()  # ("deepspeed", "ds_z3.json" or an inline dict)
    pending: dict[str, Any] = field(default_factory=dict)  # needs the model: trainable_layers, rope_type
    model_problem: str | None = None  # the file's model is neither in the catalog nor a local folder


class _Keys:
    """A file's dict with the checks every reader needs; `None` values count as absent (YAML's `key:`)."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = {k: v for k, v in data.items() if v is not None}
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def refuse(self, key: str, why: str) -> PlanError:
        return PlanError(f"{self.source}: {key}: {why}")

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if value in (True, False, 0, 1):
            return bool(value)
        raise self.refuse(key, f"expected true or false, got {value!r}")

    def positive_int(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None or value == "auto":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
            raise self.refuse(key, f"expected a positive integer, got {value!r}")
        return int(value)

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.refuse(key, f"expected a number, got {value!r}")
        return float(value)

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.refuse(key, f"expected a name, got {value!r}")
        return str(value)

    def refuse_any(self, keys: dict[str, str]) -> None:
        """Refuse the first key that is turned on (true, or a non-empty list or text) with its reason."""
        for key, why in keys.items():
            value = self.data.get(key)
            if value not in (None, False, "", [], {}, 0, "false", "none"):
                raise self.refuse(key, why)


# --- packed documents -------------------------------------------------------------------------------------

# Reading.pending keys for packing: the setting that packs, as the file spells it
DOCUMENTS = "documents"  # documents packed with attention kept within each: the plan needs --doc-len
ACROSS = "packed_across"  # documents packed into one causal sequence: --doc-len does not apply
FLATTENED = "flattened"  # the micro-batch flattened into one row (TRL padding_free): one mask over the whole row


def packing_problem(pending: dict[str, Any], source: str, *, doc_len_given: bool, attn: Attn, micro_batch: int,
                    seq_len: int) -> str | None:
    """The one line a setup's packing needs said, if any: per-document packing without --doc-len (the files carry no
    mean document length, and ftplan does not invent one), --doc-len where the setup packs across documents, and
    TRL's padding-free row of micro_batch x seq_len tokens under an attention that sees it as one sequence."""
    if DOCUMENTS in pending and not doc_len_given:
        return (f"{source}: {pending[DOCUMENTS]} packs documents with attention kept within each, and the file "
                f"gives no mean document length: add --doc-len TOKENS (their mean tokens)")
    if ACROSS in pending and doc_len_given:
        return f"{source}: {pending[ACROSS]}: --doc-len does not apply"
    if FLATTENED in pending and attn is not Attn.flash and micro_batch > 1:
        return (f"{source}: {pending[FLATTENED]} flattens each micro-batch of {micro_batch} into one row of "
                f"{micro_batch} x {seq_len} tokens, which {attn.value} attention masks as one sequence (only "
                f"FlashAttention-2's varlen kernel reads the documents' boundaries): plan --micro-batch 1 --seq-len "
                f"{micro_batch * seq_len}, or use attn_implementation: flash_attention_2")
    return None


def _lf_packing(keys: _Keys, values: dict[str, Any], pending: dict[str, Any]) -> None:
    """neat_packing: SFT samples packed into cutoff_len with attention kept within each (hparams/data_args.py
    "sequence packing without cross-attention", which turns packing on; SFT only, hparams/parser.py), under a 4-D
    mask its collator builds for every attention but FlashAttention-2 (collator_mask: data/collator.py
    SFTDataCollatorWith4DAttentionMask, block_diag_attn = neat_packing); packing alone, and pre-training's default
    packing (parser.py: `packing = stage == "pt"` when unset), concatenate documents under one causal mask."""
    stage = values.get("stage", Stage.sft)
    neat = keys.flag("neat_packing") if "neat_packing" in keys else False
    if neat:
        if stage is not Stage.sft:
            raise keys.refuse("neat_packing", f"LLaMA-Factory packs without cross-attention for sft only, not "
                                              f"{stage.value}")
        pending[DOCUMENTS] = "neat_packing: true"
        values["collator_mask"] = True
        return
    packing = keys.flag("packing") if "packing" in keys else stage is Stage.pt
    if packing:
        pending[ACROSS] = ("packing: true without neat_packing lets each pack's documents attend to each other"
                           if "packing" in keys else
                           "stage: pt packs documents into one causal sequence (LLaMA-Factory's pre-training packing)")


# TRL 1.16 SFTConfig.packing_strategy (and its deprecated alias, sft_config.py __post_init__)
_TRL_STRATEGIES = {"bfd": "bfd", "bfd_split": "bfd_split", "bfd-requeue": "bfd_split", "wrapped": "wrapped"}


def _trl_packing(keys: _Keys, pending: dict[str, Any]) -> None:
    """TRL's SFTConfig: padding_free flattens each micro-batch into one row whose position_ids restart per example,
    and bfd packing turns it on (sft_trainer.py: `padding_free or (packing and packing_strategy in {"bfd",
    "bfd_split"})`); FlashAttention-2 then runs each document on its own (cu_seq_lens), and transformers builds the
    documents' mask for SDPA and eager from the position_ids. "wrapped" packing cuts the stream of documents into
    rows with no boundaries kept: one causal sequence per row."""
    free = keys.flag("padding_free") if "padding_free" in keys else False
    packing = keys.flag("packing") if "packing" in keys else False
    strategy = keys.text("packing_strategy") or "bfd"
    if strategy not in _TRL_STRATEGIES:
        raise keys.refuse("packing_strategy", f"'{strategy}' is not one of bfd, bfd_split, wrapped")
    strategy = _TRL_STRATEGIES[strategy]
    if packing and strategy == "wrapped":
        pending[ACROSS] = "packing_strategy: wrapped cuts the documents into rows with no boundaries kept"
        if free:
            pending[FLATTENED] = "padding_free: true"
        return
    if free or packing:
        setting = "padding_free: true" if free else f"packing: true (packing_strategy {strategy}, padding-free)"
        pending[DOCUMENTS] = pending[FLATTENED] = setting


def _axolotl_packing(keys: _Keys, values: dict[str, Any], pending: dict[str, Any]) -> None:
    """sample_packing: samples packed into sequence_len with per-sample position_ids, kept apart under flash, sdp or
    xformers attention; under any other axolotl warns "sample_packing without flash, sdp, xformers or flex attention
    does not handle cross sample decontamination" (utils/schemas/validation.py)."""
    if not (keys.flag("sample_packing") if "sample_packing" in keys else False):
        return
    if values.get("attn") in (Attn.flash, Attn.sdpa):
        pending[DOCUMENTS] = "sample_packing: true"
    else:
        pending[ACROSS] = ("sample_packing: true without flash, sdp or xformers attention lets the packed samples "
                           "attend to each other (axolotl's own warning)")


# --- shared vocabularies --------------------------------------------------------------------------------

# TrainingArguments.optim names (transformers/training_args.py OptimizerNames) and axolotl's `optimizer`
_OPTIMIZERS = {
    "adamw_torch": Optimizer.adamw, "adamw_torch_fused": Optimizer.adamw, "adamw_hf": Optimizer.adamw,
    "adamw_apex_fused": Optimizer.adamw, "adamw": Optimizer.adamw,
    "adamw_bnb_8bit": Optimizer.adamw_8bit, "adamw_8bit": Optimizer.adamw_8bit,
    "paged_adamw_32bit": Optimizer.paged_adamw, "paged_adamw": Optimizer.paged_adamw,
    "paged_adamw_8bit": Optimizer.paged_adamw_8bit, "sgd": Optimizer.sgd,
}


def optimizer_of(keys: _Keys, key: str) -> Optimizer | None:
    name = keys.text(key)
    if name is None:
        return None
    if name.lower() not in _OPTIMIZERS:
        raise keys.refuse(key, f"optimizer '{name}' is not modelled (ftplan plans {', '.join(sorted(_OPTIMIZERS))})")
    return _OPTIMIZERS[name.lower()]


# the lengths a training script's arguments call the sequence length (run_clm block_size, TRL max_length / the
# older max_seq_length, tokenizer model_max_length, LLaMA-Factory cutoff_len)
_SEQ_LEN_KEYS = ("cutoff_len", "max_seq_length", "max_length", "block_size", "model_max_length", "sequence_len")


# hub names that carry a version the catalog entry was read from (planner/model_catalog.py's sources)
_VERSIONED = {"mistral-7b-v0.1": "mistral-7b", "mistral-7b-instruct-v0.1": "mistral-7b",
              "mixtral-8x7b-v0.1": "mixtral-8x7b", "mixtral-8x7b-instruct-v0.1": "mixtral-8x7b"}


def _hub_name(name: str) -> str | None:
    """A catalog name for a Hugging Face hub id (meta-llama/Meta-Llama-3-8B-Instruct -> llama-3-8b): the
    instruct / chat variants share the base model's shapes."""
    from planner.models import model_names

    key = name.rsplit("/", 1)[-1].lower()
    key = _VERSIONED.get(key, key).removeprefix("meta-")
    # instruct / chat tunes and dtype re-uploads share the base model's shapes
    for suffix in ("-hf", "-fp16", "-bf16", "-instruct", "-chat", "-base"):
        key = key.removesuffix(suffix)
    return key if key in model_names() else None


def model_value(name: str, exists: Callable[[str], bool]) -> tuple[str | None, str | None]:
    """(option value, problem) for the model a file names: a local folder or file as it is, a hub id as its
    catalog name; otherwise a problem that matters only if --model does not say otherwise."""
    from planner.models import ALIASES, model_names

    if exists(name) or name.lower() in model_names() or name.lower() in ALIASES:
        return name, None
    catalog = _hub_name(name)
    if catalog is not None:
        return catalog, None
    return None, (f"the model '{name}' is neither a local folder nor a catalog model (ftplan models): "
                  "pass --model with a catalog name or its config.json")


def _precision(keys: _Keys, *, bf16: str = "bf16", fp16: str = "fp16") -> Precision | None:
    on16, on_bf = keys.flag(fp16) if fp16 in keys else False, keys.get(bf16) not in (None, False, "false")
    if on16 and on_bf:
        raise keys.refuse(f"{bf16} / {fp16}", "both are on: choose one 16-bit format")
    if on_bf:
        return Precision.bf16_mixed
    if on16:
        return Precision.fp16_mixed
    return None


def _reshard_strategy(keys: _Keys, reshard: Any) -> FsdpStrategy:
    """accelerate's `reshard_after_forward`: a bool for FSDP2 (True reshards: FULL_SHARD; False: SHARD_GRAD_OP), or
    for FSDP1 the sharding strategy's name in any case (accelerate/utils/dataclasses.py FullyShardedDataParallelPlugin,
    `reshard_after_forward`: "FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", as runner.run_common writes
    it)."""
    word = str(reshard).lower()
    if word in ("true", "false"):
        return FsdpStrategy.full_shard if word == "true" else FsdpStrategy.shard_grad_op
    try:
        return FsdpStrategy(word)
    except ValueError:
        raise keys.refuse("fsdp_config", f"reshard_after_forward '{reshard}' is not modelled (true, false, "
                                         "full_shard, shard_grad_op, hybrid_shard, no_shard)") from None


def _fsdp(keys: _Keys, out: dict[str, Any], default_version: int = 2) -> None:
    """TrainingArguments' `fsdp` (true, "full_shard auto_wrap", or a list) and `fsdp_config` (a dict; keys with
    or without accelerate's `fsdp_` prefix). The FSDP version defaults to 2 in transformers 5, to 1 in
    accelerate's config and in axolotl unless `fsdp_version` says 2."""
    raw = keys.get("fsdp")
    config = keys.get("fsdp_config") or {}
    if raw in (None, False, "", []) and not config:
        return
    if isinstance(config, str):
        raise keys.refuse("fsdp_config", "a path to an FSDP config file: give its settings inline or as --from")
    if not isinstance(config, dict):
        raise keys.refuse("fsdp_config", f"expected a mapping, got {config!r}")
    cfg = {k.removeprefix("fsdp_"): v for k, v in config.items()}
    words = raw.split() if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
    version = cfg.get("version", keys.get("fsdp_version", default_version))
    if version not in (1, 2):
        raise keys.refuse("fsdp_config", f"version must be 1 or 2, got {version!r}")
    strategy = FsdpStrategy.full_shard
    for word in (str(w).lower() for w in words):
        if word in ("full_shard", "shard_grad_op", "hybrid_shard", "no_shard"):
            strategy = FsdpStrategy(word)
        elif word == "offload":
            out["offload"] = Offload.all
        elif word not in ("auto_wrap", "true"):
            raise keys.refuse("fsdp", f"'{word}' is not modelled (full_shard, shard_grad_op, hybrid_shard, no_shard, "
                                      "offload, auto_wrap)")
    sharding = cfg.get("sharding_strategy")
    if sharding is not None:
        named = {"1": "full_shard", "2": "shard_grad_op", "3": "no_shard", "4": "hybrid_shard"}.get(str(sharding),
                                                                                                  str(sharding))
        try:
            strategy = FsdpStrategy(named.lower())
        except ValueError:
            raise keys.refuse("fsdp_config", f"sharding strategy '{sharding}' is not modelled") from None
    if cfg.get("reshard_after_forward") is not None:
        strategy = _reshard_strategy(keys, cfg["reshard_after_forward"])
    if cfg.get("offload_params") in (True, "true") or cfg.get("cpu_offload") in (True, "true"):
        out["offload"] = Offload.all
    if cfg.get("activation_checkpointing") in (True, "true"):
        out["grad_ckpt"] = GradCkpt.full
    out["fsdp"] = strategy
    out["fsdp_version"] = int(version)


def _trainer_common(keys: _Keys, out: dict[str, Any]) -> None:
    """The TrainingArguments keys every Trainer-based setup shares."""
    for key, name in (("per_device_train_batch_size", "micro_batch"), ("gradient_accumulation_steps", "grad_accum")):
        value = keys.positive_int(key)
        if value is not None:
            out[name] = value
    precision = _precision(keys)
    if precision is not None:
        out["precision"] = precision
    for key in ("activation_checkpointing", "gradient_checkpointing"):
        if key in keys:
            out["grad_ckpt"] = GradCkpt.full if keys.flag(key) else GradCkpt.none
    optimizer = optimizer_of(keys, "optim")
    if optimizer is not None:
        out["optimizer"] = optimizer
    if "torch_compile" in keys:
        out["torch_compile"] = keys.flag("torch_compile")
    if keys.get("use_liger_kernel") in (True, "true"):
        out["kernels"], out["cross_entropy"] = Kernels.liger, CrossEntropy.fused
    if keys.get("deepspeed") and keys.get("fsdp") not in (None, False, "", []):
        raise keys.refuse("deepspeed / fsdp", "both are set: DeepSpeed and FSDP are exclusive")
    _fsdp(keys, out)


def _references(keys: _Keys) -> tuple[tuple[str, Any], ...]:
    ds = keys.get("deepspeed")
    if ds in (None, False, ""):
        return ()
    if not isinstance(ds, str | dict):
        raise keys.refuse("deepspeed", f"expected a ds_config path or mapping, got {ds!r}")
    return (("deepspeed", ds),)


def _model(keys: _Keys, key: str, exists: Callable[[str], bool], out: dict[str, Any]) -> str | None:
    name = keys.text(key)
    if name is None:
        return None
    value, problem = model_value(name, exists)
    if value is not None:
        out["model"] = value
    return problem


def _seq_len(keys: _Keys, out: dict[str, Any]) -> None:
    for key in _SEQ_LEN_KEYS:
        value = keys.positive_int(key)
        if value is not None:
            out["seq_len"] = value
            return


# --- LLaMA-Factory ---------------------------------------------------------------------------------------

_LF_REFUSED = {
    "use_dora": "DoRA's magnitude vectors and extra activations are not modelled: plan the LoRA run without it",
    "use_galore": "GaLore's projected optimizer states are not modelled",
    "use_apollo": "APOLLO's optimizer states are not modelled",
    "use_badam": "BAdam's block-wise updates are not modelled",
    "use_adam_mini": "Adam-mini's optimizer states are not modelled",
    "use_muon": "the Muon optimizer is not modelled",
    "use_llama_pro": "LLaMA Pro's expanded blocks are not modelled",
    "use_unsloth": "Unsloth's kernels are not modelled (--kernels liger is the closest)",
    "use_unsloth_gc": "Unsloth's offloaded checkpointing is not modelled",
    "mixture_of_depths": "mixture-of-depths is not modelled",
    "shift_attn": "LongLoRA's shifted short attention is not modelled",
    "additional_target": "trained modules beside LoRA (embeddings, head) are not modelled",
    "freeze_extra_modules": "trained modules beside the frozen layers are not modelled",
    "use_mca": "Megatron-core training (USE_MCA) is not modelled",
}


def _lf_method(keys: _Keys, values: dict[str, Any], pending: dict[str, Any]) -> None:
    """finetuning_type and the quantized base (hparams/finetuning_args.py, model_args.py)."""
    kind = keys.text("finetuning_type") or "lora"
    bits = keys.positive_int("quantization_bit")
    if kind == "oft":
        raise keys.refuse("finetuning_type", "OFT adapters are not modelled")
    if kind not in ("lora", "freeze", "full"):
        raise keys.refuse("finetuning_type", f"'{kind}' is not one of lora, freeze, full")
    if bits is not None:
        if kind != "lora":
            raise keys.refuse("quantization_bit", "a quantized base trains LoRA adapters only (finetuning_type: lora)")
        if (keys.text("quantization_method") or "bnb") not in ("bnb", "bitsandbytes"):
            raise keys.refuse("quantization_method", "only bitsandbytes quantization (bnb) is modelled")
        if bits not in (4, 8):
            raise keys.refuse("quantization_bit", f"{bits}-bit bitsandbytes is not modelled (4 or 8)")
        values["method"], values["quant"] = Method.qlora, Quant.nf4 if bits == 4 else Quant.int8  # fp4: nf4's size
        if "double_quantization" in keys:
            values["double_quant"] = keys.flag("double_quantization")
    elif kind == "full":
        values["method"] = Method.full
    elif kind == "freeze":
        values["method"] = Method.full
        if (keys.text("freeze_trainable_modules") or "all") != "all":
            raise keys.refuse("freeze_trainable_modules", "training selected modules of the layers is not modelled")
        trainable = int(keys.get("freeze_trainable_layers", 2))
        if trainable < 0:
            raise keys.refuse("freeze_trainable_layers", "training the first layers is not modelled (ftplan freezes "
                                                         "the first layers: use a positive count)")
        pending["trainable_layers"] = trainable
    elif "finetuning_type" in keys:
        values["method"] = Method.lora


def _lf_lora(keys: _Keys, values: dict[str, Any]) -> None:
    rank = keys.positive_int("lora_rank")
    if rank is not None:
        values["lora_r"] = rank
    alpha = keys.positive_int("lora_alpha")
    if alpha is not None or rank is not None:
        values["lora_alpha"] = alpha if alpha is not None else 2 * rank  # alpha defaults to 2 x rank
    dropout = keys.number("lora_dropout")
    if dropout is not None:
        values["lora_dropout"] = dropout
    target = keys.text("lora_target")
    if target is not None:
        values["lora_targets"] = target


def _lf_model_args(keys: _Keys, values: dict[str, Any], pending: dict[str, Any]) -> None:
    """Attention, Liger's kernels and RoPE scaling (hparams/model_args.py)."""
    attn = keys.text("flash_attn")
    if attn is not None:
        # auto: LLaMA-Factory names none, and transformers picks (sdpa, or eager where the model has no sdpa path:
        # planner.validity.default_attn, which plans an attention left unset)
        table = {"auto": None, "disabled": Attn.eager, "sdpa": Attn.sdpa, "fa2": Attn.flash, "fa3": Attn.flash}
        if attn not in table:
            raise keys.refuse("flash_attn", f"'{attn}' is not one of {', '.join(table)}")
        if table[attn] is not None:
            values["attn"] = table[attn]
    if keys.flag("enable_liger_kernel") if "enable_liger_kernel" in keys else False:
        values["kernels"] = Kernels.liger
        # the fused linear cross-entropy only where logits are not needed (model/model_utils/liger_kernel.py)
        if values.get("stage", Stage.sft) in (Stage.pt, Stage.sft):
            values["cross_entropy"] = CrossEntropy.fused
    rope = keys.text("rope_scaling")
    if rope is not None:
        if rope not in ("linear", "dynamic", "yarn", "llama3"):
            raise keys.refuse("rope_scaling", f"'{rope}' is not one of linear, dynamic, yarn, llama3")
        pending["rope_type"] = rope


def llamafactory(data: dict[str, Any], source: str, exists: Callable[[str], bool]) -> Reading:
    keys = _Keys(data, source)
    keys.refuse_any(_LF_REFUSED)
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {
        # TrainingArguments' micro-batch; LLaMA-Factory's cutoff_len, LoRA shape, dropout 0 and checkpointing on
        "micro_batch": 8, "grad_accum": 1, "seq_len": 2048, "method": Method.lora, "stage": Stage.sft,
        "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_targets": "all", "precision": Precision.fp32,
        "grad_ckpt": GradCkpt.full, "optimizer": Optimizer.adamw,
        # LLaMA-Factory does not call peft's prepare_model_for_kbit_training (runner/llamafactory.py notes)
        "kbit_prep": False,
    }
    problem = _model(keys, "model_name_or_path", exists, values)
    _trainer_common(keys, values)
    # LLaMA-Factory checkpoints unless disable_gradient_checkpointing says no (model/model_utils/checkpointing.py);
    # the Trainer's own switch can only turn it on
    trainer_ckpt = values.pop("grad_ckpt", None)
    if "disable_gradient_checkpointing" in keys:
        off = keys.flag("disable_gradient_checkpointing") and trainer_ckpt is not GradCkpt.full
        values["grad_ckpt"] = GradCkpt.none if off else GradCkpt.full
    elif trainer_ckpt is GradCkpt.full:
        values["grad_ckpt"] = GradCkpt.full
    stage = keys.text("stage")
    if stage is not None:
        if stage not in ("pt", "sft", "rm", "ppo", "dpo"):
            raise keys.refuse("stage", f"'{stage}' is not planned (pt, sft, rm, ppo, dpo)")
        values["stage"] = Stage(stage)
    pending: dict[str, Any] = {}
    _lf_method(keys, values, pending)
    _lf_lora(keys, values)
    if keys.flag("pure_bf16") if "pure_bf16" in keys else False:
        values["precision"] = Precision.bf16_true  # no fp32 upcast of the trained weights (model/adapter.py)
    seq = keys.positive_int("cutoff_len")
    if seq is not None:
        values["seq_len"] = seq
    _lf_model_args(keys, values, pending)
    _lf_packing(keys, values, pending)
    return Reading(source, KINDS["llamafactory"], values, defaults, _references(keys), pending, problem)


# --- axolotl ---------------------------------------------------------------------------------------------

_AXOLOTL_REFUSED = {
    "peft_use_dora": "DoRA's magnitude vectors and extra activations are not modelled",
    "lora_modules_to_save": "trained embeddings or head beside LoRA are not modelled",
    "unfrozen_parameters": "training selected parameters is not modelled",
    "relora_steps": "ReLoRA's restarts are not modelled",
    "gptq": "GPTQ-quantized bases are not modelled (bitsandbytes only)",
    "float16": "pure fp16 training (no AMP) is not modelled",
    "s2_attention": "LongLoRA's shifted short attention is not modelled",
    "unsloth_lora_mlp": "Unsloth's LoRA kernels are not modelled",
    "unsloth_lora_qkv": "Unsloth's LoRA kernels are not modelled",
    "unsloth_lora_o": "Unsloth's LoRA kernels are not modelled",
}


def _peft_numbers(keys: _Keys, values: dict[str, Any]) -> None:
    """lora_r, lora_alpha and lora_dropout under peft's own names (axolotl, TRL's ModelConfig), where given."""
    for key in ("lora_r", "lora_alpha"):
        value = keys.positive_int(key)
        if value is not None:
            values[key] = value
    dropout = keys.number("lora_dropout")
    if dropout is not None:
        values["lora_dropout"] = dropout


def _axolotl_adapter(keys: _Keys, values: dict[str, Any]) -> None:
    """adapter, the bitsandbytes base and the LoRA shape."""
    adapter = keys.text("adapter")
    four, eight = (keys.flag(k) if k in keys else False for k in ("load_in_4bit", "load_in_8bit"))
    if four and eight:
        raise keys.refuse("load_in_4bit / load_in_8bit", "both are on")
    if adapter not in (None, "", "lora", "qlora"):
        raise keys.refuse("adapter", f"'{adapter}' adapters are not modelled (lora, qlora)")
    if adapter == "qlora":
        if eight:
            raise keys.refuse("adapter", "qlora loads the base in 4 bits: load_in_8bit contradicts it")
        values["method"], values["quant"] = Method.qlora, Quant.nf4
    elif adapter == "lora":
        values["method"] = Method.lora
        if four or eight:  # LoRA on a bitsandbytes-quantized base
            values["method"], values["quant"] = Method.qlora, Quant.nf4 if four else Quant.int8
    elif four or eight:
        raise keys.refuse("load_in_4bit" if four else "load_in_8bit", "a quantized base needs adapter: lora or qlora")
    if values.get("method") in (Method.lora, Method.qlora):
        _peft_numbers(keys, values)
        targets = keys.get("lora_target_modules")
        if keys.flag("lora_target_linear") if "lora_target_linear" in keys else False:
            values["lora_targets"] = "all"
        elif isinstance(targets, list) and targets:
            values["lora_targets"] = ",".join(str(t) for t in targets)
        elif isinstance(targets, str) and targets:
            values["lora_targets"] = targets
        else:  # peft's own default for Llama-style models (peft/utils/constants.py)
            values["lora_targets"] = "q_proj,v_proj"


def _axolotl_precision_and_checkpointing(keys: _Keys, values: dict[str, Any]) -> None:
    # bf16 (true or auto) and fp16 are the Trainer's AMP; the model is loaded in that dtype (resolve_dtype), so a
    # full fine-tune outside DeepSpeed keeps no fp32 master copy: bf16-true. `bfloat16: true` asks for that outright.
    if keys.get("bf16") == "auto":
        values["precision"] = Precision.bf16_mixed
    else:
        precision = _precision(keys)
        if precision is not None:
            values["precision"] = precision
    if keys.flag("bfloat16") if "bfloat16" in keys else False:
        values["precision"] = Precision.bf16_true
    if "gradient_checkpointing" in keys:
        ckpt = keys.get("gradient_checkpointing")
        values["grad_ckpt"] = GradCkpt.full if ckpt not in (False, "false") else GradCkpt.none
        if ckpt == "offload":
            values["activation_offload"] = True
    if keys.flag("activation_offloading") if "activation_offloading" in keys else False:
        values["activation_offload"], values["grad_ckpt"] = True, GradCkpt.full


def _axolotl_attention(keys: _Keys, values: dict[str, Any]) -> None:
    chosen = [name for name in ("flash_attention", "sdp_attention", "xformers_attention", "eager_attention",
                                "flex_attention") if keys.get(name) in (True, "true")]
    if keys.text("attention") is not None:  # newer axolotl: `attention: flash | sdpa | xformers | eager | flex`
        named = {"flash": "flash_attention", "sdpa": "sdp_attention", "xformers": "xformers_attention",
                 "eager": "eager_attention", "flex": "flex_attention"}
        if keys.text("attention") not in named:
            raise keys.refuse("attention", f"'{keys.text('attention')}' is not one of {', '.join(named)}")
        chosen.append(named[keys.text("attention")])
    if len(chosen) > 1:
        raise keys.refuse(" / ".join(chosen), "more than one attention implementation is on")
    if chosen:
        if chosen[0] == "flex_attention":
            raise keys.refuse("flex_attention", "flex attention is not modelled")
        # xformers' memory-efficient attention saves what SDPA's does (q, k, v, output, log-sum-exp)
        values["attn"] = {"flash_attention": Attn.flash, "sdp_attention": Attn.sdpa,
                          "xformers_attention": Attn.sdpa, "eager_attention": Attn.eager}[chosen[0]]


def _axolotl_kernels_stage_rope(keys: _Keys, values: dict[str, Any]) -> None:
    """Liger's kernels (its plugin's keys), cut cross-entropy, the preference stages and RoPE scaling."""
    if any(keys.get(k) in (True, "true") for k in ("liger_rms_norm", "liger_glu_activation", "liger_rope")):
        values["kernels"] = Kernels.liger
    if keys.get("liger_fused_linear_cross_entropy") in (True, "true") or keys.get("cut_cross_entropy") in (True,
                                                                                                           "true"):
        # Apple's cut cross-entropy never holds a logits chunk: Liger's fused loss bounds it from above
        values["cross_entropy"] = CrossEntropy.fused
    rl = keys.text("rl")
    if rl is not None:
        if rl != "dpo":
            raise keys.refuse("rl", f"'{rl}' is not planned (dpo; rm through reward_model: true)")
        values["stage"] = Stage.dpo
    if keys.flag("reward_model") if "reward_model" in keys else False:
        values["stage"] = Stage.rm
    rope = keys.get("rope_scaling")
    if isinstance(rope, dict) and rope:
        kind, factor = rope.get("type") or rope.get("rope_type"), rope.get("factor")
        if kind not in ("linear", "dynamic", "yarn", "llama3") or not isinstance(factor, int | float):
            raise keys.refuse("rope_scaling", f"expected type (linear, dynamic, yarn, llama3) and factor, got {rope}")
        values["rope_scaling"] = f"{kind}:{float(factor)}"


def axolotl(data: dict[str, Any], source: str, exists: Callable[[str], bool]) -> Reading:
    keys = _Keys(data, source)
    keys.refuse_any(_AXOLOTL_REFUSED)
    values: dict[str, Any] = {}
    # axolotl's defaults: sequence_len 512, no checkpointing, no LoRA dropout; no attention named, so transformers
    # picks (planner.validity.default_attn)
    defaults: dict[str, Any] = {"micro_batch": 1, "grad_accum": 1, "seq_len": 512, "method": Method.full,
                                "lora_dropout": 0.0, "precision": Precision.fp32, "grad_ckpt": GradCkpt.none,
                                "optimizer": Optimizer.adamw, "stage": Stage.sft}
    problem = _model(keys, "base_model", exists, values)
    for key, name in (("micro_batch_size", "micro_batch"), ("gradient_accumulation_steps", "grad_accum"),
                      ("sequence_len", "seq_len")):
        value = keys.positive_int(key)
        if value is not None:
            values[name] = value
    _axolotl_adapter(keys, values)
    _axolotl_precision_and_checkpointing(keys, values)
    _axolotl_attention(keys, values)
    optimizer = optimizer_of(keys, "optimizer")
    if optimizer is not None:
        values["optimizer"] = optimizer
    if "torch_compile" in keys:
        values["torch_compile"] = keys.get("torch_compile") not in (False, "false")
    _axolotl_kernels_stage_rope(keys, values)
    if keys.get("deepspeed") and keys.get("fsdp") not in (None, False, "", []):
        raise keys.refuse("deepspeed / fsdp", "both are set: DeepSpeed and FSDP are exclusive")
    _fsdp(keys, values, default_version=1)
    if values.get("method", Method.full) is Method.full and values.get("precision") is Precision.bf16_mixed \
            and "deepspeed" not in keys:
        values["precision"] = Precision.bf16_true
    pending: dict[str, Any] = {}
    _axolotl_packing(keys, values, pending)
    return Reading(source, KINDS["axolotl"], values, defaults, _references(keys), pending, problem)


# --- transformers TrainingArguments (and a training script's arguments) ----------------------------------

def trainer(data: dict[str, Any], source: str, exists: Callable[[str], bool]) -> Reading:
    keys = _Keys(data, source)
    values: dict[str, Any] = {}
    # TrainingArguments' defaults; a script that loads the model without torch_dtype trains in fp32
    defaults: dict[str, Any] = {"micro_batch": 8, "grad_accum": 1, "precision": Precision.fp32,
                                "grad_ckpt": GradCkpt.none, "optimizer": Optimizer.adamw, "method": Method.full}
    problem = _model(keys, "model_name_or_path", exists, values)
    _trainer_common(keys, values)
    _seq_len(keys, values)
    # TRL's ModelConfig / a peft script's arguments
    if keys.get("use_peft") in (True, "true") or "lora_r" in keys:
        values["method"] = Method.lora
        _peft_numbers(keys, values)
        targets = keys.get("lora_target_modules")
        if isinstance(targets, list) and targets:
            values["lora_targets"] = ",".join(str(t) for t in targets)
        elif isinstance(targets, str) and targets:
            values["lora_targets"] = "all" if targets == "all-linear" else targets
    four, eight = (keys.get(k) in (True, "true") for k in ("load_in_4bit", "load_in_8bit"))
    if four or eight:
        if values.get("method") is not Method.lora:
            raise keys.refuse("load_in_4bit" if four else "load_in_8bit", "a quantized base needs LoRA (use_peft)")
        values["method"], values["quant"] = Method.qlora, Quant.nf4 if four else Quant.int8
        if "use_bnb_nested_quant" in keys:
            values["double_quant"] = keys.flag("use_bnb_nested_quant")
    attn = keys.text("attn_implementation")
    if attn is not None:
        table = {"eager": Attn.eager, "sdpa": Attn.sdpa, "flash_attention_2": Attn.flash,
                 "flash_attention_3": Attn.flash}
        if attn not in table:
            raise keys.refuse("attn_implementation", f"'{attn}' is not one of {', '.join(table)}")
        values["attn"] = table[attn]
    dtype = keys.text("torch_dtype") or keys.text("dtype")
    if dtype == "bfloat16" and values.get("method", Method.full) is Method.full and "deepspeed" not in keys:
        values["precision"] = Precision.bf16_true  # weights loaded in bf16, trained without an fp32 copy
    pending: dict[str, Any] = {}
    _trl_packing(keys, pending)
    return Reading(source, KINDS["trainer"], values, defaults, _references(keys), pending, problem)


# --- DeepSpeed ds_config.json ----------------------------------------------------------------------------

_DS_OPTIMIZERS = {"adam": Optimizer.adamw, "adamw": Optimizer.adamw}


def deepspeed(data: dict[str, Any], source: str) -> Reading:
    keys = _Keys(data, source)
    values: dict[str, Any] = {}
    zero = data.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise keys.refuse("zero_optimization", f"expected a mapping, got {zero!r}")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise keys.refuse("zero_optimization.stage", f"expected 0-3, got {stage!r}")
    values["zero"] = int(stage)
    devices = {}
    for part in ("offload_optimizer", "offload_param"):
        section = zero.get(part) or {}
        if not isinstance(section, dict):
            raise keys.refuse(f"zero_optimization.{part}", f"expected a mapping, got {section!r}")
        device = section.get("device") or "none"
        if device not in ("none", "cpu", "nvme"):
            raise keys.refuse(f"zero_optimization.{part}.device", f"expected none, cpu or nvme, got {device!r}")
        devices[part] = device
    opt_dev, param_dev = devices["offload_optimizer"], devices["offload_param"]
    if param_dev != "none":
        if opt_dev not in ("none", param_dev):
            raise keys.refuse("zero_optimization", f"parameters offloaded to {param_dev} but optimizer states to "
                                                   f"{opt_dev}: ftplan plans one offload device")
        values["offload"], values["offload_device"] = Offload.all, OffloadDevice(param_dev)
    elif opt_dev != "none":
        values["offload"], values["offload_device"] = Offload.optimizer, OffloadDevice(opt_dev)
    else:
        values["offload"] = Offload.none
    for key, name in (("train_micro_batch_size_per_gpu", "micro_batch"), ("gradient_accumulation_steps", "grad_accum")):
        value = keys.positive_int(key)
        if value is not None:
            values[name] = value
    enabled = {fmt: (data.get(fmt) or {}).get("enabled") if isinstance(data.get(fmt), dict) else None
               for fmt in ("bf16", "fp16")}
    if enabled["bf16"] is True and enabled["fp16"] is True:
        raise keys.refuse("bf16 / fp16", "both are enabled")
    if enabled["bf16"] is True:
        values["precision"] = Precision.bf16_mixed
    elif enabled["fp16"] is True:
        values["precision"] = Precision.fp16_mixed
    optimizer = data.get("optimizer")
    if isinstance(optimizer, dict) and optimizer.get("type"):
        kind = str(optimizer["type"]).lower()
        if kind not in _DS_OPTIMIZERS:
            raise keys.refuse("optimizer.type", f"'{optimizer['type']}' is not modelled (Adam, AdamW)")
        values["optimizer"] = _DS_OPTIMIZERS[kind]
    tp = (data.get("tensor_parallel") or {}).get("autotp_size") if isinstance(data.get("tensor_parallel"), dict) \
        else None
    if isinstance(tp, int) and tp > 1:
        values["tp"] = tp
    return Reading(source, KINDS["deepspeed"], values)


# --- accelerate config YAML ------------------------------------------------------------------------------

def accelerate(data: dict[str, Any], source: str) -> Reading:
    keys = _Keys(data, source)
    values: dict[str, Any] = {}
    kind = keys.text("distributed_type") or "NO"
    mixed = keys.text("mixed_precision")
    if mixed is not None:
        table = {"no": Precision.fp32, "bf16": Precision.bf16_mixed, "fp16": Precision.fp16_mixed}
        if mixed not in table:
            raise keys.refuse("mixed_precision", f"'{mixed}' is not modelled (no, bf16, fp16)")
        values["precision"] = table[mixed]
    if kind == "DEEPSPEED":
        ds = keys.get("deepspeed_config") or {}
        if ds.get("deepspeed_config_file"):
            return Reading(source, KINDS["accelerate"], values, references=(("deepspeed",
                                                                            ds["deepspeed_config_file"]),))
        zero = {"stage": ds.get("zero_stage", 2)}
        if ds.get("offload_optimizer_device") not in (None, "none"):
            zero["offload_optimizer"] = {"device": ds["offload_optimizer_device"]}
        if ds.get("offload_param_device") not in (None, "none"):
            zero["offload_param"] = {"device": ds["offload_param_device"]}
        values.update(deepspeed({"zero_optimization": zero}, source).values)
    elif kind == "FSDP":
        _fsdp(_Keys({"fsdp": True, "fsdp_config": keys.get("fsdp_config") or {}}, source), values, default_version=1)
    elif kind not in ("NO", "MULTI_GPU", "MULTI_CPU"):
        raise keys.refuse("distributed_type", f"'{kind}' is not modelled (NO, MULTI_GPU, DEEPSPEED, FSDP)")
    return Reading(source, KINDS["accelerate"], values)


# --- which reader, and putting the readings together -----------------------------------------------------

def detect(data: dict[str, Any], suffix: str) -> str:
    """Which tool wrote this setup, from its keys."""
    keys = set(data)
    if keys & {"zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size"}:
        return "deepspeed"
    if keys & {"distributed_type", "compute_environment"}:
        return "accelerate"
    if keys & {"finetuning_type", "cutoff_len", "lora_target", "lora_rank", "quantization_bit", "template",
               "flash_attn"}:
        return "llamafactory"
    if keys & {"base_model", "sequence_len", "micro_batch_size", "adapter", "lora_target_linear", "datasets"}:
        return "axolotl"
    if keys & {"per_device_train_batch_size", "output_dir", "optim", "gradient_accumulation_steps",
               "model_name_or_path"}:
        return "llamafactory" if suffix in (".yaml", ".yml") and "stage" in keys else "trainer"
    raise PlanError("not a training setup ftplan reads: no LLaMA-Factory, axolotl, TrainingArguments, DeepSpeed "
                    "or accelerate keys")


def read(data: dict[str, Any], source: str, suffix: str, exists: Callable[[str], bool]) -> Reading:
    kind = detect(data, suffix)
    if kind == "deepspeed":
        return deepspeed(data, source)
    if kind == "accelerate":
        return accelerate(data, source)
    return {"llamafactory": llamafactory, "axolotl": axolotl, "trainer": trainer}[kind](data, source, exists)


def combine(readings: list[Reading]) -> tuple[dict[str, Any], dict[str, str]]:
    """One set of values from several files: a value two files set differently is refused; a tool's default
    fills only what no file sets. Returns the values and the file each came from."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for reading in readings:
        for name, value in reading.values.items():
            if name in values and values[name] != value:
                raise PlanError(f"{reading.source} sets {name} = {_shown(value)} but {origin[name]} sets "
                                f"{_shown(values[name])}")
            values[name], origin[name] = value, reading.source
    for reading in readings:
        for name, value in reading.defaults.items():
            if name not in values:
                values[name], origin[name] = value, f"{reading.source} ({reading.kind.split()[0]}'s default)"
    return values, origin


def _shown(value: Any) -> str:
    return str(getattr(value, "value", value))


def freeze_layers_for(trainable_layers: int, num_layers: int, source: str) -> int:
    """LLaMA-Factory's freeze tuning trains the last N layers: ftplan freezes the first num_layers - N."""
    if trainable_layers >= num_layers:
        raise PlanError(f"{source}: freeze_trainable_layers {trainable_layers} leaves no layer of the "
                        f"{num_layers} frozen: use finetuning_type full")
    return num_layers - trainable_layers


def rope_for(rope_type: str, seq_len: int, max_positions: int) -> str | None:
    """LLaMA-Factory's RoPE factor: ceil(cutoff_len / max_position_embeddings), none when the model reaches
    cutoff_len already (model/model_utils/rope.py)."""
    if seq_len <= max_positions:
        return None
    return f"{rope_type}:{float(math.ceil(seq_len / max_positions))}"
