"""LLaMA-Factory training YAML for a plan (`llamafactory-cli train llamafactory.yaml`).

Keys are LLaMA-Factory's argument names (src/llamafactory/hparams/{model,data,finetuning}_args.py plus the
transformers TrainingArguments), laid out as in its examples/train_lora/llama3_lora_sft.yaml; the run-length
values (3 epochs, cosine schedule, warmup_ratio 0.1, logging/saving intervals) are that example's.
DeepSpeed plans point at the Trainer variant of the ds_config ("auto" values filled by the Trainer).
"""

from __future__ import annotations

from typing import Any

from planner.configs.ds_config import DEFAULT_HYPER, Hyperparams, learning_rate
from planner.input_checks import slug
from planner.notes import plan_notes
from planner.rope import parse_rope_scaling
from planner.states import kbit_prepared
from planner.strategy import Attn, Engine, GradCkpt, Method, Precision, Quant, TrainConfig
from runner import switches
from runner.run_common import optim_args, trainer_optim

DS_TRAINER_CONFIG_FILE = "ds_config.trainer.json"

# LLaMA-Factory's chat template names (src/llamafactory/data/template.py), by catalog name prefix, first match wins;
# each as extras/constants.py registers the family's models (0.9.5: Qwen3 and Qwen3-MoE "qwen3", Gemma 3 "gemma3",
# GPT-OSS "gpt_oss", the DeepSeek-R1 distills "deepseekr1", DeepSeek-V3 "deepseek3", Phi-4 "phi4", Llama 4 "llama4",
# Mistral-Small-3.x "mistral_small", Mistral-Nemo "ministral"). 0.9.5 registers no Baichuan2 or OLMo 2 template:
# those models get "default", said in the file's header.
_TEMPLATES = (("llama-2", "llama2"), ("llama-3", "llama3"), ("llama-4", "llama4"), ("mistral-small", "mistral_small"),
              ("mistral-nemo", "ministral"), ("mistral", "mistral"), ("mixtral", "mistral"), ("qwen3", "qwen3"),
              ("qwen2", "qwen"), ("chatglm3", "chatglm3"), ("gemma-3", "gemma3"), ("gpt-oss", "gpt_oss"),
              ("deepseek-r1-distill", "deepseekr1"), ("deepseek-v3", "deepseek3"), ("phi-4", "phi4"))


# flash_attn choices: auto, disabled (eager), sdpa, fa2 (hparams/model_args.py, AttentionFunction)
_ATTN = {Attn.eager: "disabled", Attn.sdpa: "sdpa", Attn.flash: "fa2"}


def template_for(cfg: TrainConfig) -> str:
    name = cfg.model.name.lower()
    for prefix, template in _TEMPLATES:
        if name.startswith(prefix):
            return template
    return "default"


def _finetuning(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.method is Method.full and cfg.freeze_layers:
        # freeze tuning trains the last N decoder layers (positive freeze_trainable_layers)
        return {"finetuning_type": "freeze", "freeze_trainable_layers": cfg.model.num_layers - cfg.freeze_layers}
    if cfg.method is Method.full:
        return {"finetuning_type": "full"}
    out: dict[str, Any] = {"finetuning_type": "lora", "lora_rank": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                           "lora_dropout": cfg.lora_dropout, "lora_target": ",".join(cfg.lora_targets)}
    if cfg.method is Method.qlora:
        out["quantization_bit"] = 4 if cfg.quant is Quant.nf4 else 8
        out["quantization_method"] = "bnb"
        out["double_quantization"] = cfg.double_quant
    return out


def _precision(cfg: TrainConfig) -> dict[str, Any]:
    # pure_bf16 is refused with ZeRO-3 (hparams/parser.py); the planner allows bf16-true with DDP/FSDP only
    if cfg.precision is Precision.bf16_true:
        return {"bf16": True, "pure_bf16": True}
    if cfg.precision is Precision.bf16_mixed:
        return {"bf16": True}
    if cfg.precision is Precision.fp16_mixed:
        return {"fp16": True}
    return {}


def notes(cfg: TrainConfig) -> list[str]:
    """What of the plan LLaMA-Factory cannot express, said in the file's header."""
    out = []
    if cfg.tp > 1 or cfg.pp > 1:
        out.append(f"LLaMA-Factory trains data-parallel only: this plan's TP{cfg.tp}/PP{cfg.pp} needs `ftplan run`.")
    if cfg.model.rope_scaling:
        kind, factor = parse_rope_scaling(cfg.model.rope_scaling)  # the header says it in ftplan's words only
        out.append(f"LLaMA-Factory picks the RoPE factor itself (cutoff_len / max_position_embeddings, rounded up); "
                   f"the plan assumed {kind}:{factor:g}.")
    if template_for(cfg) == "default" and cfg.model.name.startswith("baichuan2"):
        out.append("LLaMA-Factory 0.9.5 has no Baichuan2 chat template: 'default' is set; name yours in `template`.")
    if cfg.grad_ckpt is GradCkpt.selective:
        out.append("LLaMA-Factory checkpoints whole layers: the plan's selective checkpointing becomes full.")
    out += [note + "." for note in plan_notes(cfg)]  # LoRA targets and dropout, attention (planner/notes.py)
    if kbit_prepared(cfg):
        out.append("LLaMA-Factory does not call peft's prepare_model_for_kbit_training: its QLoRA keeps the "
                   "non-quantized weights and the residual stream in 16 bits, below this plan's memory "
                   "(`--no-kbit-prep` plans that run).")
    return out + switches.llamafactory_notes(cfg)


def build_llamafactory_config(cfg: TrainConfig, *, model_path: str, ds_config_path: str = DS_TRAINER_CONFIG_FILE,
                              hp: Hyperparams = DEFAULT_HYPER) -> dict:
    """`ds_config_path` as LLaMA-Factory will open it: relative to the directory it is started in."""
    out: dict[str, Any] = {"model_name_or_path": model_path}
    if cfg.model.model_type in ("chatglm", "baichuan"):
        out["trust_remote_code"] = True
    out.update({"stage": cfg.stage.value, "do_train": True, **_finetuning(cfg)})
    if cfg.model.rope_scaling:
        out["rope_scaling"] = parse_rope_scaling(cfg.model.rope_scaling)[0]  # hparams/model_args.py RopeScaling
    if cfg.engine is Engine.deepspeed:
        out["deepspeed"] = ds_config_path
    out.update({
        "flash_attn": _ATTN[cfg.attn],
        "disable_gradient_checkpointing": cfg.grad_ckpt is GradCkpt.none,
        "dataset": "alpaca_en_demo",  # LLaMA-Factory's bundled demo set; name yours in data/dataset_info.json
        "template": template_for(cfg),
        "cutoff_len": cfg.seq_len,
        # a relative folder under saves/ whatever the model is called (slug: no separators, never `..`)
        "output_dir": f"saves/{slug(cfg.model.name)}/{cfg.method.value}/{cfg.stage.value}",
        "logging_steps": 10,
        "save_steps": 500,
        "plot_loss": True,
        "per_device_train_batch_size": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": learning_rate(cfg, hp),
        "num_train_epochs": 3.0,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "max_grad_norm": hp.max_grad_norm,
        "optim": trainer_optim(cfg),
        # SGD's momentum reaches the Trainer only through optim_args
        **({"optim_args": optim_args(cfg, hp)} if optim_args(cfg, hp) else {}),
        **_precision(cfg),
        **switches.llamafactory_arguments(cfg),
        "ddp_timeout": 180000000,
        "report_to": "none",
    })
    return out
