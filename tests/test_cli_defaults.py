"""Options the user did not give are ftplan's to choose, as transformers and peft would run them, and said in one note
(the rich report, the JSON's `notes`, the emitted files' headers); the same choice given explicitly is the user's,
kept, and refused in one line (exit 2) where it cannot run:

- gpt-oss has no SDPA path: without --attn every command plans eager, what transformers picks (estimate, scale,
  emit, serve's API, --from FILE); `--attn sdpa` is refused;
- peft's LoRA fails on Llama 4's router: without --lora-targets, all-linear less the router, named one by one in
  plan.json and llamafactory.yaml; `--lora-targets all` or one naming the router is refused;
- DeepSeek-V3's fused experts: peft runs them (its spec no longer says otherwise), so LoRA plans.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import run

from ftplan.answers import answer

LLAMA4 = "llama-4-scout-17b-16e"
LLAMA4_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EAGER_NOTE = "attention eager: GptOssForCausalLM has no sdpa path in transformers"
TARGETS_NOTE = "LoRA targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj: peft's all-linear without router"


def _estimate_json(capsys, monkeypatch, *args: str) -> dict:
    code, out, err = run(capsys, monkeypatch, "estimate", *args, "--device-fit", "none", "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_gpt_oss_estimates_eager_without_attn(capsys, monkeypatch, method: str) -> None:
    data = _estimate_json(capsys, monkeypatch, "--model", "gpt-oss-20b", "--gpus", "8xH100", "--zero", "3",
                          "--method", method)
    assert data["config"]["attn"] == "eager"
    assert [n for n in data["notes"] if n.startswith(EAGER_NOTE)]
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", "gpt-oss-20b", "--gpus", "8xH100", "--zero", "3",
                         "--method", method, "--device-fit", "none")
    assert code == 0, err
    assert "attention eager: GptOssForCausalLM has no sdpa path" in " ".join(out.split())


def test_gpt_oss_refuses_the_sdpa_the_user_names(capsys, monkeypatch) -> None:
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", "gpt-oss-20b", "--gpus", "8xH100", "--attn",
                         "sdpa")
    assert code == 2 and not out
    assert err.count("\n") == 1 and "gpt-oss-20b has no sdpa attention in transformers" in err


def test_gpt_oss_scales(tmp_path: Path, capsys, monkeypatch) -> None:
    code, out, err = run(capsys, monkeypatch, "scale", "--model", "gpt-oss-20b", "--gpu", "H100", "--max-gpus", "8",
                         "--device-fit", "none", "--out", str(tmp_path), "--json")
    assert code == 0, err
    assert all(row["fitting"] for row in json.loads(out)["rows"])


def test_serve_api_and_from_file_resolve_the_attention(tmp_path: Path, capsys, monkeypatch) -> None:
    api = answer("estimate", {"model": "gpt-oss-20b", "gpus": "8xH100", "zero": 3}).json()
    assert api["config"]["attn"] == "eager" and [n for n in api["notes"] if n.startswith(EAGER_NOTE)]
    # a LLaMA-Factory file that names no attention (flash_attn: auto, its default): transformers picks
    setup = tmp_path / "gpt_oss_lora.yaml"
    setup.write_text("model_name_or_path: gpt-oss-20b\nstage: sft\nfinetuning_type: lora\nflash_attn: auto\n")
    data = _estimate_json(capsys, monkeypatch, "--from", str(setup), "--gpus", "8xH100")
    assert data["config"]["attn"] == "eager"
    setup.write_text(setup.read_text().replace("flash_attn: auto", "flash_attn: sdpa"))
    code, _, err = run(capsys, monkeypatch, "estimate", "--from", str(setup), "--gpus", "8xH100")
    errors = [line for line in err.splitlines() if line.startswith("ftplan: error:")]
    assert code == 2 and len(errors) == 1 and "gpt-oss-20b has no sdpa attention" in errors[0]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_llama4_plans_all_linear_without_the_router(capsys, monkeypatch, method: str) -> None:
    data = _estimate_json(capsys, monkeypatch, "--model", LLAMA4, "--gpus", "8xH100", "--zero", "3", "--method",
                          method)
    assert data["config"]["lora_targets"] == LLAMA4_TARGETS
    assert [n for n in data["notes"] if n.startswith(TARGETS_NOTE)]


@pytest.mark.parametrize("targets", ["all", "q_proj,router"])
def test_llama4_refuses_the_router_the_user_names(capsys, monkeypatch, targets: str) -> None:
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", LLAMA4, "--gpus", "8xH100", "--lora-targets",
                         targets)
    assert code == 2 and not out
    assert err.count("\n") == 1 and f"peft's LoRA fails on router of {LLAMA4}" in err


def test_llama4_emitted_files_name_the_planned_targets(tmp_path: Path, capsys, monkeypatch) -> None:
    code, _, err = run(capsys, monkeypatch, "estimate", "--model", LLAMA4, "--gpus", "4x8xH200", "--zero", "3",
                       "--device-fit", "none", "--emit", str(tmp_path / "est"))
    assert code == 0, err
    # `ftplan emit` from the plan.json writes the same files
    code, _, err = run(capsys, monkeypatch, "emit", str(tmp_path / "est" / "plan.json"), str(tmp_path / "again"))
    assert code == 0, err
    for folder in ("est", "again"):
        plan = json.loads((tmp_path / folder / "plan.json").read_text())
        assert plan["config"]["lora_targets"] == LLAMA4_TARGETS
        text = (tmp_path / folder / "llamafactory.yaml").read_text()
        assert yaml.safe_load(text)["lora_target"] == ",".join(LLAMA4_TARGETS)
        assert any(line.startswith(f"# {TARGETS_NOTE}") for line in text.splitlines())
    from runner.emit import load_plan
    from runner.model import lora_target_modules

    assert lora_target_modules(load_plan(tmp_path / "again" / "plan.json")) == LLAMA4_TARGETS


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_deepseek_v3_lora_is_planned(capsys, monkeypatch, method: str) -> None:
    data = _estimate_json(capsys, monkeypatch, "--model", "deepseek-v3", "--gpus", "8xH100", "--zero", "3",
                          "--method", method)
    assert data["config"]["lora_targets"] == ["all"] and data["config"]["lora_dropout"] == 0.0
    code, out, err = run(capsys, monkeypatch, "plan", "--model", "deepseek-v3", "--gpus", "4x8xH200", "--method",
                         method, "--device-fit", "none", "--json")
    assert code == 0, err
    assert json.loads(out)["plans"]
