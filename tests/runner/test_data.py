"""runner.data: formats, masking, packing, truncation, eval split and bad-data errors (file and line)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from planner.errors import PlanError
from runner import data as d


class CharTokenizer:
    """One id per character (no torch, no files): enough to check masking and lengths."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [3 + (ord(c) % 97) for c in text]}


ALPACA = [{"instruction": "say hi", "input": "", "output": "hi"},
          {"instruction": "add", "input": "1 2", "output": "3"}]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_alpaca_jsonl_masks_the_prompt(tmp_path: Path) -> None:
    segs = d.load_segments(_jsonl(tmp_path / "a.jsonl", ALPACA))
    ex = d.tokenize_sft(segs, CharTokenizer(), seq_len=1000)
    assert len(ex) == 2
    first = ex[0]
    prompt_len = 1 + len(d.ALPACA_PROMPT_NO_INPUT.format(instruction="say hi"))
    assert first.labels[:prompt_len] == [d.IGNORE_INDEX] * prompt_len
    assert first.labels[prompt_len:] == first.input_ids[prompt_len:]  # "hi" + EOS trained
    assert first.input_ids[-1] == CharTokenizer.eos_token_id
    assert "### Input:\n1 2" in d.to_segments(d.Record(ALPACA[1], "x"), d.DataFormat.alpaca, None, sft=True)[0].text


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_same_records_from_every_file_type(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"a{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(ALPACA, indent=2))
    elif suffix == ".csv":
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
            w.writeheader()
            w.writerows(ALPACA)
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ALPACA), path)
    assert d.load_segments(path) == d.load_segments(_jsonl(tmp_path / "a.jsonl", ALPACA))


def test_sharegpt_trains_every_assistant_turn(tmp_path: Path) -> None:
    conv = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                              {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]}
    segs = d.load_segments(_jsonl(tmp_path / "s.jsonl", [conv]))[0]
    assert [s.text for s in segs if s.trained] == ["b\n", "d\n"]
    assert all(not s.trained for s in segs if s.text.startswith(("Human", "Assistant")))


def test_template_last_column_is_the_response(tmp_path: Path) -> None:
    row = {"Description": "cough", "Patient": "help", "Doctor": "rest"}
    tpl = "Description: {Description} Patient: {Patient} Doctor: {Doctor}"
    segs = d.load_segments(_jsonl(tmp_path / "t.jsonl", [row]), template=tpl)[0]
    assert segs == [d.Segment("Description: cough Patient: help Doctor: ", False), d.Segment("rest", True)]
    pt = d.load_segments(_jsonl(tmp_path / "t.jsonl", [row]), template=tpl, sft=False)[0]
    assert pt == [d.Segment("Description: cough Patient: help Doctor: rest", True)]


def test_pt_packs_into_full_blocks_and_sft_truncates(tmp_path: Path) -> None:
    rows = [{"text": "x" * n} for n in (30, 50, 70)]
    segs = d.load_segments(_jsonl(tmp_path / "p.jsonl", rows), sft=False)
    blocks = d.tokenize_pt(segs, CharTokenizer(), seq_len=32)
    assert len(blocks) == (3 * 2 + 150) // 32 and all(len(b.input_ids) == 32 for b in blocks)
    assert all(b.labels == b.input_ids for b in blocks)
    long = d.tokenize_sft(d.load_segments(_jsonl(tmp_path / "l.jsonl", [{"instruction": "q", "output": "a" * 500}])),
                          CharTokenizer(), seq_len=300)
    assert len(long[0].input_ids) == 300 and long[0].labels[-1] != d.IGNORE_INDEX


def test_eval_split_is_seeded_and_disjoint() -> None:
    ex = [d.Example([i], [i]) for i in range(40)]
    train, held = d.split_eval(ex, 0.1, seed=1)
    assert len(held) == 4 and len(train) == 36
    assert {e.input_ids[0] for e in train}.isdisjoint({e.input_ids[0] for e in held})
    assert d.split_eval(ex, 0.1, seed=1) == (train, held)


def test_pad_batch_masks_padding() -> None:
    out = d.pad_batch([d.Example([5, 6, 7], [-100, 6, 7]), d.Example([5], [5])], pad_id=0)
    assert out["input_ids"][1] == [5, 0, 0]
    assert out["labels"][1] == [5, -100, -100]
    assert out["attention_mask"][1] == [1, 0, 0]


@pytest.mark.parametrize(("name", "text", "where", "what"), [
    ("missing.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', ":2:", "missing column 'output'"),
    ("empty.jsonl", "", ":1:", "no records"),
    ("bad.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c"\n', ":3:", "malformed JSON"),
    ("bad.json", '[\n  {"text": "a"},\n  {"text": 1, }\n]\n', ":3:", "malformed JSON"),
    ("list.json", '[\n  {"text": "a"},\n  ["x"]\n]\n', ":3:", "expected a JSON object"),
    ("short.csv", "instruction,output\na,b\nc\n", ":3:", "missing column 'output'"),
])
def test_bad_data_names_file_and_line(tmp_path: Path, name: str, text: str, where: str, what: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PlanError) as err:
        d.load_segments(path)
    assert f"{path}{where}" in str(err.value) and what in str(err.value)
