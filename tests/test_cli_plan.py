"""`ftplan plan / estimate / models / gpus`: output contracts and one-line errors for bad input.

Commands run in-process through `ftplan.cli.main` (the console script's entry point, which maps
PlanError and usage errors to one stderr line and exit code 2); one test runs `python -m ftplan` in a
subprocess to check the real entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run

from planner.search import TIE_FRACTION


@pytest.fixture(scope="module")
def plan_json() -> dict:
    """One plan run shared by the JSON tests (the search takes about a second)."""
    done = subprocess.run([sys.executable, "-m", "ftplan", "plan", "--model", "7b", "--gpus", "8xA800", "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


MEMORY_KEYS = {"weights", "gradients", "optimizer", "activations", "other", "total"}
PLAN_KEYS = {"params_total", "params_trainable", "gpu_memory_bytes", "fits", "memory_per_gpu_bytes"}


def test_plan_table_has_every_method(capsys, monkeypatch) -> None:
    code, out, err = run(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "8xA800")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    for method in ("full", "lora", "qlora"):
        # a ranking row reads: rank, method, plan name, ...
        assert any(len(r) > 2 and r[0].isdigit() and r[1] == method for r in rows), f"no {method} row in\n{out}"


def test_plan_json_contract(plan_json: dict) -> None:
    assert plan_json["candidates_evaluated"] >= 5_000  # one optimizer (the user's) unless --optimizers
    plans = plan_json["plans"]
    assert {p["config"]["method"] for p in plans} == {"full", "lora", "qlora"}
    for p in plans:
        assert set(p) >= PLAN_KEYS
        assert set(p["memory_per_gpu_bytes"]) >= MEMORY_KEYS
        mem = p["memory_per_gpu_bytes"]
        assert abs(sum(mem[k] for k in MEMORY_KEYS - {"total"}) - mem["total"]) <= 5  # rounding per key
        assert p["fits"] is True and mem["total"] <= p["gpu_memory_bytes"]
        assert p["params_total"] == 6_738_415_616
        assert 0 < p["params_trainable"] <= p["params_total"]


def test_plan_json_best_first(plan_json: dict) -> None:
    # the plans are a per-method prefix of the list ranked by the time model: fastest first, except that a
    # simpler plan within 1% may go ahead (planner.search.rank), so none is >1% faster than one above it
    # the recommended plan (the fastest with headroom, planner.search.recommend) is listed first
    plans = plan_json["plans"]
    assert plans[0]["name"] == plan_json["recommendation"]["plan"]
    speeds = [p["tokens_per_s"] for p in plans[1:]]
    assert all(b <= a / (1 - TIE_FRACTION) * (1 + 1e-9) for i, a in enumerate(speeds) for b in speeds[i + 1:]), speeds


def test_plan_optimizers_option(capsys, monkeypatch) -> None:
    code, out, err = run(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "8xA800", "--method", "lora",
                         "--optimizers", "adamw,adamw_8bit", "--top", "50", "--json")
    assert code == 0, err
    assert {p["config"]["optimizer"] for p in json.loads(out)["plans"]} <= {"adamw", "adamw_8bit"}
    code, _, err = run(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "8xA800", "--optimizers", "adam")
    assert code == 2 and "--optimizers: unknown value 'adam'" in err


def test_plan_json_method_narrowing(capsys, monkeypatch) -> None:
    code, out, _ = run(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "8xA800", "--method", "qlora",
                       "--json")
    assert code == 0
    assert {p["config"]["method"] for p in json.loads(out)["plans"]} == {"qlora"}


def test_estimate_json_keys(capsys, monkeypatch) -> None:
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--method", "full",
                         "--zero", "3", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= PLAN_KEYS
    assert set(data["memory_per_gpu_bytes"]) >= MEMORY_KEYS
    assert data["params_trainable"] == data["params_total"] == 6_738_415_616
    assert data["gpu_memory_bytes"] == 80 * 2**30


def test_estimate_table(capsys, monkeypatch) -> None:
    code, out, _ = run(capsys, monkeypatch, "estimate", "--model", "llama-3-8b", "--gpus", "2x8xH100",
                       "--method", "lora", "--fsdp", "full_shard")
    assert code == 0
    assert "total" in out and "activations" in out


def test_models_and_gpus(capsys, monkeypatch) -> None:
    code, out, _ = run(capsys, monkeypatch, "models", "--json")
    assert code == 0
    names = {m["name"] for m in json.loads(out)}
    assert {"llama-2-7b", "llama-3.1-405b", "mixtral-8x7b", "chatglm3-6b", "bloom-7b1"} <= names
    code, out, _ = run(capsys, monkeypatch, "gpus", "--json")
    assert code == 0
    assert {"A800", "A100-80G", "A100-40G", "H100", "H800", "RTX4090", "A10G", "T4"} <= {g["name"] for g in
                                                                                        json.loads(out)}
    for command in ("models", "gpus"):
        code, out, _ = run(capsys, monkeypatch, command)
        assert code == 0 and out.strip()


def write_config(path: Path) -> None:
    path.write_text(json.dumps({"model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
                                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "max_position_embeddings": 4096}))


@pytest.mark.parametrize("as_dir", [False, True], ids=["config.json", "model-dir"])
def test_local_config_as_model(tmp_path: Path, capsys, monkeypatch, as_dir: bool) -> None:
    model_dir = tmp_path / "tiny-llama"
    model_dir.mkdir()
    write_config(model_dir / "config.json")
    target = model_dir if as_dir else model_dir / "config.json"
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", str(target), "--gpus", "1xA800", "--json")
    assert code == 0, err
    # 2 x 1000 x 64 embeddings + 2 layers x (4 x 64^2 + 3 x 64 x 128 + 2 x 64) + 64
    assert json.loads(out)["params_total"] == 2 * 1000 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 128) + 64


def test_python_dash_m_entry_point_error() -> None:
    done = subprocess.run([sys.executable, "-m", "ftplan", "plan", "--model", "llama-2-7x", "--gpus", "8xA800"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# --- bad input: one line on stderr, exit code 2, no traceback -----------------------------------------

BASE = ("estimate", "--model", "7b", "--gpus", "8xA800")
BAD = {
    "unknown-model": (("plan", "--model", "llama-2-7x", "--gpus", "8xA800"), "did you mean llama-2-7b"),
    "unknown-gpu": (("estimate", "--model", "7b", "--gpus", "8xA8000"), "did you mean"),
    "malformed-gpus": (("estimate", "--model", "7b", "--gpus", "8@A800"), "malformed"),
    "zero-gpus": (("plan", "--model", "7b", "--gpus", "0xA800"), "at least 1"),
    "gpus-not-whole-nodes": (("estimate", "--model", "7b", "--gpus", "12xA800"), "whole number"),
    "tp-does-not-divide-gpus": ((*BASE, "--tp", "3"), "does not divide 8 GPUs"),
    "tp-does-not-divide-heads": (("estimate", "--model", "qwen2.5-7b", "--gpus", "8xA800", "--zero", "1",
                                  "--tp", "8"), "must divide the attention heads (28)"),
    "pp-exceeds-layers": (("estimate", "--model", "llama-3.2-1b", "--gpus", "4x8xA800", "--zero", "1",
                           "--pp", "32"), "exceeds the 16 layers"),
    "micro-batch-zero": ((*BASE, "--micro-batch", "0"), "--micro-batch"),
    "seq-len-negative": ((*BASE, "--seq-len", "-5"), "--seq-len"),
    "grad-accum-zero": ((*BASE, "--grad-accum", "0"), "--grad-accum"),
    "lora-r-zero": ((*BASE, "--lora-r", "0"), "--lora-r"),
    "global-batch-zero": (("plan", "--model", "7b", "--gpus", "8xA800", "--global-batch", "0"), "--global-batch"),
    "host-memory-negative": ((*BASE, "--zero", "3", "--offload", "all", "--host-memory", "-1"), "--host-memory"),
    "nvme-negative": ((*BASE, "--nvme", "-5"), "--nvme"),
    "micro-batch-not-int": ((*BASE, "--micro-batch", "abc"), "--micro-batch"),
    "zero-out-of-range": ((*BASE, "--zero", "4"), "--zero"),
    "seq-len-beyond-positions": (("plan", "--model", "7b", "--gpus", "8xA800", "--seq-len", "999999"),
                                 "exceeds the 4096 positions"),
    "zero-with-fsdp": ((*BASE, "--zero", "2", "--fsdp", "full_shard"), "exclusive"),
    "offload-without-zero-or-fsdp": ((*BASE, "--offload", "optimizer"), "offload needs"),
    "param-offload-without-zero3": ((*BASE, "--zero", "2", "--offload", "all"), "ZeRO-3"),
    "fsdp-optimizer-only-offload": ((*BASE, "--fsdp", "full_shard", "--offload", "optimizer"), "--offload all"),
    "nvme-without-offload": ((*BASE, "--offload-device", "nvme"), "nvme"),
    "sequence-parallel-without-tp": ((*BASE, "--sequence-parallel"), "TP > 1"),
    "pipeline-with-zero3": ((*BASE, "--zero", "3", "--pp", "2"), "ZeRO-0/1"),
    "quant-without-qlora": ((*BASE, "--method", "full", "--quant", "nf4"), "--method qlora"),
    "unknown-lora-target": ((*BASE, "--lora-targets", "foo"), "not a linear module"),
    "bf16-on-t4": (("estimate", "--model", "7b", "--gpus", "8xT4"), "bf16"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(case: str, capsys, monkeypatch) -> None:
    args, fragment = BAD[case]
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert fragment in lines[0]


def _bad_configs(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "incomplete.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (tmp / "not-json.json").write_text("{ not json")
    (tmp / "list.json").write_text("[1, 2]")
    (tmp / "bad-type.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 1000, "hidden_size": "64",
                                                   "intermediate_size": 128, "num_hidden_layers": 2,
                                                   "num_attention_heads": 4}))
    ok = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4}
    (tmp / "kv-not-int.json").write_text(json.dumps({**ok, "num_key_value_heads": "x"}))
    (tmp / "kv-not-dividing.json").write_text(json.dumps({**ok, "num_key_value_heads": 3}))
    (tmp / "unsupported.json").write_text(json.dumps({"model_type": "t5", "d_model": 512}))
    (tmp / "binary.json").write_bytes(b"\xff\xfe\x00\x81")
    (tmp / "unreadable").mkdir()
    (tmp / "unreadable" / "config.json").mkdir()  # a directory where the file should be
    (tmp / "empty-dir").mkdir()
    return {"missing-file": (tmp / "nope" / "config.json", "no such file"),
            "incomplete": (tmp / "incomplete.json", "lacks"),
            "not-json": (tmp / "not-json.json", "not valid JSON"),
            "not-an-object": (tmp / "list.json", "JSON object"),
            "bad-type": (tmp / "bad-type.json", "positive integer"),
            "unsupported-model-type": (tmp / "unsupported.json", "not supported"),
            "optional-field-not-int": (tmp / "kv-not-int.json", "'num_key_value_heads' must be a positive integer"),
            "kv-heads-not-dividing": (tmp / "kv-not-dividing.json", "do not divide 4 attention heads"),
            "not-utf8": (tmp / "binary.json", "cannot read"),
            "unreadable": (tmp / "unreadable", "cannot read"),
            "dir-without-config": (tmp / "empty-dir", "no such file")}


CONFIG_CASES = ["missing-file", "incomplete", "not-json", "not-an-object", "bad-type", "unsupported-model-type",
                "optional-field-not-int", "kv-heads-not-dividing", "not-utf8", "unreadable", "dir-without-config"]


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_json(case: str, tmp_path: Path, capsys, monkeypatch) -> None:
    path, fragment = _bad_configs(tmp_path)[case]
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", str(path), "--gpus", "8xA800")
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0]


def test_estimate_help_groups_its_options_in_panels(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """rich_help_panel (ftplan/options.py): the options of a long command read in groups at 80 columns."""
    code, out, _ = run(capsys, monkeypatch, "estimate", "--help")
    assert code == 0
    panels = [p for p in ("Model", "Hardware", "Method", "Parallelism", "Batch", "Memory", "Output")
              if f"─ {p} ─" in out]
    assert panels == ["Model", "Hardware", "Method", "Parallelism", "Batch", "Memory", "Output"]
    assert out.index("--zero") > out.index("─ Parallelism ─") > out.index("--lora-r")
