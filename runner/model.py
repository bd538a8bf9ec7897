"""Model and tokenizer for a plan: load from a local directory (or a GGUF file, dequantized by transformers),
apply the plan's attention implementation, precision, RoPE scaling and method (LoRA / QLoRA through peft,
or full fine-tuning with the first layers frozen)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from planner import rope as planner_rope
from planner.errors import PlanError
from planner.states import fp32_adapters, kbit_prepared
from planner.strategy import Attn, Method, Precision, TrainConfig

# transformers' names for the attention kernels (modeling_utils.py, `ALL_ATTENTION_FUNCTIONS`)
_ATTN_IMPL = {Attn.eager: "eager", Attn.sdpa: "sdpa", Attn.flash: "flash_attention_2"}


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelOptions:
    """What the user chooses beyond the plan (the options LLaMA-Factory and peft users expect)."""

    modules_to_save: tuple[str, ...] = ()
    rope_scaling: str | None = None  # "linear:2.0": RoPE type and factor
    on_cuda: bool = False
    # "CAUSAL_LM": AutoModelForCausalLM; "SEQ_CLS": AutoModelForSequenceClassification with one label, the
    # scalar head of a reward model (peft TaskType names; peft trains and saves the `score` head with LoRA)
    task: str = "CAUSAL_LM"


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSource:
    """Where the weights live: a model directory, or a .gguf file (transformers' `gguf_file=`)."""

    directory: Path
    gguf_file: str | None = None


def model_source(path: Path) -> ModelSource:
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(directory=path.parent.resolve(), gguf_file=path.name)
    if not path.is_dir():
        raise PlanError(f"--model-path {path}: no such model directory")
    if not (path / "config.json").exists():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(directory=path.resolve(), gguf_file=ggufs[0])
        raise PlanError(f"--model-path {path}: no config.json (nor exactly one .gguf file) in it")
    return ModelSource(directory=path.resolve())


def model_config(src: ModelSource) -> Any:
    """The model's transformers config, a copy the caller may change. A GGUF file's is parsed once per version of
    the file (`_gguf_config`): for the architectures transformers' own GGUF reader does not cover (llama, qwen2,
    mistral, ...) the metadata goes through gguf-py's GGUFReader (configuration_utils.py -> load_gguf_checkpoint), which
    reads every field, the vocabulary's arrays included: seconds per parse (SmolLM2-135M's 49,152 tokens: about 5 s on
    this 2-core VM under load)."""
    from transformers import AutoConfig

    if src.gguf_file:
        return copy.deepcopy(_gguf_config(*_gguf_key(src)))
    return AutoConfig.from_pretrained(str(src.directory))


@lru_cache(maxsize=4)
def _gguf_config(path: str, mtime_ns: int, size: int) -> Any:
    """A GGUF file's config, memoized on the file's path, modification time and size (a rewritten file is read
    again); `model_config` hands out copies."""
    from transformers import AutoConfig

    p = Path(path)
    return AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name)


def _gguf_tokenizer_class(src: ModelSource) -> Any:
    """The tokenizer class AutoTokenizer picks for a GGUF file, from the memoized config (models/auto/
    tokenization_auto.py: for a `gguf_file` it parses the file's config again only to choose the class, and with no
    tokenizer_config.json and no `tokenizer_class` in the config it takes TOKENIZER_MAPPING[type(config)], else
    TokenizersBackend). None where AutoTokenizer's other rules could apply (a tokenizer_config.json beside the file,
    a config naming its tokenizer class, Mistral's own backend): AutoTokenizer decides there."""
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    if (src.directory / "tokenizer_config.json").exists():
        return None
    config = _gguf_config(*_gguf_key(src))
    if getattr(config, "tokenizer_class", None):
        return None
    cls = TOKENIZER_MAPPING.get(type(config), TokenizersBackend)
    return None if cls is None or cls.__name__ == "MistralCommonBackend" else cls


def _gguf_key(src: ModelSource) -> tuple[str, int, int]:
    assert src.gguf_file is not None
    path = src.directory / src.gguf_file
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def load_tokenizer(src: ModelSource) -> Any:
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    try:
        cls = _gguf_tokenizer_class(src) if src.gguf_file else None
        tok = (cls or AutoTokenizer).from_pretrained(str(src.directory), **kwargs)
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot load a tokenizer from {src.directory}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        # decoder-only models ship without a pad token; padded positions are masked and labelled -100 anyway
        tok.pad_token = tok.eos_token
    return tok


def parse_rope_scaling(text: str) -> dict[str, Any]:
    """'linear:2.0' -> {'rope_type': 'linear', 'factor': 2.0} (transformers modeling_rope_utils.py)."""
    kind, factor = planner_rope.parse_rope_scaling(text)
    return {"rope_type": kind, "factor": factor}


def attn_implementation(cfg: TrainConfig, on_cuda: bool) -> str:
    if cfg.attn is Attn.flash:
        if not on_cuda:
            # FlashAttention-2 kernels exist for CUDA only; sdpa computes the same attention
            return "sdpa"
        try:
            import flash_attn  # noqa: F401
        except ModuleNotFoundError:
            raise PlanError("the plan uses FlashAttention-2 but flash-attn is not installed "
                            "(pip install flash-attn, or re-plan with --attn sdpa)") from None
    return attn_name(cfg)


def attn_name(cfg: TrainConfig) -> str:
    """transformers' name of the plan's attention kernel, as a CUDA run loads it (attn_implementation)."""
    return _ATTN_IMPL[cfg.attn]


def load_dtype_name(cfg: TrainConfig) -> str:
    """The weights' dtype at load (load_dtype), by torch's name."""
    return "bfloat16" if cfg.precision is Precision.bf16_true else "float32"


def load_dtype(cfg: TrainConfig, on_cuda: bool) -> Any:
    """Weights' dtype at load: fp32 masters under mixed precision (autocast computes in 16 bit), bf16 under
    bf16-true. On the CPU mixed precision trains in fp32 (no bf16/fp16 units on the CPU device profile)."""
    import torch

    return getattr(torch, load_dtype_name(cfg))


def _quantization(cfg: TrainConfig, on_cuda: bool) -> Any:
    """bitsandbytes' config for QLoRA plans; its CPU backend serves --gpus NxCPU plans (runner.quant)."""
    from runner.quant import bnb_config

    return bnb_config(cfg, on_cuda)


def lora_target_modules(cfg: TrainConfig) -> str | list[str]:
    # peft's "all-linear": every nn.Linear except the output head (peft/tuners/tuners_utils.py)
    return "all-linear" if "all" in cfg.lora_targets else list(cfg.lora_targets)


def load_model(cfg: TrainConfig, src: ModelSource, opts: ModelOptions, *, wrap: bool = True) -> Any:
    """The base model with the plan's settings, wrapped in peft LoRA for adapter methods (unless `wrap` is
    False: TRL's trainers wrap it themselves from `lora_config`, keeping the adapter-free base as DPO's
    reference)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    try:
        config = model_config(src)
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read the model config in {src.directory}: {str(exc).splitlines()[0]}") from None
    if opts.rope_scaling:
        scaling = parse_rope_scaling(opts.rope_scaling)
        # transformers >= 5 keeps RoPE settings in `rope_parameters` (with rope_theta); older ones in rope_scaling
        if isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters = {**config.rope_parameters, **scaling}
        else:
            config.rope_scaling = {"type": scaling["rope_type"], **scaling}
    quant = _quantization(cfg, opts.on_cuda)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if opts.task == "SEQ_CLS":
        config.num_labels = 1
    auto = AutoModelForSequenceClassification if opts.task == "SEQ_CLS" else AutoModelForCausalLM
    model = auto.from_pretrained(
        str(src.directory), config=config, dtype=load_dtype(cfg, opts.on_cuda),
        attn_implementation=attn_implementation(cfg, opts.on_cuda), **kwargs)
    model.config.use_cache = False  # the KV cache is for generation; training with checkpointing refuses it
    if src.gguf_file:
        _forget_gguf_quantizer(model)
    if cfg.method is Method.full:
        _freeze_first_layers(model, cfg.freeze_layers)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quant is not None and kbit_prepared(cfg):
        # what the planner counts (planner.states.kbit_prepared): TRL's rule, not under sharding, DeepSpeed or
        # bf16-true; it casts the weights bitsandbytes left unquantized to fp32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if not wrap:
        return model
    try:
        return get_peft_model(model, lora_config(cfg, opts), autocast_adapter_dtype=fp32_adapters(cfg.precision))
    except ValueError as exc:
        raise PlanError(f"LoRA: {str(exc).splitlines()[0]}") from None


def lora_config(cfg: TrainConfig, opts: ModelOptions) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type=opts.task, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_modules(cfg), modules_to_save=list(opts.modules_to_save) or None)


def _freeze_first_layers(model: Any, n: int) -> None:
    if n <= 0:
        return
    model.get_input_embeddings().requires_grad_(False)
    layers = model.model.layers
    if n > len(layers):
        raise PlanError(f"--freeze-layers {n}: the model has {len(layers)} layers")
    for layer in layers[:n]:
        layer.requires_grad_(False)


def _forget_gguf_quantizer(model: Any) -> None:
    """transformers dequantizes GGUF tensors to torch floats at load (integrations/ggml.py, load_gguf_checkpoint)
    but still tags the model with a GGUF quantizer, which the Trainer refuses to train
    (trainer_utils.validate_quantization_for_training). The weights are plain float tensors: drop the tag."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
