"""Training data for `ftplan run`: read JSON / JSONL / CSV / Parquet records, turn each into text segments
(prompt segments masked out of the loss for `sft`), tokenize, truncate or pack to the plan's sequence length,
and hold out an eval split.

Formats: alpaca (`instruction` / `input` / `output`, prompt as in stanford_alpaca's train.py PROMPT_DICT),
sharegpt (`conversations`: `from`/`value` or `role`/`content` turns; every assistant turn is trained on),
plain `text`, or any columns through a template such as "Description: {Description} Patient: {Patient}
Doctor: {Doctor}" (for sft the last placeholder is the response, everything before it the prompt).
Reading needs no torch; `tokenize_*` take any tokenizer with `__call__` returning `input_ids`.

Every user error is a PlanError naming the file and the line (JSONL, CSV: the physical line; JSON: the
line where the record starts; Parquet: the row number).
"""

from __future__ import annotations

import csv
import json
import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from planner.errors import PlanError

IGNORE_INDEX = -100  # labels the loss skips (torch.nn.CrossEntropyLoss ignore_index default)

# stanford_alpaca train.py, PROMPT_DICT
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n"
                       "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
# sharegpt speaker names (FastChat's conversation data) and OpenAI-style roles
_USER_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant", "model"}
_SYSTEM_ROLES = {"system"}
_TURN_PREFIX = {"user": "Human: ", "assistant": "Assistant: ", "system": "System: "}


class DataFormat(str, Enum):
    auto = "auto"
    alpaca = "alpaca"
    sharegpt = "sharegpt"
    text = "text"
    template = "template"


@dataclass(frozen=True, slots=True)
class Record:
    """One row of the data file with where it came from (for error messages)."""

    fields: dict[str, Any]
    where: str  # "train.jsonl:12"


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    trained: bool  # False: prompt tokens, labels -100 under sft


@dataclass(frozen=True, slots=True)
class Example:
    input_ids: list[int]
    labels: list[int]


# ---------------------------------------------------------------- reading

def read_records(path: Path) -> list[Record]:
    """Every record of a .json / .jsonl / .csv / .parquet file; PlanError naming file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = list(_read_jsonl(path))
    elif suffix == ".json":
        records = _read_json(path)
    elif suffix == ".csv":
        records = list(_read_csv(path))
    elif suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise PlanError(f"{path}: unknown data format '{suffix}' (use .json, .jsonl, .csv or .parquet)")
    if not records:
        raise PlanError(f"{path}:1: the file holds no records")
    return records


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise PlanError(f"{path}:{line}: not UTF-8 text") from None


def _read_jsonl(path: Path) -> Iterator[Record]:
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise PlanError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield Record(obj, f"{path}:{lineno}")


def _read_json(path: Path) -> list[Record]:
    text = _read_text(path)
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a JSONL file named .json
            return list(_read_jsonl(path))
        raise PlanError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise PlanError(f"{path}:1: expected a JSON list of objects")
    # the line each top-level element starts on, from the decoder's own positions
    decoder, starts, pos = json.JSONDecoder(), [], text.index("[") + 1 if text.lstrip().startswith("[") else 0
    for _ in data:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        starts.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    out = []
    for obj, line in zip(data, starts, strict=True):
        if not isinstance(obj, dict):
            raise PlanError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
        out.append(Record(obj, f"{path}:{line}"))
    return out


def _read_csv(path: Path) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        try:
            line = reader.line_num + 1
            for row in reader:
                if None in row:
                    raise PlanError(f"{path}:{line}: more fields than the header names")
                yield Record(dict(row), f"{path}:{line}")
                line = reader.line_num + 1
        except csv.Error as exc:
            raise PlanError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError:
            raise PlanError(f"{path}:{reader.line_num + 1}: not UTF-8 text") from None


def _read_parquet(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise PlanError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses for damaged files
        raise PlanError(f"{path}: not a readable Parquet file ({exc})") from None
    return [Record(row, f"{path}:row {i + 1}") for i, row in enumerate(rows)]


# ---------------------------------------------------------------- records -> segments

def template_fields(template: str) -> list[str]:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    if not names:
        raise PlanError(f"--template '{template}' names no {{column}}")
    return names


def detect_format(record: Record, template: str | None) -> DataFormat:
    if template:
        return DataFormat.template
    keys = set(record.fields)
    if "conversations" in keys or "messages" in keys:
        return DataFormat.sharegpt
    if "instruction" in keys or "output" in keys:
        return DataFormat.alpaca
    if "text" in keys:
        return DataFormat.text
    raise PlanError(f"{record.where}: cannot tell the data format from columns {sorted(keys)}; expected "
                    "instruction/input/output (alpaca), conversations (sharegpt) or text, or pass --template")


def column_text(record: Record, name: str, *, required: bool = True, hint: str = "") -> str:
    """The record's column `name` as text ("" when absent and not required); a dict or list is refused, with
    `hint` (" (...)") saying which form the reader takes instead. Shared by the SFT, preference and prompt readers."""
    value = record.fields.get(name)
    if value is None:
        if required:
            raise PlanError(f"{record.where}: missing column '{name}'")
        return ""
    if isinstance(value, (dict, list)):
        raise PlanError(f"{record.where}: column '{name}' must be text, got {type(value).__name__}{hint}")
    return str(value)


def alpaca_prompt(instruction: str, extra: str) -> str:
    """stanford_alpaca's prompt (train.py PROMPT_DICT): with the input when there is one."""
    return (ALPACA_PROMPT_INPUT.format(instruction=instruction, input=extra) if extra
            else ALPACA_PROMPT_NO_INPUT.format(instruction=instruction))


def record_alpaca_prompt(record: Record, *, hint: str = "") -> str:
    """The alpaca prompt of a record with `instruction` and an optional `input` column."""
    return alpaca_prompt(column_text(record, "instruction", hint=hint),
                         column_text(record, "input", required=False, hint=hint))


def _alpaca(record: Record) -> list[Segment]:
    return [Segment(record_alpaca_prompt(record), False), Segment(column_text(record, "output"), True)]


def _sharegpt(record: Record) -> list[Segment]:
    key = "conversations" if "conversations" in record.fields else "messages"
    turns = record.fields[key]
    if not isinstance(turns, list) or not turns:
        raise PlanError(f"{record.where}: '{key}' must be a non-empty list of turns")
    out: list[Segment] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise PlanError(f"{record.where}: turn {i + 1} of '{key}' is not an object")
        role = str(turn.get("from", turn.get("role", ""))).lower()
        text = turn.get("value", turn.get("content"))
        if text is None:
            raise PlanError(f"{record.where}: turn {i + 1} of '{key}' lacks 'value' (or 'content')")
        if role in _ASSISTANT_ROLES:
            out.append(Segment(_TURN_PREFIX["assistant"], False))
            out.append(Segment(f"{text}\n", True))
        elif role in _USER_ROLES or role in _SYSTEM_ROLES:
            kind = "user" if role in _USER_ROLES else "system"
            out.append(Segment(f"{_TURN_PREFIX[kind]}{text}\n", False))
        else:
            raise PlanError(f"{record.where}: turn {i + 1} has unknown speaker '{role}' "
                            "(expected human/gpt, user/assistant or system)")
    if not any(s.trained for s in out):
        raise PlanError(f"{record.where}: the conversation has no assistant (gpt) turn to train on")
    return out


def _template(record: Record, template: str, *, split_last: bool) -> list[Segment]:
    names = template_fields(template)
    values = {name: column_text(record, name) for name in names}
    if not split_last:
        return [Segment(template.format(**values), True)]
    # everything up to the last placeholder is prompt; the last field (and any literal after it) is trained on
    last = names[-1]
    cut = template.rindex("{" + last)
    head, tail = template[:cut], template[cut:]
    return [Segment(head.format(**values), False), Segment(tail.format(**values), True)]


def to_segments(record: Record, fmt: DataFormat, template: str | None, *, sft: bool) -> list[Segment]:
    if fmt is DataFormat.alpaca:
        segs = _alpaca(record)
    elif fmt is DataFormat.sharegpt:
        segs = _sharegpt(record)
    elif fmt is DataFormat.text:
        segs = [Segment(column_text(record, "text"), True)]
    else:
        if not template:
            raise PlanError("--format template needs --template, e.g. 'Q: {question} A: {answer}'")
        segs = _template(record, template, split_last=sft)
    if not sft:  # continued pre-training: every token is trained on
        segs = [Segment("".join(s.text for s in segs), True)]
    return segs


def load_segments(path: Path, *, fmt: DataFormat = DataFormat.auto, template: str | None = None,
                  sft: bool = True) -> list[list[Segment]]:
    records = read_records(path)
    chosen = detect_format(records[0], template) if fmt is DataFormat.auto else fmt
    return [to_segments(r, chosen, template, sft=sft) for r in records]


# ---------------------------------------------------------------- tokenization

def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos(tokenizer: Any) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None else []


def _eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [eos] if eos is not None else []


def tokenize_sft(segments: list[list[Segment]], tokenizer: Any, seq_len: int) -> list[Example]:
    """One example per record: prompt tokens labelled -100, response tokens (and EOS) kept; truncated to seq_len.
    Records whose response is cut off entirely train nothing and are dropped."""
    out = []
    for segs in segments:
        ids, labels = _bos(tokenizer), [IGNORE_INDEX] * len(_bos(tokenizer))
        for seg in segs:
            piece = _ids(tokenizer, seg.text)
            ids += piece
            labels += piece if seg.trained else [IGNORE_INDEX] * len(piece)
        ids += _eos(tokenizer)
        labels += _eos(tokenizer)
        ids, labels = ids[:seq_len], labels[:seq_len]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            out.append(Example(ids, labels))
    return out


def tokenize_pt(segments: list[list[Segment]], tokenizer: Any, seq_len: int) -> list[Example]:
    """Packing: all texts joined with EOS and cut into seq_len blocks; the short remainder is dropped
    (as transformers' examples/pytorch/language-modeling/run_clm.py `group_texts` does)."""
    stream: list[int] = []
    for segs in segments:
        stream += _bos(tokenizer) + _ids(tokenizer, "".join(s.text for s in segs)) + _eos(tokenizer)
    blocks = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    if not blocks and stream:  # less text than one block: train on what there is
        blocks = [stream]
    return [Example(b, list(b)) for b in blocks]


def split_eval(examples: Sequence[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded shuffle, then the last `eval_fraction` (at least one example when there are two or more)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise PlanError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(order) * eval_fraction)
    if eval_fraction > 0 and n_eval == 0 and len(order) >= 2:
        n_eval = 1
    train = [examples[i] for i in order[:len(order) - n_eval]]
    held = [examples[i] for i in order[len(order) - n_eval:]]
    return train, held


def pad_batch(batch: Sequence[Example], pad_id: int) -> dict[str, list[list[int]]]:
    """Right padding to the longest example; padded labels are -100 and masked from attention."""
    width = max(len(e.input_ids) for e in batch)
    ids, labels, mask = [], [], []
    for e in batch:
        pad = width - len(e.input_ids)
        ids.append(e.input_ids + [pad_id] * pad)
        labels.append(e.labels + [IGNORE_INDEX] * pad)
        mask.append([1] * len(e.input_ids) + [0] * pad)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
