"""What torch.compile (Inductor, default min-cut partitioner) saves for backward in a Llama decoder layer
and in torchtune's chunked cross-entropy, against eager PyTorch. The planner's `--compile` model
(planner/compiled_activations.py) is read off this script's listing.

Method: a small transformers LlamaForCausalLM built from a config (no download), bf16 weights (torchtune's
bf16-true), SDPA, 3 sequences of 100 tokens. One decoder layer runs under
torch.autograd.graph.saved_tensors_hooks, eager and then compiled per layer as torchtune's
`training.compile_model` does (torchtune/training/_compile.py); every tensor autograd saves, or the
compiled graph saves through ctx.save_for_backward, is recorded once per storage. Parameters (and views of
them) are left out: they are weights, not activations. The listing prints each saved tensor's shape,
dtype and bytes, then bytes per token. Cases: full fine-tuning (every weight trains), LoRA (frozen base,
peft LoRA r 8 on every linear, dropout 0, as torchtune's LoRA recipes), and the loss: torchtune's
CEWithChunkedOutputLoss.compute_cross_entropy (upcast one chunk of bf16 logits to fp32, then
cross_entropy), eager and compiled as torchtune's `training.compile_loss` compiles it.

Usage: python benchmarks/compile_saved.py   (about 3-5 minutes on 2 cores: Inductor compiles C++)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

HIDDEN, INTERMEDIATE, HEADS, VOCAB = 192, 520, 3, 1000
BATCH, SEQ = 3, 100


def saved_tensors(fn: Callable[[], Any], params: list[torch.Tensor]) -> list[tuple[tuple[int, ...], str, int]]:
    """(shape, dtype, bytes) of every non-parameter storage saved for backward while `fn` runs."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, tuple[tuple[int, ...], str, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = (tuple(t.shape), str(t.dtype).removeprefix("torch."), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.float().sum().backward()  # the saved set must also be enough for backward
    return sorted(seen.values(), key=lambda v: (-v[2], v[0]))


def model(lora: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=1,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=SEQ,
                      attn_implementation="sdpa")
    m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if lora:
        from peft import LoraConfig, get_peft_model

        m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    return m


def layer_case(lora: bool, compiled: bool) -> list[tuple[tuple[int, ...], str, int]]:
    m = model(lora)
    inner = m.get_base_model() if lora else m
    layer = inner.model.layers[0]
    hidden = torch.randn(BATCH, SEQ, HIDDEN, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(SEQ)[None]
    pe = inner.model.rotary_emb(hidden, pos)
    run = torch.compile(layer) if compiled else layer
    params = list(m.parameters())
    return saved_tensors(lambda: run(hidden, position_embeddings=pe, attention_mask=None, position_ids=pos), params)


def chunk_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """torchtune CEWithChunkedOutputLoss.compute_cross_entropy (torchtune/modules/loss/ce_chunked_output_loss.py)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")


def loss_case(compiled: bool) -> list[tuple[tuple[int, ...], str, int]]:
    torch.manual_seed(0)
    logits = torch.randn(BATCH * SEQ, VOCAB, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, VOCAB, (BATCH * SEQ,))
    fn = torch.compile(chunk_cross_entropy) if compiled else chunk_cross_entropy
    return saved_tensors(lambda: fn(logits, labels), [])


def report(name: str, rows: list[tuple[tuple[int, ...], str, int]]) -> float:
    tokens = BATCH * SEQ
    total = sum(r[2] for r in rows)
    print(f"{name}: {total} bytes saved, {total / tokens:.1f} bytes per token")
    for shape, dtype, nbytes in rows:
        print(f"    {str(shape):>18} {dtype:>9} {nbytes:>9}")
    return total / tokens


def main() -> int:
    print(f"torch {torch.__version__}; Llama layer h={HIDDEN} i={INTERMEDIATE} heads={HEADS} "
          f"(d={HIDDEN // HEADS}), bf16, SDPA, {BATCH}x{SEQ} tokens; vocabulary {VOCAB}")
    for label, lora in (("full", False), ("lora", True)):
        eager = report(f"layer {label} eager", layer_case(lora, compiled=False))
        comp = report(f"layer {label} compiled", layer_case(lora, compiled=True))
        print(f"  layer {label}: compiled/eager = {comp / eager:.3f}  "
              f"(per token: eager {eager / HIDDEN:.2f} h-bytes, compiled {comp / HIDDEN:.2f} h-bytes)")
    eager = report("chunk cross-entropy eager", loss_case(compiled=False))
    comp = report("chunk cross-entropy compiled", loss_case(compiled=True))
    print(f"  loss: eager {eager / VOCAB:.2f} V-bytes per token, compiled {comp / VOCAB:.2f} V-bytes per token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
