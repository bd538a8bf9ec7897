"""The Trainer's AdamW parameter groups, for the profiler's worker and its dry run alike (one module both import, so
neither imports the other)."""

from __future__ import annotations

from typing import Any

from planner.configs.ds_config import DEFAULT_HYPER


def trainer_param_groups(model: Any) -> list[dict[str, Any]]:
    """The trained parameters in the Trainer's two groups (transformers trainer.py `create_optimizer`): those
    `get_decay_parameter_names` names (every parameter outside nn.LayerNorm modules whose name matches no bias or norm
    pattern) with the run's weight decay, the rest (norms, biases) without. The groups are the Trainer's own, so a
    measured step holds what the runner's does: ZeRO-1/2 step one group at a time (stage_1_and_2.py `step`), and at
    ZeRO-2 the norms' group keeps the contiguous gradient partition through the other group's step
    (planner/engines/zero.py _client_adamw_step_bytes). A LoRA model leaves the second group empty, which DeepSpeed
    drops (runtime/engine.py `_configure_optimizer`) and torch steps as nothing."""
    from transformers import Trainer

    # the method reads nothing from the Trainer instance: the same names without building a Trainer
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if n in decay], "weight_decay": DEFAULT_HYPER.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
