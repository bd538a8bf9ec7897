"""What a preference stage hands to its TRL trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class StageModels:
    model: Any  # the trained model, not yet wrapped by peft
    ref_model: Any = None  # DPO's frozen reference (full fine-tuning only)
    peft_config: Any = None  # peft.LoraConfig for LoRA / QLoRA; TRL wraps the model with it
