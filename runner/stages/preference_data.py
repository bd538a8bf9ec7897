"""Preference data for `rm` and `dpo`: one prompt with a chosen and a rejected answer per record.

Two forms, told apart by their columns:
- TRL's `prompt` / `chosen` / `rejected` (trl docs, dataset_formats "preference", standard form);
- the alpaca-like `instruction` / `input` / `chosen` / `rejected` of LLaMA-Factory (data/README.md, "ranking"
  alpaca format) and MedicalGPT (reward / DPO data: question, response_chosen, response_rejected are the
  same three fields under other names, also accepted); the prompt is the stanford_alpaca prompt that
  runner.data builds for SFT, so an SFT model and its DPO stage see the same text.
Every error names the file and line (runner.data.read_records' positions), as the SFT reader does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from runner.data import Record, alpaca_prompt, column_text, read_records, record_alpaca_prompt

# MedicalGPT's reward/DPO rows: {"system", "history", "question", "response_chosen", "response_rejected"}
# (shibing624/MedicalGPT data/reward/dpo_zh_500.jsonl)
_MEDICALGPT = ("question", "response_chosen", "response_rejected")


@dataclass(frozen=True, slots=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


_HINT = " (conversational preference data is not supported; give plain text)"


def _text(record: Record, name: str, *, required: bool = True) -> str:
    return column_text(record, name, required=required, hint=_HINT)


def to_pair(record: Record) -> Pair:
    keys = record.fields.keys()
    if "prompt" in keys:
        prompt = _text(record, "prompt")
    elif "instruction" in keys:
        prompt = record_alpaca_prompt(record, hint=_HINT)
    elif _MEDICALGPT[0] in keys:
        prompt = alpaca_prompt(_text(record, "question"), "")
        return Pair(prompt, _nonempty(record, "response_chosen"), _nonempty(record, "response_rejected"))
    else:
        raise PlanError(f"{record.where}: cannot tell the preference format from columns {sorted(keys)}; expected "
                        "prompt/chosen/rejected or instruction/input/chosen/rejected")
    return Pair(prompt, _nonempty(record, "chosen"), _nonempty(record, "rejected"))


def _nonempty(record: Record, name: str) -> str:
    text = _text(record, name)
    if not text.strip():
        raise PlanError(f"{record.where}: column '{name}' is empty")
    return text


def load_pairs(path: Path) -> list[Pair]:
    """Every record of the file as a preference pair; PlanError naming file and line on the first bad one."""
    pairs = []
    for record in read_records(Path(path)):
        pair = to_pair(record)
        if pair.chosen == pair.rejected:
            raise PlanError(f"{record.where}: 'chosen' and 'rejected' are the same text; a pair must differ")
        pairs.append(pair)
    return pairs


def split_pairs(pairs: list[Pair], eval_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """The same seeded split as SFT data (runner.data.split_eval)."""
    from runner.data import split_eval

    return split_eval(pairs, eval_fraction, seed)  # type: ignore[arg-type]


def to_dataset(pairs: list[Pair]) -> Any:
    """A datasets.Dataset in TRL's standard preference form (prompt / chosen / rejected)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [p.prompt for p in pairs], "chosen": [p.chosen for p in pairs],
                              "rejected": [p.rejected for p in pairs]})
