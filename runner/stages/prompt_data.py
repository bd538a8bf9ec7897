"""Prompt data for the online RL stages (`grpo`, `rloo`): one prompt per record, any other columns kept for the
reward functions (TRL passes every dataset column to them as keyword arguments, e.g. a reference `answer`).

Forms, told apart by their columns:
- TRL's `prompt` (trl docs, dataset_formats "prompt-only", standard form);
- alpaca-like `instruction` / `input` (LLaMA-Factory, MedicalGPT), turned into the stanford_alpaca prompt that
  runner.data builds for SFT;
- MedicalGPT's `question`.
Every error names the file and line (runner.data.read_records' positions), as the SFT and preference readers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from runner.data import Record, alpaca_prompt, column_text, read_records, record_alpaca_prompt

_PROMPT_COLUMNS = ("prompt", "instruction", "input", "question")


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    extra: dict[str, Any] = field(default_factory=dict)  # the record's other columns, for the reward functions
    where: str = ""


_HINT = " (conversational prompts are not supported; give plain text)"


def _text(record: Record, name: str, *, required: bool = True) -> str:
    return column_text(record, name, required=required, hint=_HINT)


def to_prompt(record: Record) -> Prompt:
    keys = record.fields.keys()
    if "prompt" in keys:
        text = _text(record, "prompt")
    elif "instruction" in keys:
        text = record_alpaca_prompt(record, hint=_HINT)
    elif "question" in keys:
        text = alpaca_prompt(_text(record, "question"), "")
    else:
        raise PlanError(f"{record.where}: cannot tell the prompt from columns {sorted(keys)}; expected 'prompt', "
                        "'instruction' (with 'input') or 'question'")
    if not text.strip():
        raise PlanError(f"{record.where}: the prompt is empty")
    extra = {k: v for k, v in record.fields.items() if k not in _PROMPT_COLUMNS}
    return Prompt(text=text, extra=extra, where=record.where)


def load_prompts(path: Path) -> list[Prompt]:
    """Every record of the file as a prompt; PlanError naming file and line on the first bad one. Columns beside
    the prompt must be present in every record (the dataset is a table)."""
    prompts = [to_prompt(r) for r in read_records(Path(path))]
    columns = set(prompts[0].extra)
    for p in prompts:
        if set(p.extra) != columns:
            missing = sorted(columns - set(p.extra)) or sorted(set(p.extra) - columns)
            raise PlanError(f"{p.where}: columns differ from the first record's ({', '.join(missing)})")
    return prompts


def fit_prompts(prompts: list[Prompt], tokenizer: Any, max_prompt_tokens: int, where: Path) -> list[Prompt]:
    """The prompts within the plan's prompt length (seq_len - completion_len): TRL 1.16 does not truncate prompts,
    and a longer one would run past the sequence the plan counted."""
    kept = [p for p in prompts if len(tokenizer(p.text, add_special_tokens=True)["input_ids"]) <= max_prompt_tokens]
    if not kept:
        raise PlanError(f"{where}: no prompt fits in the plan's {max_prompt_tokens} prompt tokens (seq_len less "
                        "completion_len): re-plan with a longer --seq-len or a shorter --completion-len")
    return kept


def to_dataset(prompts: list[Prompt]) -> Any:
    """A datasets.Dataset in TRL's prompt-only form, with the other columns beside `prompt`."""
    from datasets import Dataset

    data: dict[str, list[Any]] = {"prompt": [p.text for p in prompts]}
    for key in prompts[0].extra:
        data[key] = [p.extra[key] for p in prompts]
    return Dataset.from_dict(data)
