"""ftplan's default LoRA dropout (0.05) where peft can drop out every target, and 0 where it adapts one as a parameter:
peft 0.21's all-linear puts the fused experts and the router of Qwen3-MoE, Mixtral and DeepSeek-V3 under its
ParamWrapper (peft/utils/transformers_weight_conversion.py _convert_peft_config_moe), which refuses lora_dropout > 0
(peft/tuners/lora/layer.py ParamWrapper.__init__). A plan that leaves --lora-dropout unset gets a plan without
dropout, said in its report and in the emitted LLaMA-Factory file; a dropout the user gives keeps the one-line
refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from planner.build import build_config
from planner.errors import PlanError
from planner.params import lora_dropout_note, wrapped_lora_targets
from planner.strategy import LORA_DROPOUT, Attn, FsdpStrategy, Method

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("model", "dropout"), [
    ("qwen3-30b-a3b", 0.0), ("mixtral-8x7b", 0.0), ("deepseek-v3", 0.0),  # experts and router wrapped
    ("gpt-oss-20b", LORA_DROPOUT),  # its experts and router are not nn.Linear: all-linear leaves them out
    ("qwen3-8b", LORA_DROPOUT), ("llama-2-7b", LORA_DROPOUT),
])
def test_unset_dropout_resolves_per_target(model: str, dropout: float) -> None:
    cfg = build_config(model=model, gpus="8xH100", fsdp=FsdpStrategy.full_shard, seq_len=1024, attn=Attn.flash)
    assert cfg.lora_dropout == dropout
    assert (lora_dropout_note(cfg.model, cfg.lora_targets, cfg.lora_dropout) is not None) == (dropout == 0.0)


def test_attention_only_targets_keep_the_default_dropout() -> None:
    cfg = build_config(model="qwen3-30b-a3b", gpus="8xH100", fsdp=FsdpStrategy.full_shard, seq_len=1024,
                       lora_targets="q_proj,v_proj")
    assert cfg.lora_dropout == LORA_DROPOUT and not wrapped_lora_targets(cfg.model, cfg.lora_targets)


def test_a_dropout_the_user_gives_is_refused_on_wrapped_targets() -> None:
    with pytest.raises(PlanError, match="refuse lora_dropout > 0"):
        build_config(model="qwen3-30b-a3b", gpus="8xH100", fsdp=FsdpStrategy.full_shard, seq_len=1024,
                     lora_dropout=0.05)
    explicit_zero = build_config(model="qwen3-30b-a3b", gpus="8xH100", fsdp=FsdpStrategy.full_shard, seq_len=1024,
                                 lora_dropout=0.0)
    assert explicit_zero.lora_dropout == 0.0
    assert build_config(model="qwen3-8b", gpus="8xH100", lora_dropout=0.1, seq_len=1024).lora_dropout == 0.1
    # a full fine-tune never meets the adapter's dropout
    assert build_config(model="qwen3-30b-a3b", gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard,
                        seq_len=1024).method is Method.full


def test_cli_plans_and_emits_without_dropout_and_refuses_a_given_one(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "ftplan", "estimate", "-m", "qwen3-30b-a3b", "-g", "8xH100", "--fsdp", "full_shard",
            "--seq-len", "1024"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    ok = subprocess.run([*base, "--emit", str(tmp_path / "plan")], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "LoRA dropout 0: peft adapts experts.gate_up_proj" in ok.stdout
    lf = (tmp_path / "plan" / "llamafactory.yaml").read_text()
    assert "lora_dropout: 0.0" in lf and "# LoRA dropout 0: peft adapts" in lf
    refused = subprocess.run([*base, "--lora-dropout", "0.05"], capture_output=True, text=True, env=env, cwd=REPO,
                             timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "refuse lora_dropout > 0" in refused.stderr


def test_peft_refuses_dropout_on_the_wrapped_experts_of_all_linear() -> None:
    """The premise, on peft itself: all-linear on a (small) Qwen3-MoE adapts the fused experts as parameters and
    refuses dropout there, and takes lora_dropout 0."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from profiler.spec_structure import build_meta_model, load_config

    raw = {"model_type": "qwen3_moe", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
           "moe_intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2}

    def model():  # noqa: ANN202
        return build_meta_model(load_config(raw, name="moe"), name="moe")

    with pytest.raises(ValueError, match="lora_dropout"):
        peft.get_peft_model(model(), peft.LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.05))
    wrapped = peft.get_peft_model(model(), peft.LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    assert wrapped.peft_config["default"].target_parameters
