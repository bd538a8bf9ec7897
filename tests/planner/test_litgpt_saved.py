"""litgpt's own model code (--litgpt): the tensors lit-gpt 8641822's LoRA Block saves, and Fabric's fp32 logits.

The per-layer figures were measured op by op on this CPU (torch 2.13, CUDA's dropout emulated with
native_dropout's bool mask): a 2-layer Llama-2-7B-shaped GPT of lit-gpt 8641822 (lit_gpt/lora.py, LoRA r 8 on the
query and value of the fused qkv, dropout 0.05, bf16 weights and inputs), every autograd node's saved tensors
walked from the loss and counted once per storage, layer 1 only, 256 tokens, parameters left out:

    fused qkv output kept by SDPA's saved v   6 h      MLP: SiLU input, SiLU output, up output  3 x 5.375 h
    q and k after RoPE + cat                  2 h + 2 h   index_copy source (zero_pad)          4 h
    SDPA output                               2 h      RMSNorm inputs (16-bit)                   2 h + 2 h
    LoRA dropout output (lora_A's input)      2 h      dropout mask (bool)                       1 h
    SDPA log-sum-exp, zero-pad index, conv input: 0.09 h at 256 tokens             total 39.24 h

against 38.1 h for transformers' LlamaDecoderLayer with peft on q_proj and v_proj (planner.activations
hf_layer_bytes_per_token). The same measurement on phi-1.5 (29.16 h, h 2048) and StableLM-Alpha-3B (29 h) with
Fabric's fp32 logits (8 V per token outside the layers) predicts the resource table's per-sample slopes (1.95 GB
and 2.41 GB per extra sample) within 1.2%.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.activations import LayerTraining, hf_layer_bytes_per_token, litgpt_layer_bytes_per_token
from planner.build import build_config
from planner.choices import Attn, Method, Precision
from planner.memory import memory_per_gpu
from planner.memory_knobs import (
    LITGPT_CHUNK_TOKENS,
    final_norm_saving_per_token,
    held_output_bytes_per_logit,
    layer_training,
    litgpt_layer_delta_per_token,
    litgpt_loss_bytes,
)

MEASURED_LAYER_H = 39.24  # h-bytes per token, the CPU measurement above (layer 1 of 2, 256 tokens)
TRANSFORMERS_LAYER_H = 38.125  # 22 h + 6 i, i = 2.6875 h (Llama-2-7B)


def _cfg(**kw):
    base = dict(model="llama-2-7b", gpus="1xA100-40G", method=Method.lora, lora_r=8, lora_alpha=16,
                lora_targets="q_proj,v_proj", precision=Precision.bf16_true, seq_len=1304, attn=Attn.sdpa,
                cross_entropy="chunked", litgpt=True)
    return build_config(**{**base, **kw})


def test_litgpt_layer_is_the_measured_saved_set() -> None:
    cfg = _cfg()
    m, train = cfg.model, layer_training(cfg)
    h, i, a = m.hidden_size, m.intermediate_size, m.num_heads
    got = litgpt_layer_bytes_per_token(m, act_bytes=2, attn=Attn.sdpa, train=train)
    # norms 2 x 2h; fused qkv 6h + q 2h + k 2h + output 2h + lse 4a; dropout 3h + index_copy source 4h; MLP 6i
    assert got == 4 * h + 12 * h + 4 * a + 7 * h + 6 * i
    assert got / h == pytest.approx(MEASURED_LAYER_H, rel=0.003)  # the rest: per-layer constants at 256 tokens
    hf = hf_layer_bytes_per_token(m, act_bytes=2, attn=Attn.sdpa, train=train, seq_len=1304)
    assert hf / h == pytest.approx(TRANSFORMERS_LAYER_H, abs=0.05)
    assert litgpt_layer_delta_per_token(cfg, 2, train) == pytest.approx(got - hf)


def test_litgpt_branches_without_dropout_and_on_every_qkv_part() -> None:
    m = _cfg().model
    h, q = m.hidden_size, m.q_dim
    plain = LayerTraining(weights=False, lora_targets=frozenset({"q_proj", "v_proj"}), lora_dropout=True)
    no_dropout = replace(plain, lora_dropout=False)
    every = replace(plain, lora_targets=frozenset({"q_proj", "k_proj", "v_proj"}))
    base = litgpt_layer_bytes_per_token(m, act_bytes=2, attn=Attn.sdpa, train=plain)
    # lora_A then saves the norm's output itself (e h) instead of the dropout's copy and mask ((e + 1) h)
    assert litgpt_layer_bytes_per_token(m, act_bytes=2, attn=Attn.sdpa, train=no_dropout) == base - h
    # all three adapted: zero_pad returns its input, no index_copy (lit_gpt/lora.py zero_pad)
    assert litgpt_layer_bytes_per_token(m, act_bytes=2, attn=Attn.sdpa, train=every) == base - 2 * 2 * q
    with pytest.raises(ValueError):
        litgpt_layer_bytes_per_token(m, act_bytes=2, attn=Attn.eager, train=plain)


def test_litgpt_head_and_loop() -> None:
    cfg = _cfg()
    v, tokens = cfg.model.vocab_size, 1304
    assert held_output_bytes_per_logit(cfg, 2) == 4.0  # Fabric's convert_output: fp32, held by `logits`
    assert litgpt_loss_bytes(tokens, v) == 4 * v * tokens + 8 * v * LITGPT_CHUNK_TOKENS
    assert final_norm_saving_per_token(cfg, 2) == 2 * cfg.model.hidden_size  # 16-bit RMSNorm input, not fp32


def test_litgpt_adds_what_it_measures_and_leaves_transformers_runs_alone() -> None:
    lit, hf = _cfg(), _cfg(litgpt=False)
    m, tokens = lit.model, 1304
    train = layer_training(lit)
    extra = (litgpt_layer_delta_per_token(lit, 2, train) * tokens * m.num_layers  # layers
             - 2 * m.hidden_size * tokens)  # the final norm's 16-bit input
    gap = memory_per_gpu(lit).allocated - memory_per_gpu(hf).allocated
    loss = 4 * m.vocab_size * tokens + litgpt_loss_bytes(tokens, m.vocab_size)  # held fp32 logits + loss
    assert gap > extra  # the loss region grows too (8 V per token against torchtune's 6.5 V)
    assert gap == pytest.approx(extra + loss - 6.5 * m.vocab_size * tokens, rel=0.02)
    # mixed precision, a full fine-tune, checkpointing: transformers' bookkeeping for the layers
    for kw in (dict(precision=Precision.bf16_mixed), dict(method=Method.full), dict(grad_ckpt="full")):
        cfg = _cfg(**kw)
        assert litgpt_layer_delta_per_token(cfg, 2, layer_training(cfg)) == 0.0
