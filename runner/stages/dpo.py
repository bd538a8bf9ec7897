"""Direct Preference Optimization through TRL's DPOTrainer (Rafailov et al. 2023, eq. 7: the sigmoid loss
-log sigma(beta * (log pi/pi_ref (chosen) - log pi/pi_ref (rejected)))).

The reference policy: for LoRA and QLoRA, the base model with the adapters switched off (TRL's
`use_adapter(..., adapter_name=None)` in DPOTrainer._compute_loss), so no second copy of the weights exists;
for full fine-tuning, a frozen copy of the starting model loaded here the same way as the policy (TRL then
prepares it for DeepSpeed / FSDP in evaluation mode). TRL 1.16 has no reference-free DPO flag; its
`precompute_ref_log_probs` is not used (one pass over the data before training, cached on disk by `datasets`).
TRL turns dropout off in the policy and the reference (DPOConfig.disable_dropout, default True; LoRA dropout
included), so the two agree at step 0.
"""

from __future__ import annotations

from typing import Any

from planner.strategy import Method, TrainConfig
from runner.stages.models import StageModels


def config_class(cfg: TrainConfig) -> type:
    from trl import DPOConfig

    return DPOConfig


def config_fields(cfg: TrainConfig, opts: Any) -> dict[str, Any]:
    # prompt + completion per sequence, cut at the plan's sequence length (TRL truncates keep_start)
    return {"beta": opts.dpo_beta, "max_length": cfg.seq_len}


def datasets(cfg: TrainConfig, opts: Any, tokenizer: Any) -> tuple[Any, Any]:
    """TRL's preference datasets (prompt / chosen / rejected): a seeded eval split as SFT data."""
    from runner.stages.preference_data import load_pairs, split_pairs, to_dataset

    train, held_out = split_pairs(load_pairs(opts.data), opts.eval_fraction, opts.seed)
    return to_dataset(train), to_dataset(held_out) if held_out else None


def load_models(cfg: TrainConfig, src: Any, opts: Any, *, on_cuda: bool) -> StageModels:
    """The policy (unwrapped: TRL applies the LoRA config), and for full fine-tuning a frozen reference."""
    from dataclasses import replace

    from runner.model import ModelOptions, load_model, lora_config

    mopts = ModelOptions(modules_to_save=opts.modules_to_save, rope_scaling=opts.rope_scaling, on_cuda=on_cuda)
    policy = load_model(cfg, src, mopts, wrap=False)
    if cfg.method is not Method.full:
        return StageModels(model=policy, ref_model=None, peft_config=lora_config(cfg, mopts))
    reference = load_model(replace(cfg, freeze_layers=0), src, mopts)
    reference.requires_grad_(False)
    return StageModels(model=policy, ref_model=reference.eval(), peft_config=None)


def make_trainer(models: StageModels, *, args: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any,
                 callbacks: list[Any], cfg: TrainConfig, **_: Any) -> Any:
    from trl import DPOTrainer

    from runner.run_common import offloading_trainer

    return offloading_trainer(DPOTrainer, cfg)(model=models.model, ref_model=models.ref_model, args=args,
                                               train_dataset=train_dataset, eval_dataset=eval_dataset,
                                               processing_class=tokenizer, callbacks=callbacks,
                                               peft_config=models.peft_config)
