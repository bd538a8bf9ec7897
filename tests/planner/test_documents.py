"""Packed documents under a per-document attention mask (--doc-len): the blocks FlashAttention-2's varlen kernel
computes, the attention FLOPs MFU counts, the step time of each attention, the switch's validity, its plan.json
round trip and flag, and LLaMA-Factory's neat_packing in the emitted files."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import yaml
from cli_helpers import run

from planner import compute as cp
from planner import kernels as kn
from planner.build import build_config
from planner.options import Options, from_flat
from planner.serialize import config_from_dict, config_to_dict
from planner.strategy import Attn, Stage
from planner.timing import step_time
from planner.validity import problems

S = 4096


def _cfg(**kw):
    base = dict(model="llama-3.2-3b", gpus="1xA100-80G", precision="bf16-true", method="full", micro_batch=2,
                seq_len=S, attn=Attn.flash)
    return build_config(**{**base, **kw}, check=False)


# --- blocks -------------------------------------------------------------------------------------------------------

def test_documents_as_long_as_the_sequence_are_the_causal_share() -> None:
    assert kn.document_block_share(S, S) == kn.causal_block_share(S)
    assert kn.document_block_share(S, 0) == kn.causal_block_share(S)
    assert kn.document_query_blocks(S, S) == S // 128


def test_each_document_runs_its_own_causal_blocks() -> None:
    # 1024 tokens as five documents of 200 (two query blocks each: 1 + 2 = 3 blocks) and a remainder of 24 (one
    # block), over the pack's 8 x 8 grid
    assert kn.document_block_share(1024, 200) == (5 * 3 + 1) / 64
    assert kn.document_query_blocks(1024, 200) == 5 * 2 + 1
    # documents of one block each: one block per document, none of the off-diagonal ones
    assert kn.document_block_share(S, 128) == 32 / 32**2
    # at most the causal share, and less the shorter the documents at whole blocks
    shares = [kn.document_block_share(S, d) for d in (128, 256, 512, 1024, 2048, S)]
    assert shares == sorted(shares) and shares[-1] == kn.causal_block_share(S)


def test_a_window_shorter_than_the_document_is_kept_inside_it() -> None:
    # a sliding window of 256 inside documents of 1024: each document's windowed blocks (attended_block_share)
    doc = kn.attended_block_share(1024, 256) * 8 * 8
    assert kn.document_block_share(S, 1024, 256) == pytest.approx(4 * doc / 32**2)
    assert kn.document_block_share(S, 1024, 256) < kn.document_block_share(S, 1024)


def test_flex_block_mask_stand_in_is_within_one_percent_of_a_step() -> None:
    """torchtune's flex_attention applies the documents' mask on the pack's own 128 x 128 blocks (a "chunked"
    window of the document length), the planner's varlen kernel on each document's: at torchtune's 120-token
    Alpaca samples flex computes 0.060 of the blocks, varlen 0.034, causal attention 0.516; the difference is the
    attention core's share of the causal step (12.6% at most over torchtune's rows) scaled down, under 1%."""
    varlen, flex, causal = (kn.document_block_share(S, 120), kn.attended_block_share(S, 120, "chunked"),
                            kn.causal_block_share(S))
    assert (round(varlen, 3), round(flex, 3), round(causal, 3)) == (0.034, 0.06, 0.516)
    cfg = _cfg(doc_len=120)
    t_doc, t_causal = step_time(cfg).step_time_s, step_time(replace(cfg, doc_len=None)).step_time_s
    extra = (flex - varlen) / (causal - varlen) * (t_causal - t_doc)
    assert extra / t_doc < 0.01


# --- FLOPs --------------------------------------------------------------------------------------------------------

def test_attended_tokens_count_each_documents_square() -> None:
    assert cp.attended_tokens(S) == S and cp.attended_tokens(S, S) == S
    whole, rest = divmod(S, 300)
    assert cp.attended_tokens(S, 300) == (whole * 300**2 + rest**2) / S
    assert cp.attended_tokens(S, 256) == 256


def test_mfu_counts_each_documents_attention_and_hfu_what_the_kernel_runs() -> None:
    flash, eager = _cfg(doc_len=256), _cfg(doc_len=256, attn=Attn.eager)
    m = flash.model
    plain = cp.flops_per_token(m, cp.training_of(_cfg()))
    packed = cp.flops_per_token(m, cp.training_of(flash))
    masked = cp.flops_per_token(m, cp.training_of(eager))
    # forward + backward (3x) of the attention core per layer, at s and at the document's 256
    saved = 3 * m.num_layers * (cp.attention_flops(m, S) - cp.attention_flops(m, 256))
    assert plain.model - packed.model == pytest.approx(saved)
    assert packed.hardware == packed.model  # no recompute, and varlen skips the other documents
    assert masked.model == packed.model and masked.hardware == pytest.approx(plain.hardware)
    assert cp.model_flops_per_token(flash) == pytest.approx(packed.model)


# --- time ---------------------------------------------------------------------------------------------------------

def test_flash_varlen_is_faster_with_documents_eager_is_not() -> None:
    flash = step_time(_cfg()).step_time_s
    assert step_time(_cfg(doc_len=256)).step_time_s < flash
    assert step_time(_cfg(doc_len=S)).step_time_s == pytest.approx(flash)
    eager = step_time(_cfg(attn=Attn.eager)).step_time_s
    assert step_time(_cfg(attn=Attn.eager, doc_len=256)).step_time_s == pytest.approx(eager)


def test_the_attention_core_shrinks_by_the_block_share() -> None:
    cfg = _cfg()
    m, gpu = cfg.model, cfg.cluster.gpu
    peak = cp.peak_flops_per_s(gpu, cfg.precision)
    whole = kn.flash_attention_s(m, 2, S, 1, gpu, peak, gpu.attention_efficiency)[0]
    docs = kn.flash_attention_s(m, 2, S, 1, gpu, peak, gpu.attention_efficiency, Attn.flash, 512)[0]
    waves = kn.document_query_blocks(S, 512) == S // 128  # documents of whole blocks launch the same blocks
    assert waves and docs / whole == pytest.approx(kn.document_block_share(S, 512) / kn.causal_block_share(S))


def test_the_cpu_computes_the_whole_square() -> None:
    """No kernel that skips documents runs on the CPU (runner/model.py loads SDPA for flash there)."""
    cfg = build_config(model="llama-3.2-3b", gpus="1xCPU", method="lora", seq_len=1024, attn=Attn.flash,
                       check=False)
    assert step_time(replace(cfg, doc_len=128)).step_time_s == pytest.approx(step_time(cfg).step_time_s)


# --- validity, plan.json, the flag --------------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "message"), [
    (dict(doc_len=0), "--doc-len must be between 1 and --seq-len 4096, got 0"),
    (dict(doc_len=S + 1), "--doc-len must be between 1 and --seq-len 4096, got 4097"),
    (dict(doc_len=300, stage=Stage.dpo), "--doc-len packs documents for sft or pt"),
])
def test_invalid_documents_are_refused(kw, message: str) -> None:
    assert any(p.startswith(message) for p in problems(_cfg(**kw)))


@pytest.mark.parametrize("kw", [dict(doc_len=1), dict(doc_len=S), dict(doc_len=300, attn=Attn.eager),
                                dict(doc_len=300, attn=Attn.sdpa), dict(doc_len=300, stage=Stage.pt)])
def test_valid_documents(kw) -> None:
    assert not [p for p in problems(_cfg(**kw)) if "doc-len" in p]


def test_plan_json_round_trip_and_name() -> None:
    cfg = _cfg(doc_len=300)
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert data["doc_len"] == 300 and config_from_dict(data) == cfg
    assert "doc_len" not in config_to_dict(_cfg())  # plans without it read as before
    assert str(cfg).endswith("-doc300")
    opts, rest = from_flat(Options, {"doc_len": 300, "seq_len": S})
    assert opts.switches.doc_len == 300 and not rest


def test_the_flag_reaches_estimate_and_bad_values_exit_2(capsys, monkeypatch) -> None:
    args = ("estimate", "-m", "llama-3.2-3b", "-g", "1xA100-80G", "--method", "full", "--seq-len", "4096",
            "--attn", "flash", "--json")
    code, out, _ = run(capsys, monkeypatch, *args, "--doc-len", "256")
    assert code == 0, out
    code, plain, _ = run(capsys, monkeypatch, *args)
    assert code == 0
    assert json.loads(out)["config"]["doc_len"] == 256 and "doc_len" not in json.loads(plain)["config"]
    for bad in ("5000", "0"):
        code, _, err = run(capsys, monkeypatch, *args, "--doc-len", bad)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "doc-len" in err


# --- LLaMA-Factory ------------------------------------------------------------------------------------------------

def test_llamafactory_yaml_gets_neat_packing(tmp_path) -> None:
    from runner.emit import emit

    cfg = _cfg(doc_len=300, method="lora")
    emit(cfg, tmp_path / "docs")
    text = (tmp_path / "docs" / "llamafactory.yaml").read_text()
    lf = yaml.safe_load(text)
    assert lf["neat_packing"] is True and lf["flash_attn"] == "fa2" and lf["cutoff_len"] == S
    assert "one pack per device" in text  # micro-batch 2 under fa2: LLaMA-Factory asserts a batch of 1
    emit(_cfg(method="lora"), tmp_path / "plain")
    assert "neat_packing" not in yaml.safe_load((tmp_path / "plain" / "llamafactory.yaml").read_text())
    emit(_cfg(doc_len=300, method="lora", stage=Stage.pt), tmp_path / "pt")
    pt = (tmp_path / "pt" / "llamafactory.yaml").read_text()
    assert "neat_packing" not in yaml.safe_load(pt) and "neat_packing is SFT only" in pt
    assert math.isclose(json.loads((tmp_path / "docs" / "plan.json").read_text())["config"]["doc_len"], 300)
    # under SDPA LLaMA-Factory's collator builds the mask: the header names the switch that plans it
    emit(_cfg(doc_len=300, method="lora", attn=Attn.sdpa), tmp_path / "sdpa")
    assert "--collator-mask" in (tmp_path / "sdpa" / "llamafactory.yaml").read_text()
    emit(_cfg(doc_len=300, method="lora", attn=Attn.sdpa, collator_mask=True), tmp_path / "collator")
    assert "--collator-mask" not in (tmp_path / "collator" / "llamafactory.yaml").read_text()


# --- SDPA: the packed sequences' materialized mask ----------------------------------------------------------------

def test_sdpa_runs_every_block_with_the_documents_mask() -> None:
    """The memory-efficient kernel with an explicit mask skips no block (planner/kernels.py sdpa_masks_documents):
    the attention core costs the whole s x s, not the causal half SDPA's is_causal runs without documents."""
    cfg = _cfg(attn=Attn.sdpa)
    m, gpu = cfg.model, cfg.cluster.gpu
    peak = cp.peak_flops_per_s(gpu, cfg.precision)
    causal = kn.flash_attention_s(m, 2, S, 1, gpu, peak, gpu.attention_efficiency, Attn.sdpa)[0]
    masked = kn.flash_attention_s(m, 2, S, 1, gpu, peak, gpu.attention_efficiency, Attn.sdpa, 300)[0]
    assert masked / causal == pytest.approx(1.0 / kn.causal_block_share(S))
    assert kn.flash_attention_s(m, 2, S, 1, gpu, peak, gpu.attention_efficiency, Attn.sdpa, S)[0] == causal
    plain, docs = step_time(cfg).step_time_s, step_time(_cfg(attn=Attn.sdpa, doc_len=300)).step_time_s
    assert docs > plain > step_time(_cfg(doc_len=300)).step_time_s  # flash's varlen the fastest
    # MFU's model FLOPs count the documents whatever the kernel; the hardware FLOPs the whole square
    flops = cp.flops_per_token(m, cp.training_of(_cfg(attn=Attn.sdpa, doc_len=300)))
    assert flops.model == cp.flops_per_token(m, cp.training_of(_cfg(doc_len=300))).model
    assert flops.hardware == pytest.approx(cp.flops_per_token(m, cp.training_of(cfg)).hardware)


@pytest.mark.parametrize(("method", "precision"), [("full", "bf16-true"), ("lora", "bf16-mixed")])
def test_sdpa_keeps_the_mask_in_every_layer(method: str, precision: str) -> None:
    """Each layer keeps the additive mask (e s per token) and the keys and values repeated to every query head
    (Llama 3.2 3B: 24 query heads, 8 kv heads of 128): planner/activations.py sdpa_packed_mask_bytes_per_token, over
    the 2 x 4096 tokens of the micro-batch and its 28 layers; checkpointing keeps one layer's at most (the recomputed
    layer, when it outweighs the logits and loss it is never live with)."""
    from planner.memory import memory_per_gpu

    cfg = _cfg(attn=Attn.sdpa, method=method, precision=precision)
    m, tokens, e = cfg.model, 2 * S, 2
    per_layer = tokens * (e * S + e * (24 - 8) * (128 + 128))
    plain = memory_per_gpu(cfg).activations
    assert memory_per_gpu(_cfg(attn=Attn.sdpa, method=method, precision=precision, doc_len=300)).activations - \
        plain == pytest.approx(m.num_layers * per_layer)
    assert memory_per_gpu(_cfg(attn=Attn.sdpa, method=method, precision=precision, doc_len=S)).activations == plain
    for attn in (Attn.flash, Attn.eager):  # no mask kept: varlen takes none, eager keeps its scores anyway
        kw = dict(attn=attn, method=method, precision=precision)
        assert memory_per_gpu(_cfg(**kw, doc_len=300)).activations == memory_per_gpu(_cfg(**kw)).activations
    ckpt = dict(attn=Attn.sdpa, method=method, precision=precision, grad_ckpt="full")
    grew = memory_per_gpu(_cfg(**ckpt, doc_len=300)).total - memory_per_gpu(_cfg(**ckpt)).total
    assert 0 <= grew <= per_layer * 1.0001


def test_collator_mask_needs_documents() -> None:
    """--collator-mask plans a packed documents' mask: without --doc-len it would change nothing, so it is refused."""
    from planner.validity import problems

    found = problems(_cfg(collator_mask=True))
    assert found == ["--collator-mask plans the packed documents' mask a collator builds: it needs --doc-len"]
    assert not problems(_cfg(collator_mask=True, doc_len=300))
