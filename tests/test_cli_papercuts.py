"""First-hour papercuts: `--rope-scaling` for plan/estimate/scale/tune, and `--top N` / `--all` for plan's JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from cli_helpers import run


def ok_json(capsys, monkeypatch, *args: str):
    code, out, err = run(capsys, monkeypatch, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_estimate_needs_rope_scaling_beyond_the_positions(capsys, monkeypatch) -> None:
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--seq-len", "8192")
    assert code == 2 and out == ""
    assert err == ("ftplan: error: --seq-len 8192 exceeds the 4096 positions of llama-2-7b "
                   "(add --rope-scaling, e.g. linear:2.0)\n")
    short = ok_json(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--seq-len", "4096")
    long = ok_json(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--seq-len", "8192",
                   "--rope-scaling", "linear:2.0")
    # the memory and time models follow the longer sequence; RoPE scaling itself adds no parameters
    assert long["params_total"] == short["params_total"]
    assert long["memory_per_gpu_bytes"]["activations"] > 1.9 * short["memory_per_gpu_bytes"]["activations"]
    assert long["step_time_s"] > 2 * short["step_time_s"]
    assert long["config"]["model"]["max_seq_len"] == 8192
    assert long["config"]["model"]["rope_scaling"] == "linear:2"
    assert "rope_scaling" not in short["config"]["model"]  # plans without it read as before


@pytest.mark.parametrize(("args", "needle"), [
    (("--rope-scaling", "cubic:2"), "type must be one of linear, dynamic, yarn, llama3"),
    (("--rope-scaling", "linear"), "write TYPE:FACTOR"),
    (("--rope-scaling", "linear:0.5"), "the factor must exceed 1"),
    (("--rope-scaling", "linear:1.5", "--seq-len", "8192"), "exceeds the 6144 positions"),
    (("--model", "bloom-7b1", "--rope-scaling", "linear:2"), "ALiBi"),
])
def test_bad_rope_scaling_is_one_line(capsys, monkeypatch, args: tuple[str, ...], needle: str) -> None:
    base = {"--model": "7b", "--gpus": "8xA800", "--seq-len": "2048"}
    extra = list(args)
    for key in list(base):
        if key in extra:
            del base[key]
    code, out, err = run(capsys, monkeypatch, "estimate", *[x for kv in base.items() for x in kv], *extra)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err


def test_plan_scale_tune_take_rope_scaling(capsys, monkeypatch, tmp_path: Path) -> None:
    common = ("--model", "7b", "--method", "lora", "--seq-len", "8192", "--rope-scaling", "linear:2.0")
    plan = ok_json(capsys, monkeypatch, "plan", "--gpus", "2xA800", *common, "--top", "1")
    assert plan["plans"] and plan["plans"][0]["config"]["seq_len"] == 8192
    scale = ok_json(capsys, monkeypatch, "scale", "--gpu", "A800", "--max-gpus", "2", *common, "--out",
                    str(tmp_path))
    assert scale["seq_len"] == 8192 and all(row["fits"] for row in scale["rows"][1:])
    tune = ok_json(capsys, monkeypatch, "tune", "--gpus", "2xA800", *common, "--storage", "memory")
    # the same winner up to the plan ranking's 1% tie rule (simpler first), which the tuner does not apply
    assert tune["best"]["config"]["seq_len"] == 8192
    assert tune["best"]["tokens_per_s"] == pytest.approx(plan["plans"][0]["tokens_per_s"], rel=0.01)
    code, _, err = run(capsys, monkeypatch, "plan", "--gpus", "2xA800", "--model", "7b", "--seq-len", "8192")
    assert code == 2 and "--rope-scaling" in err


def test_plan_json_top_and_all(capsys, monkeypatch) -> None:
    args = ("plan", "--model", "13b", "--gpus", "2xA800")
    default = ok_json(capsys, monkeypatch, *args)
    per_method = Counter(p["config"]["method"] for p in default["plans"])
    assert set(per_method.values()) == {3}  # today's behaviour: the best 3 per method
    one = ok_json(capsys, monkeypatch, *args, "--top", "1")
    assert [p["name"] for p in one["plans"]] == [
        next(p for p in default["plans"] if p["config"]["method"] == m)["name"] for m in per_method]
    everything = ok_json(capsys, monkeypatch, *args, "--all")
    assert len(everything["plans"]) == everything["fitting"] == default["fitting"]
    flags = [p["runnable"] for p in everything["plans"]]
    assert flags == sorted(flags, reverse=True)  # plans `ftplan run` executes first (--include-unrunnable: all)
    for group in (True, False):
        speeds = [p["tokens_per_s"] for p in everything["plans"] if p["runnable"] is group]
        # best first; plans within 1% of each other rank simpler first
        assert all(a >= 0.99 * b for a, b in zip(speeds, speeds[1:], strict=False))
