"""What a plan says beside its numbers about the defaults ftplan chose for it where they are not the usual ones: the
LoRA targets and dropout peft can run, the attention transformers picks for the model. One list for the rich
reports, the JSON (`notes`, planner.estimate.estimate_to_dict) and the emitted files' headers."""

from __future__ import annotations

from planner.params import lora_dropout_note, lora_targets_note
from planner.strategy import TrainConfig
from planner.validity import attention_note


def plan_notes(cfg: TrainConfig) -> list[str]:
    out: list[str] = []
    if cfg.trains_adapter:
        out += [lora_targets_note(cfg.model, cfg.lora_targets), lora_dropout_note(cfg.model, cfg.lora_targets,
                                                                                  cfg.lora_dropout)]
    out.append(attention_note(cfg))
    return [n for n in out if n]
