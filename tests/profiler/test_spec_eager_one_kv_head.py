"""Eager attention at one row and at more (Gemma 3 1B's single key/value head, DeepSeek-V3's MLA), as the spec
derivation fits it (profiler/spec_activations.py EAGER_SHAPES, `fit`, `fit_one_row`), against what a real forward
and backward of a small Gemma 3 and a small DeepSeek-V3 save on the CPU (real tensors, autograd's saved-tensor
hooks, each storage once, parameters and the tensors the model hands every layer left out as the derivation leaves
them out).

torch.matmul folds (batch, heads) into bmm's batch axis with a view at one row and a copy beyond it: transformers'
repeat_kv keeps one key/value head as a stride-0 view, saved once per sample at one row and once per head beyond;
MLA's value, a slice of kv_b_proj's output, is saved at one row as a view that keeps the whole output. Fitted from
one row and two (as before), that step went into the per-layer and per-position terms: negative for Gemma 3 1B
(-176,128 bytes per layer, -368 per token and position in fp32; the planned activations fell as the sequence grew),
nine times the scores' bytes for DeepSeek-V3 (4,608 per position where its 128 heads' fp32 softmax takes 512).
"""

from __future__ import annotations

import pytest
from tiny_moe import DEEPSEEK_V3

pytestmark = pytest.mark.filterwarnings("ignore")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

# Gemma 3 1B's attention (4 query heads, 1 key/value head, query_pre_attn_scalar = head_dim, a sliding window
# shorter than the longest sequence here), small widths
GEMMA3_MQA = {"model_type": "gemma3_text", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
              "query_pre_attn_scalar": 16, "sliding_window": 32, "max_position_embeddings": 512}
HEADS, HEAD_DIM, FP32 = 4, 16, 4


def _real_saved_bytes(raw: dict, batch: int, seq: int) -> int:
    """Bytes autograd saves in the first decoder layer of a real fp32 forward, full fine-tuning, eager attention;
    the backward runs too (what was saved is what it reads)."""
    from torch.utils._pytree import tree_flatten
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(raw["model_type"], **{k: v for k, v in raw.items() if k != "model_type"})
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").train()
    model.enable_input_require_grads()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    handed: set[int] = set()  # what the model hands the layer beside its input (rotary cos/sin, the mask)
    seen: set[int] = set()
    inside = [False]
    saved = [0]

    def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inside[0] = True
        rest = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
        handed.update(t.untyped_storage().data_ptr() for t in tree_flatten(rest)[0] if isinstance(t, torch.Tensor))

    def post(*_: object) -> None:
        inside[0] = False

    layer = model.model.layers[0]
    layer.register_forward_pre_hook(pre, with_kwargs=True)
    layer.register_forward_hook(post)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if inside[0] and key not in params | handed | seen:
            seen.add(key)
            saved[0] += storage.nbytes()
        return t

    tokens = torch.randint(0, raw["vocab_size"], (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=tokens, labels=tokens, use_cache=False).loss
    loss.backward()
    return saved[0]


def _fitted(raw: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(the table fitted from two rows and more, the one-row table) of the first layer, fp32 full fine-tuning."""
    from profiler import spec_activations as sa
    from profiler.spec_derive import reduce_to
    from profiler.spec_structure import build_meta_model, load_config

    loaded = load_config(dict(raw), name="t")
    model = reduce_to(build_meta_model(loaded, name="t"), loaded.config, [0])
    mode = sa.Mode("full_eager", weights=True, attn="eager")
    runs = {}
    for shape in sa.EAGER_SHAPES + sa.EAGER_ONE_ROW_SHAPES:
        prepared = sa.prepare(model, "fp32", mode, "model.layers")
        runs[shape] = sa.run_once(prepared, prepared.model.layers, "fp32", mode, shape, raw["hidden_size"])
    return (sa.fit({s: runs[s] for s in sa.EAGER_SHAPES}, 0),
            sa.fit_one_row({s: runs[s] for s in sa.EAGER_ONE_ROW_SHAPES}, 0))


def _bytes(table: tuple[float, ...], batch: int, seq: int) -> float:
    repl, par, per_position, per_layer = table
    return per_layer + batch * seq * (repl + par) + batch * seq * seq * per_position


@pytest.mark.parametrize(("raw", "rows_minus_one_row", "per_layer"), [
    # one row saves the single key/value head's keys and values once, not once per query head; the per-layer bytes
    # are Gemma's (1 + weight) norm scales: four of the residual width and the q/k norms', in fp32
    (GEMMA3_MQA, 2 * (HEADS - 1) * HEAD_DIM * FP32, FP32 * (4 * GEMMA3_MQA["hidden_size"] + 2 * HEAD_DIM)),
    # MLA (the dense first layer): one row saves the value as a view of kv_b_proj's output, k_nope included
    (DEEPSEEK_V3, -DEEPSEEK_V3["num_attention_heads"] * DEEPSEEK_V3["qk_nope_head_dim"] * FP32, 0),
], ids=["gemma3-one-kv-head", "deepseek-v3-mla"])
def test_the_fits_match_a_real_forward_and_backward(raw: dict, rows_minus_one_row: int, per_layer: int) -> None:
    rows, one_row = _fitted(raw)
    # eager keeps each head's fp32 softmax output
    assert rows[2] == one_row[2] == raw["num_attention_heads"] * FP32
    assert rows[3] == one_row[3] == per_layer
    assert _bytes(rows, 1, 1) - _bytes(one_row, 1, 1) == rows_minus_one_row
    # at lengths and batches the fits never ran (past Gemma's 32-token window)
    for batch, seq in ((2, 64), (3, 96)):
        assert _bytes(rows, batch, seq) == _real_saved_bytes(raw, batch, seq), (batch, seq)
    for seq in (64, 96):
        assert _bytes(one_row, 1, seq) == _real_saved_bytes(raw, 1, seq), seq


def test_the_planner_reads_the_one_row_table_at_one_row() -> None:
    from planner.activations import LayerTraining, derived_layer_bytes_per_token, derived_layer_fixed_bytes
    from planner.choices import Attn
    from planner.models import spec_from_dict
    from profiler.spec_derive import derive

    m = spec_from_dict(derive(dict(GEMMA3_MQA), name="t")["spec"], name="t", source="test")
    seq = 96
    for batch in (1, 2):
        train = LayerTraining(weights=True, mixed=False, one_row=batch == 1)
        planned = (derived_layer_bytes_per_token(m, act_bytes=FP32, attn=Attn.eager, train=train, seq_len=seq)
                   * batch * seq + derived_layer_fixed_bytes(m, act_bytes=FP32, attn=Attn.eager, train=train))
        assert planned == _real_saved_bytes(GEMMA3_MQA, batch, seq), batch


def test_with_two_key_value_heads_one_row_is_no_different() -> None:
    rows, one_row = _fitted({**GEMMA3_MQA, "num_key_value_heads": 2})
    assert rows == one_row
