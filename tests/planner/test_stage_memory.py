"""The rm / dpo stage rules of the memory model: DPO's frozen reference in the policy's dtype (TRL loads it with
dtype=model.dtype), and DPO's LM head as TRL's chunked log-prob head (trl/kernels/chunked_logprob.py)."""

from __future__ import annotations

import pytest

from planner.activations import TRL_TOKEN_TILE, TRL_VOCAB_TILE, trl_logprob_head_bytes
from planner.build import build_config
from planner.memory import memory_per_gpu, stage_params
from planner.strategy import FsdpStrategy, Method, Precision, Stage


@pytest.mark.parametrize(("precision", "zero", "ref_bytes"), [
    (Precision.fp32, None, 4.0),  # DDP, fp32 policy -> fp32 reference
    (Precision.bf16_mixed, None, 4.0),  # DDP mixed precision: fp32 masters, the reference takes their dtype
    (Precision.bf16_true, None, 2.0),
    (Precision.bf16_mixed, 2, 2.0),  # DeepSpeed casts policy and reference to 16 bits
])
def test_dpo_full_reference_in_the_policy_dtype(precision: Precision, zero: int | None, ref_bytes: float) -> None:
    kw = {"model": "llama-2-7b", "gpus": "8xA800", "method": Method.full, "precision": precision, "zero": zero,
          "seq_len": 512}
    sft, dpo = build_config(**kw), build_config(**kw, stage=Stage.dpo)
    total = stage_params(sft, first=True).total
    assert memory_per_gpu(dpo).weights - memory_per_gpu(sft).weights == pytest.approx(ref_bytes * total)


def test_dpo_lora_has_no_reference_copy() -> None:
    kw = {"model": "llama-2-7b", "gpus": "1xA800", "method": Method.lora, "seq_len": 512}
    assert memory_per_gpu(build_config(**kw, stage=Stage.dpo)).weights == memory_per_gpu(build_config(**kw)).weights


def test_trl_head_buffer_is_full_width_and_the_cpu_fallback_adds_tile_temporaries() -> None:
    from planner.models import resolve

    m = resolve("llama-2-7b")  # V = 32000 < 32768: one vocabulary tile
    tokens = 2 * 1024
    cuda = trl_logprob_head_bytes(m, tokens=tokens, compute_bytes=2, triton=True, head_trains=False)
    assert cuda == tokens * TRL_VOCAB_TILE * 2 + 4 * tokens * m.hidden_size
    cpu = trl_logprob_head_bytes(m, tokens=tokens, compute_bytes=2, triton=False, head_trains=False)
    assert cpu - cuda == tokens * m.vocab_size * (7 * 4 + 1)
    # more tokens than one token tile: the buffer stops growing, only the fp32 hidden-state gradient does
    big = trl_logprob_head_bytes(m, tokens=3 * TRL_TOKEN_TILE, compute_bytes=2, triton=True, head_trains=True)
    assert big == (TRL_TOKEN_TILE * TRL_VOCAB_TILE * 2 + 4 * 3 * TRL_TOKEN_TILE * m.hidden_size
                   + 4 * m.vocab_size * m.hidden_size)


def test_runnable_stages() -> None:
    from planner.runnable_stages import stage_refusal, stage_runnable
    from planner.strategy import Optimizer

    base = {"model": "llama-2-7b", "gpus": "8xA800", "seq_len": 512}
    for stage in (Stage.pt, Stage.sft, Stage.rm, Stage.dpo):
        for method in (Method.full, Method.lora, Method.qlora):
            assert stage_runnable(build_config(**base, stage=stage, method=method, optimizer=Optimizer.adamw_8bit))
    ppo = build_config(**{**base, "seq_len": 1024}, stage=Stage.ppo, fsdp=FsdpStrategy.full_shard)
    assert "no PPO trainer" in stage_refusal(ppo) and "verl" in stage_refusal(ppo)
    assert "--tp 1 --pp 1" in stage_refusal(build_config(**base, stage=Stage.dpo, tp=2, zero=1))


def test_trl_rl_stages_with_the_fused_loss_are_ranked_not_run() -> None:
    """TRL's GRPOTrainer / RLOOTrainer refuse Liger's fused linear cross-entropy, so such a plan is marked not
    runnable (the runner refuses it before starting, from the same rule); Liger's layer kernels alone run."""
    from planner.runnable import runnable, unrunnable_reasons
    from planner.strategy import CrossEntropy, Kernels

    for stage in (Stage.grpo, Stage.rloo):
        fused = build_config(model="qwen2.5-7b", gpus="1xH100", method=Method.lora, stage=stage,
                             cross_entropy=CrossEntropy.fused, check=False)
        assert not runnable(fused)
        assert f"TRL's {stage.value.upper()} trainer" in unrunnable_reasons(fused)[0]
        kernels = build_config(model="qwen2.5-7b", gpus="1xH100", method=Method.lora, stage=stage,
                               kernels=Kernels.liger, check=False)
        assert not any("fused linear" in r for r in unrunnable_reasons(kernels))
    sft = build_config(model="qwen2.5-7b", gpus="1xH100", method=Method.lora, cross_entropy=CrossEntropy.fused,
                       check=False)
    assert runnable(sft)
