"""litgpt's own model code, measured op by op on this CPU, against planner.activations.litgpt_layer_bytes_per_token
and against litgpt's published resource table (tutorials/resource-tables.md, lit-gpt 8641822).

Opt-in: set LITGPT_SRC to a folder holding lit-gpt 8641822's lit_gpt/ package (e.g.
`git --git-dir=<litgpt.git> archive 8641822 lit_gpt | tar -x -C DIR`); nothing of litgpt is copied here, and
without it the tests skip. lit_gpt imports lightning only for helpers the model does not need: its
`lightning_utilities` RequirementCache (asked whether flash-attn is installed) is answered "no" and lit_gpt.utils
is reduced to the three functions the model and the loss call, in this process only.

What is measured: a 2-layer GPT of that commit with LoRA as finetune/lora.py sets it (r 8, alpha 16, dropout 0.05,
query and value of the fused qkv), bf16 weights and inputs as Fabric's bf16-true leaves them, CUDA's dropout
(native_dropout's bool mask, profiler.dryrun.emulate_cuda_dropout). Every autograd node reachable from the loss is
asked for its `_saved_*` tensors; each storage counts once, parameters left out; a saved-tensor hook records which
decoder layer was running when it was packed.
"""

from __future__ import annotations

import os
import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest

SRC = os.environ.get("LITGPT_SRC", "")
pytestmark = pytest.mark.skipif(not (SRC and (Path(SRC) / "lit_gpt" / "lora.py").is_file()),
                                reason="LITGPT_SRC (lit-gpt 8641822's lit_gpt/) not given")


def _import_lit_gpt() -> types.ModuleType:
    from profiler.litgpt_source import import_lit_gpt

    return import_lit_gpt(Path(SRC))


def _saved_by_layer(config_kw: dict, tokens: int) -> tuple[dict, float, int]:
    """(layer 1's saved storages: address -> (node.attr, bytes), bytes per token outside the layers at backward's
    start with Fabric's fp32 logits, hidden size)."""
    import torch

    from profiler.dryrun import emulate_cuda_dropout

    lora = _import_lit_gpt()
    kw = dict(config_kw)
    name = kw.pop("from_name", None)
    make = lora.Config if name is None else (lambda **k: lora.Config.from_name(name, **k))
    cfg = make(**kw, r=8, alpha=16, dropout=0.05, to_query=True, to_key=False, to_value=True)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # Fabric's bf16-true init_module
    model = lora.GPT(cfg)
    torch.set_default_dtype(torch.float32)
    lora.mark_only_lora_as_trainable(model)
    model = model.to(torch.bfloat16)
    emulate_cuda_dropout(model)
    model.max_seq_length = tokens  # finetune/lora.py, outside Fabric's forward context
    model.train()
    tags: dict[int, int | None] = {}
    current: list[int | None] = [None]
    for i, block in enumerate(model.transformer.h):
        block.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i))
        block.register_forward_hook(lambda m, a, o: current.__setitem__(0, None))

    def pack(t: torch.Tensor) -> torch.Tensor:
        tags.setdefault(t.untyped_storage().data_ptr(), current[0])
        return t

    idx = torch.randint(0, cfg.vocab_size, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.set_default_dtype(torch.bfloat16)  # Fabric's forward context
        logits = model(idx, lm_head_chunk_size=128)
        torch.set_default_dtype(torch.float32)
        logits = [chunk.float() for chunk in logits]  # Fabric's HalfPrecision.convert_output: the default dtype
        logits[-1] = logits[-1][..., :-1, :]
        loss = lora_utils_loss(logits, idx[..., 1:])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved: dict[int, tuple[str, int]] = {}
    outside: dict[int, int] = {}
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except RuntimeError:
                continue
            for t in value if isinstance(value, tuple | list) else [value]:
                if not isinstance(t, torch.Tensor) or not t.numel():
                    continue
                ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if ptr in params:
                    continue
                layer = tags.get(ptr)
                if layer == 1:
                    saved.setdefault(ptr, (f"{type(node).__name__}.{attr}", nbytes))
                elif layer is None:
                    outside.setdefault(ptr, nbytes)
        stack.extend(n for n, _ in node.next_functions)
    for chunk in logits:
        outside.setdefault(chunk.untyped_storage().data_ptr(), chunk.untyped_storage().nbytes())
    loss.backward()
    return saved, sum(outside.values()) / tokens, cfg.n_embd


def lora_utils_loss(logits: list, targets: object) -> object:
    return sys.modules["lit_gpt.utils"].chunked_cross_entropy(logits, targets)


LLAMA_SHAPE = dict(name="Llama-2-shape", block_size=4096, vocab_size=32000, padding_multiple=64, n_layer=2,
                   n_head=4, n_embd=512, rotary_percentage=1.0, parallel_residual=False, bias=False,
                   _norm_class="RMSNorm", _mlp_class="LLaMAMLP", intermediate_size=1376)


def test_litgpt_layer_saves_what_the_planner_counts() -> None:
    from planner.activations import LayerTraining, litgpt_layer_bytes_per_token
    from planner.choices import Attn
    from planner.models import spec_from_hf_config

    tokens = 256
    saved, _, h = _saved_by_layer(LLAMA_SHAPE, tokens)
    by_op: dict[str, float] = defaultdict(float)
    for op, nbytes in saved.values():
        by_op[op] += nbytes / tokens / h
    measured = sum(by_op.values())
    spec = spec_from_hf_config({"model_type": "llama", "hidden_size": 512, "intermediate_size": 1376,
                                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                                "vocab_size": 32000, "max_position_embeddings": 4096}, name="llama-shape")
    train = LayerTraining(weights=False, lora_targets=frozenset({"q_proj", "v_proj"}), lora_dropout=True,
                          mixed=False)
    planned = litgpt_layer_bytes_per_token(spec, act_bytes=2, attn=Attn.sdpa, train=train) / h
    print(f"[litgpt saved] layer 1: measured {measured:.3f} h per token, planned {planned:.3f} h; "
          + ", ".join(f"{op} {v:.2f}" for op, v in sorted(by_op.items(), key=lambda kv: -kv[1])))
    # the measured rest: per-layer constants (zero_pad's int64 index, the conv's input and weight-free saves)
    assert planned <= measured <= planned * 1.01
    assert by_op["ScaledDotProductFlashAttentionForCpuBackward0._saved_value"] == pytest.approx(6.0)  # fused qkv
    assert by_op["IndexCopyBackward0._saved_source"] == pytest.approx(4.0)


# (lit-gpt config name, longest Alpaca sample in its tokens, published "Max GPU RAM" at micro-batch 1, 2, 4 in GB)
PUBLISHED = [("phi-1_5", 1044, (4.82, 6.76, 10.68)), ("stablelm-base-alpha-3b", 1034, (9.69, 12.10, 16.92))]


@pytest.mark.parametrize(("name", "tokens", "peaks"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_measured_code_predicts_the_published_slope(name: str, tokens: int, peaks: tuple[float, ...]) -> None:
    """The same count on the table's non-Llama models: the bytes one more sample adds at the longest sequence
    (all layers' saved tensors + the fp32 logits and loss outside them) against the published slope."""
    full = _import_lit_gpt().Config.from_name(name)
    saved, outside_per_token, h = _saved_by_layer({"from_name": name, "n_layer": 2}, 128)
    per_token_layer = sum(nbytes for _, nbytes in saved.values()) / 128
    predicted = (full.n_layer * per_token_layer + outside_per_token) * tokens / 1e9
    published = ((peaks[1] - peaks[0]) + (peaks[2] - peaks[1]) / 2) / 2
    print(f"[litgpt saved] {name}: {per_token_layer / h:.2f} h per token and layer, {outside_per_token:.0f} B per "
          f"token outside; one sample of {tokens} tokens: predicted {predicted:.3f} GB, published {published:.3f} GB")
    assert predicted == pytest.approx(published, rel=0.02)
