"""Reward modelling through TRL's RewardTrainer: a sequence-classification model with one output (the scalar
score read at the last non-padding token: transformers' GenericForSequenceClassification) trained on the
pairwise loss -log sigma(r(chosen) - r(rejected)) (Ouyang et al. 2022, eq. 1; TRL reward_trainer.py
`compute_loss`). The `score` head is new (randomly initialized) and trains in every method: peft's SEQ_CLS
task keeps it in `modules_to_save`, so the adapter carries it and `ftplan merge` folds both into a
sequence-classification model.
"""

from __future__ import annotations

from typing import Any

from planner.strategy import TrainConfig
from runner.stages.models import StageModels


def config_class(cfg: TrainConfig) -> type:
    from trl import RewardConfig

    return RewardConfig


def config_fields(cfg: TrainConfig, opts: Any) -> dict[str, Any]:
    # RewardTrainer drops pairs whose chosen or rejected sequence exceeds max_length (it does not truncate)
    return {"max_length": cfg.seq_len}


def datasets(cfg: TrainConfig, opts: Any, tokenizer: Any) -> tuple[Any, Any]:
    """TRL's preference datasets (prompt / chosen / rejected): a seeded eval split as SFT data."""
    from runner.stages.preference_data import load_pairs, split_pairs, to_dataset

    train, held_out = split_pairs(load_pairs(opts.data), opts.eval_fraction, opts.seed)
    return to_dataset(train), to_dataset(held_out) if held_out else None


def load_models(cfg: TrainConfig, src: Any, opts: Any, *, on_cuda: bool) -> StageModels:
    from planner.strategy import Method
    from runner.model import ModelOptions, load_model, lora_config

    mopts = ModelOptions(modules_to_save=opts.modules_to_save, rope_scaling=opts.rope_scaling, on_cuda=on_cuda,
                         task="SEQ_CLS")
    model = load_model(cfg, src, mopts, wrap=False)
    peft_config = None if cfg.method is Method.full else lora_config(cfg, mopts)
    return StageModels(model=model, peft_config=peft_config)


def make_trainer(models: StageModels, *, args: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any,
                 callbacks: list[Any], cfg: TrainConfig, **_: Any) -> Any:
    from trl import RewardTrainer

    from runner.run_common import offloading_trainer

    return offloading_trainer(RewardTrainer, cfg)(model=models.model, args=args, train_dataset=train_dataset,
                                                  eval_dataset=eval_dataset, processing_class=tokenizer,
                                                  callbacks=callbacks, peft_config=models.peft_config)
