"""SDPA with packed documents (--doc-len with --attn sdpa): what a transformers Llama really saves for backward when
its position_ids restart inside each row, against planner/activations.py sdpa_packed_mask_bytes_per_token, on the
CPU (torch 2.13, transformers 5.25).

transformers builds one boolean (b, 1, s, s) mask per forward from the packed position_ids (masking_utils
create_causal_mask -> find_packed_sequence_indices; no cache: use_cache=False, as TRL's SFTTrainer passes it);
every layer's SDPA call converts it into an additive mask of the query's dtype and its kernel (the CPU's flash
kernel here, CUDA's memory-efficient kernel there) keeps it; with a mask transformers repeats the keys and values to
every query head instead of passing enable_gqa. Every storage autograd saves during one forward is recorded once
(torch.autograd.graph.saved_tensors_hooks, parameters left out); the packed run minus the unpacked run of the same
tokens, per layer, is the planner's term to the byte."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from planner.activations import (  # noqa: E402
    LayerTraining,
    derived_layer_bytes_per_token,
    hf_layer_bytes_per_token,
    packed_mask,
    sdpa_packed_mask_bytes_per_token,
)
from planner.build import build_config  # noqa: E402
from planner.choices import Attn, GradCkpt, Method, Precision  # noqa: E402
from planner.memory import COLLATOR_MASK_ITEM, collator_mask_bytes, memory_per_gpu  # noqa: E402
from planner.model_layers import AttentionShape  # noqa: E402
from planner.models import resolve, spec_from_hf_config  # noqa: E402

LAYERS, B, S, DOC = 2, 2, 96, 40  # each row: documents of 40, 40 and 16 tokens
HF = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 688,
      "num_hidden_layers": LAYERS, "num_attention_heads": 4, "max_position_embeddings": 256}


class _Calls(TorchDispatchMode):
    """The attention kernels dispatched, with the dtype of the mask each got."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, torch.dtype | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if "scaled_dot_product" in name and "backward" not in name:
            mask = (kwargs or {}).get("attn_mask")
            self.calls.append((name, None if mask is None else mask.dtype))
        return func(*args, **(kwargs or {}))


def _collator_mask(dtype: torch.dtype) -> torch.Tensor:
    """The additive (b, 1, s, s) mask LLaMA-Factory 0.9.5's SFT collator builds for neat_packing under sdpa or eager
    (data/collator.py SFTDataCollatorWith4DAttentionMask with block_diag_attn = neat_packing, hparams/parser.py;
    prepare_4d_attention_mask: the same document, causal, not padding -> 0, else finfo(compute_dtype).min), for rows
    of documents of DOC tokens."""
    whole, rest = divmod(S, DOC)
    doc = torch.cat([torch.full((DOC,), i + 1) for i in range(whole)] + [torch.full((rest,), whole + 1)])
    allowed = (doc[:, None] == doc[None, :]) & torch.tril(torch.ones((S, S), dtype=torch.bool))
    allowed = allowed[None, None].expand(B, 1, S, S)
    return torch.where(allowed, torch.tensor(0, dtype=dtype), torch.finfo(dtype).min)


def _saved_bytes(kv_heads: int, packed: bool, *, autocast: bool, collator_mask: bool = False) -> tuple[int, list]:
    """Bytes of every storage the model saves for backward in one forward (parameters left out), and the attention
    kernels it ran. `collator_mask`: the packed rows come with LLaMA-Factory's 4-D mask instead of restarting
    position_ids."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{k: v for k, v in HF.items() if k != "model_type"},
                                      num_key_value_heads=kv_heads, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).train()
    ids = torch.randint(0, HF["vocab_size"], (B, S))
    if packed:
        whole, rest = divmod(S, DOC)
        row = torch.cat([torch.arange(DOC)] * whole + [torch.arange(rest)])
    else:
        row = torch.arange(S)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    calls = _Calls()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), calls:
        if collator_mask:
            mask = _collator_mask(torch.bfloat16 if autocast else torch.float32)
            out = model(input_ids=ids, attention_mask=mask, position_ids=row.expand(B, S), use_cache=False)
        else:
            out = model(input_ids=ids, position_ids=row.expand(B, S), use_cache=False)
    out.logits.float().sum().backward()
    return sum(seen.values()), calls.calls


@pytest.mark.parametrize("kv_heads", [2, 1, 4])  # grouped-query (repeat_kv copies), multi-query (a view), multi-head
@pytest.mark.parametrize(("autocast", "act_bytes"), [(False, 4), (True, 2)])
def test_each_layer_keeps_the_mask_and_the_repeated_keys_and_values(kv_heads: int, autocast: bool,
                                                                   act_bytes: int) -> None:
    plain, plain_calls = _saved_bytes(kv_heads, packed=False, autocast=autocast)
    packed, packed_calls = _saved_bytes(kv_heads, packed=True, autocast=autocast)
    # the CPU's flash kernel both times: is_causal without the mask, the additive mask of the query's dtype with it
    dtype = torch.bfloat16 if autocast else torch.float32
    assert plain_calls == [("aten._scaled_dot_product_flash_attention_for_cpu.default", None)] * LAYERS
    assert packed_calls == [("aten._scaled_dot_product_flash_attention_for_cpu.default", dtype)] * LAYERS
    m = spec_from_hf_config({**HF, "num_key_value_heads": kv_heads}, name="packed")
    train = LayerTraining(weights=True, mixed=autocast)
    with_mask = LayerTraining(weights=True, mixed=autocast, packed_mask=True)
    planned = (hf_layer_bytes_per_token(m, act_bytes=act_bytes, attn=Attn.sdpa, train=with_mask, seq_len=S)
               - hf_layer_bytes_per_token(m, act_bytes=act_bytes, attn=Attn.sdpa, train=train, seq_len=S))
    assert (packed - plain) / LAYERS == B * S * planned
    shape = AttentionShape(heads=4, kv_heads=kv_heads, qk_head_dim=64, v_head_dim=64)
    # the fp32 model under bf16 autocast: RoPE leaves the keys fp32, autocast writes the expanded one-head keys out
    assert planned == sum(sdpa_packed_mask_bytes_per_token(shape, seq_len=S, act_bytes=act_bytes, keys_cast=autocast))


@pytest.mark.parametrize(("autocast", "act_bytes"), [(False, 4), (True, 2)])
def test_llamafactory_s_collator_mask_is_one_tensor_every_layer_shares(autocast: bool, act_bytes: int) -> None:
    """LLaMA-Factory's neat_packing under SDPA hands the model its own 4-D additive mask: transformers returns a 4-D
    mask as it is (masking_utils._preprocess_mask_arguments, "If the mask is already 4D, simply return as-is"), SDPA
    takes an additive mask as it is (convert_boolean_attn_mask converts booleans only), and every layer's kernel saves
    that one tensor: e s per token once per step, not per layer; the repeated keys and values stay per layer.
    The plan counts it so with --collator-mask (--from sets it for neat_packing): no layer keeps a mask of its own
    (LayerTraining.shared_mask), and planner.memory.collator_mask_bytes counts the one tensor per micro-batch."""
    kv_heads = 2  # grouped-query: the repeated keys and values show the per-layer term beside the shared mask
    plain, _ = _saved_bytes(kv_heads, packed=False, autocast=autocast)
    packed, calls = _saved_bytes(kv_heads, packed=True, autocast=autocast, collator_mask=True)
    dtype = torch.bfloat16 if autocast else torch.float32
    assert calls == [("aten._scaled_dot_product_flash_attention_for_cpu.default", dtype)] * LAYERS
    shape = AttentionShape(heads=4, kv_heads=kv_heads, qk_head_dim=64, v_head_dim=64)
    mask, repeated = sdpa_packed_mask_bytes_per_token(shape, seq_len=S, act_bytes=act_bytes)
    assert packed - plain == B * S * (mask + LAYERS * repeated)
    # one function owns the per-layer mask: none of its own under the collator's shared mask, the same repeated k, v
    assert sdpa_packed_mask_bytes_per_token(shape, seq_len=S, act_bytes=act_bytes, shared_mask=True) == (0.0, repeated)
    # the planner's terms: per layer the repeated keys and values only, and the collator's mask once
    m = spec_from_hf_config({**HF, "num_key_value_heads": kv_heads}, name="packed")
    train = LayerTraining(weights=True, mixed=autocast)
    shared = LayerTraining(weights=True, mixed=autocast, packed_mask=True, shared_mask=True)
    per_layer = (hf_layer_bytes_per_token(m, act_bytes=act_bytes, attn=Attn.sdpa, train=shared, seq_len=S)
                 - hf_layer_bytes_per_token(m, act_bytes=act_bytes, attn=Attn.sdpa, train=train, seq_len=S))
    cfg = build_config(model="qwen3-0.6b", gpus="1xH100", micro_batch=B, seq_len=S, doc_len=DOC, collator_mask=True,
                       precision=Precision.bf16_mixed if autocast else Precision.fp32, check=False)
    assert packed - plain == LAYERS * B * S * per_layer + collator_mask_bytes(cfg)


def test_when_the_mask_is_built() -> None:
    assert packed_mask(Attn.sdpa, 4096, 300)
    assert not packed_mask(Attn.sdpa, 4096, 4096)  # one document per row: no packing found, is_causal
    assert packed_mask(Attn.sdpa, 4096, 4096, collator=True)  # LLaMA-Factory's collator builds it all the same
    assert not packed_mask(Attn.sdpa, 4096, None)
    assert not packed_mask(Attn.flash, 4096, 300) and not packed_mask(Attn.eager, 4096, 300)


@pytest.mark.parametrize("name", ["gemma-3-1b", "gemma-3-4b", "llama-4-scout-17b-16e"])
def test_the_formula_is_the_measured_window_mask(name: str) -> None:
    """A sliding (Gemma 3) or chunked (Llama 4) layer past its window gets the same materialized mask from the same
    code; the tables measured there on fake tensors (profiler/spec_derive.py _window_masks) hold the same sums:
    e per position (the mask) and e (heads - kv_heads)(d_qk + d_v) per token (the repeated keys and values; Gemma 3
    1B's one kv head: a view, except its fp32 keys under autocast in the mixed full fine-tune)."""
    m = resolve(name)
    for kind in m.layer_kinds:
        if kind.attention.window <= 0:
            continue
        for regime, e in (("fp32", 4), ("mixed", 2), ("bf16", 2)):
            for entry in ("frozen_window", "full_window"):
                intercept, _, slope, _ = kind.table(regime)[entry]
                cast = regime == "mixed" and entry == "full_window"  # the fp32 residual stream of mixed full
                mask, repeated = sdpa_packed_mask_bytes_per_token(kind.attention, seq_len=1, act_bytes=e,
                                                                  keys_cast=cast)
                assert (intercept, slope) == (repeated, mask)


def test_a_derived_model_adds_the_term_to_every_layer_kind_once() -> None:
    """Gemma 3's windowed layers keep one mask, the documents', not a window's and a document's; full recompute
    keeps the layer input only (the recomputed layer's mask is the caller's one-layer term)."""
    m, s, e = resolve("gemma-3-4b"), 4096, 2
    base, packed = LayerTraining(weights=False), LayerTraining(weights=False, packed_mask=True)
    delta = (derived_layer_bytes_per_token(m, act_bytes=e, attn=Attn.sdpa, train=packed, seq_len=s)
             - derived_layer_bytes_per_token(m, act_bytes=e, attn=Attn.sdpa, train=base, seq_len=s))
    expected = 0.0
    for kind in m.layer_kinds:
        mask, repeated = sdpa_packed_mask_bytes_per_token(kind.attention, seq_len=s, act_bytes=e)
        window = kind.table("mixed").get("frozen_window")
        already = window[0] + window[2] * s if window and 0 < kind.attention.window < s else 0.0
        expected += kind.count * (mask + repeated - already)
    assert delta == pytest.approx(expected / m.num_layers)
    for recompute in (GradCkpt.full,):
        assert derived_layer_bytes_per_token(m, act_bytes=e, attn=Attn.sdpa, train=packed, seq_len=s,
                                             recompute=recompute) == \
            derived_layer_bytes_per_token(m, act_bytes=e, attn=Attn.sdpa, train=base, seq_len=s, recompute=recompute)


def test_the_trainer_holds_every_micro_batch_of_the_step_until_its_optimizer_step(tmp_path) -> None:
    """The collator's mask lives as long as its batch: transformers 5.25's Trainer fetches the step's
    gradient_accumulation_steps micro-batches first (get_batch_samples) and loops over that list, so at the optimizer
    step every micro-batch's mask is still alive (collator_mask_bytes: grad_accum x b s^2 e). A real Trainer on the
    CPU, its collator's masks followed by weak references."""
    import weakref

    from torch.utils.data import Dataset

    accum, alive_at_step = 3, []
    masks: weakref.WeakSet = weakref.WeakSet()

    class Rows(Dataset):
        def __len__(self) -> int:
            return B * accum

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": torch.randint(0, HF["vocab_size"], (S,))}

    def collate(rows: list[dict]) -> dict:
        ids = torch.stack([r["input_ids"] for r in rows])
        mask = _collator_mask(torch.float32)[: len(rows)].clone()
        masks.add(mask)
        return {"input_ids": ids, "labels": ids, "attention_mask": mask}

    class Count(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            alive_at_step.append(len(masks))

    config = transformers.LlamaConfig(**{k: v for k, v in HF.items() if k != "model_type"}, num_key_value_heads=2,
                                      attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=B, max_steps=1,
                                          gradient_accumulation_steps=accum, use_cpu=True, report_to=[],
                                          save_strategy="no", dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate,
                                   callbacks=[Count()])
    trainer.train()
    assert alive_at_step == [accum]


def test_the_plan_counts_the_collator_s_mask_once_per_micro_batch() -> None:
    """Llama-3.1-8B LoRA at 4096 tokens of 300-token documents under SDPA: with --collator-mask the 32 layers keep no
    mask of their own (32 x b s^2 e less activation), and the step holds grad_accum x b s^2 e in every phase; under
    FlashAttention-2 LLaMA-Factory's collator builds none."""
    kw = dict(model="llama-3.1-8b", gpus="1xH100", method=Method.lora, seq_len=4096, doc_len=300, micro_batch=2,
              grad_accum=4, check=False)
    per_layer, collator = memory_per_gpu(build_config(**kw)), memory_per_gpu(build_config(**kw, collator_mask=True))
    b, s, e = 2, 4096, 2
    assert collator.other_items[COLLATOR_MASK_ITEM] == 4 * b * s * s * e
    assert COLLATOR_MASK_ITEM not in per_layer.other_items
    assert per_layer.phase == collator.phase == "backward"
    assert per_layer.activations - collator.activations == pytest.approx(32 * b * s * s * e, rel=1e-9)
    flash = memory_per_gpu(build_config(**{**kw, "attn": Attn.flash}, collator_mask=True))
    assert COLLATOR_MASK_ITEM not in flash.other_items
