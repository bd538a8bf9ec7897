"""ftplan's peak against published measured peaks (tests/validation/published_peaks.py and published_peaks_sharded.py).

Each case is compared with the reading its source used (planner.memory.MemoryBreakdown): `allocated` / `active`
(torch.cuda.max_memory_allocated, active_bytes) with ftplan's allocated reading, `reserved` (max_memory_reserved)
with its reserved reading, `nvidia-smi` and `unstated` with its device reading (reserved + CUDA context + NCCL).

Tolerance: each case within +-15%, and a multi-GPU sharded run (ZeRO-2/3, FSDP, offload) not under-predicted by
more than 10% (the issue's "none under-predicted by more than 10%"); measured runs must fit, out-of-memory labels
must not. Cases outside are strict xfails naming their cause or what was checked. Aims over the set (printed with
-s, a strict xfail while unmet): multi-GPU sharded runs median |error| <= 8%, the whole set median <= 6%.
"""

from __future__ import annotations

import statistics

import pytest
from published_peaks import CASES as SINGLE_SOURCES
from published_peaks import GiB, PublishedPeak
from published_peaks_sharded import CASES as SHARDED_SOURCES

from planner import deepspeed_sizes
from planner.estimate import Estimate, estimate
from planner.strategy import Engine, FsdpStrategy, Offload, ZeroStage

CASES = [*SINGLE_SOURCES, *SHARDED_SOURCES]
TOLERANCE = 0.15
UNDER_TOLERANCE_SHARDED = 0.10

_TT_UPCAST = ("torchtune without its chunked loss upcasts the logits to fp32 in the eager model "
              "(TiedEmbeddingTransformerDecoder: `.float()` on the output projection) and compiles only the loss "
              "module (training/_compile.py compile_loss), so the compiled loss saves the fp32 logits and backward "
              "adds their fp32 gradient: 8V per token where ftplan's compiled standard loss is the Trainer's, upcast "
              "and loss in one graph (2eV); counting 8V leaves -11.5%, the rest is what Inductor on CUDA (torch 2.5) "
              "saves per compiled layer beyond this CPU's measurement (benchmarks/compile_saved.py), a GPU run's")
# within the bar, for the README's litgpt note
_LITGPT_REST = ("not identified: with litgpt's own saved set (--litgpt: lit-gpt 8641822's Block measured op by op on "
                "this CPU, 39.24 h per layer and token, and Fabric's fp32 logits held by the loop) the bf16 Llama rows "
                "sit 3.1-5.0% above ftplan, about 4.3 bytes x h per token and layer, and the bitsandbytes 0.41 rows "
                "7.8-8.6%; the same measurement predicts the same table's phi-1.5 and StableLM-Alpha-3B per-sample "
                "slopes (1.95 and 2.41 GB) within 1.2%, so the rest is in what only the Llama layers run (litgpt's "
                "RMSNorm, the gated MLP, full-width RoPE, bias-free linears) on torch 2.1's CUDA kernels: a GPU run "
                "tells")
_NVSMI = ("not identified: ftplan is 4.9 GiB low on this Trainer run read with an unstated tool. Checked: peft "
          "examples/sft at the docs' commits (dtype, use_reentrant, batch, packing, all-linear, flash-attn); the "
          "device reading counts the CUDA context, NCCL's buffers and GMLake's fragmentation for LoRA + "
          "recomputation; what offload moves is right to 7.5% against the docs' own run without offload "
          "(test_fsdp_offload_moves_what_peft_docs_measured), and that run is 3.3 GiB low (-9.3%): most of the "
          "gap is what both runs hold beside the tensors (the reserve, the init's cache), the more so on a 24 GB "
          "card. Needs allocated / reserved / nvidia-smi side by side")
# within the +-15% bar, and kept for the README: Qwen-1.8B sits 11-15% under ftplan at 256-4096 tokens
_QWEN_18 = ("not identified: Qwen-1.8B sits 0.7-1.3 GiB above ftplan's device reading at 256-4096 tokens while "
            "Qwen-7B is within -4..+5% at every length and 1.8B within 8% at 8192; transformers' Qwen2 layers of "
            "this shape on fake tensors hold exactly ftplan's tensors (7.77 GiB at 2048): the gap is in what the "
            "run adds (remote code under PyTorch 2.0, an unstated reading), which only a GPU run can show")
_QWEN_72 = ("not identified: Qwen-72B LoRA + ZeRO-3 sits a constant ~7.5 GiB per GPU above ftplan at 256-1024 "
            "tokens and its growth per token is 0.56x ftplan's (the remote code's loss on bf16 logits, no fp32 "
            "upcast under DeepSpeed, explains the slope, not the constant). Checked against Qwen's finetune.py and "
            "ds_config_zero3.json at the table's commit e8e1596 (a chat model: no modules_to_save; the README: "
            "'LoRA (emb)' ran out of memory; DeepSpeed's AdamW, no foreach buffer) and DeepSpeed's stage-3 source: "
            "persistent parameters (10h: norms and c_attn biases; r 64 adapters are above it), gathered parameters "
            "(max_live 1e9 and the 1.25B-element LM head gathered whole), kept-for-backward, the h*h ipg bucket, "
            "the contiguous 16-bit gradient partition, the fp32 partition + Adam states of the LoRA (one sub-group), "
            "the step's flat copies (below the backward peak), 2 NCCL communicators. The same path on 2 CPU ranks "
            "(peft on every linear, reentrant checkpointing, accumulation: test_memory_sharded_measured zero3-lora) "
            "is within 2.2% of ftplan's tensors, so the constant lies outside DeepSpeed 0.19.8's tensors. Replayed "
            "through the caching allocator's rules (DeepSpeed 0.12.3, transformers' zero.Init loading): building the "
            "model under zero.Init (each full weight, its partition, the full weight freed) and loading it "
            "(each module gathered whole, the LM head's 2.3 GiB included) leave 0.01 GiB free in segments that hold "
            "partitions once the optimizer's defragmentation empties the cache (stage3.py defragment: empty_cache); "
            "the optimizer's construction and step leave 0.27 GiB (planner.zero3_init_allocations). What is left: "
            "the allocator or NCCL on the GPU (the reduce stream's own pool, record_stream's deferred frees), a "
            "GPU run's")
_AAI_INIT = ("partly identified: the reserved figure holds FSDP1's init cache (train.py resets the peak after the "
             "wrap, and the cache stays reserved). planner.init_allocations replays the loading and the wrap: 3.23 "
             "GiB reserved after the wrap where the run's log reads 3.72 (reserved_after_model_wrap, "
             "benchmarks_03_2024.md; -13%), and with the all-gathers' own-stream segments a floor of 3.91 GiB; "
             "the run's step added 1.26 GiB of new segments on top of the 3.72, as if it reused little of the "
             "init's cache. The 0.5 GiB the init replay misses (buffers are not replayed: the rotary caches, 4.38's "
             "causal mask; threads interleaving the loading) and which step blocks reuse the cache need a GPU's "
             "memory snapshot")
XFAIL: dict[str, str] = {
    "torchtune:full+packed+compile": _TT_UPCAST,
    "peft:70b-qlora-fsdp-offload-2x24GB": _NVSMI,
    **{f"qwen-72B:lora-zero3-seq{s}": _QWEN_72 for s in (256, 512, 1024)},
    "answerai:llama-2-7b-qlora-fsdp-mb1-seq512": _AAI_INIT,
}
XFAIL_OOM: dict[str, str] = {
    "litgpt:7B-none-mb4": ("ftplan's fit figure is 39.87 GiB of the A100's 40 (allocated 38.82, was 37.96 before "
                           "litgpt's own saved set and fp32 logits; CUDA context 0.50; half the 1.10 GiB reserve), "
                           "where the published slope, 7.77 GB per sample, puts the allocated peak near 41.5 GiB: the "
                           "label turns on the litgpt rows' unexplained 3-5% (" + _LITGPT_REST + ")"),
}


def estimate_case(case: PublishedPeak) -> Estimate:
    with deepspeed_sizes.configured(**case.extra.get("ds_sizes", {})):
        return estimate(case.config(), timed=False)


def reading_bytes(kind: str, est: Estimate) -> float:
    mem = est.memory
    if kind in ("allocated", "active"):
        return mem.allocated
    if kind == "reserved":
        return mem.reserved
    return mem.device  # nvidia-smi, or a tool the source does not name: the whole process as the device sees it


def planner_bytes(case: PublishedPeak) -> tuple[float, bool]:
    """ftplan's figure in the case's reading, and whether ftplan says it fits."""
    est = estimate_case(case)
    return reading_bytes(case.kind, est), est.fits


def deviation(case: PublishedPeak) -> float:
    return planner_bytes(case)[0] / (case.measured * case.unit) - 1.0


def engine_label(case: PublishedPeak) -> str:
    cfg = case.config()
    if cfg.engine is Engine.deepspeed:
        out = f"ZeRO-{int(cfg.zero)}"
    elif cfg.engine is Engine.fsdp:
        out = f"FSDP{int(cfg.fsdp_version)}" + ("" if cfg.fsdp is FsdpStrategy.full_shard else f" {cfg.fsdp.value}")
    else:
        out = "DDP" if cfg.world_size > 1 else "1 GPU"
    return out + (" + offload" if cfg.offload is not Offload.none else "")


def sharded_multi_gpu(case: PublishedPeak) -> bool:
    cfg = case.config()
    sharded = (cfg.engine is Engine.deepspeed and cfg.zero >= ZeroStage.GRADIENTS) or (
        cfg.engine is Engine.fsdp and cfg.fsdp is not FsdpStrategy.no_shard) or cfg.offload is not Offload.none
    return cfg.world_size > 1 and sharded


MEASURED = [c for c in CASES if not c.oom]
SHARDED = [c for c in MEASURED if sharded_multi_gpu(c)]


def _marks(case: PublishedPeak) -> list:
    cause = XFAIL.get(case.id)
    return [pytest.mark.xfail(strict=True, reason=cause)] if cause else []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in MEASURED])
def test_measured_peak(case: PublishedPeak) -> None:
    pred, fits = planner_bytes(case)
    dev = pred / (case.measured * case.unit) - 1.0
    print(f"[published peak] {case.framework} | {engine_label(case)} | {case.id}: measured "
          f"{case.measured * case.unit / GiB:.2f} GiB ({case.kind}), ftplan {pred / GiB:.2f} GiB, deviation {dev:+.1%}")
    assert fits, "the run was measured, so it fit"
    assert abs(dev) <= TOLERANCE
    if sharded_multi_gpu(case):
        assert dev >= -UNDER_TOLERANCE_SHARDED


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True,
                                                                                      reason=XFAIL_OOM[c.id])]
                                               if c.id in XFAIL_OOM else []) for c in CASES if c.oom])
def test_out_of_memory_label(case: PublishedPeak) -> None:
    assert not estimate_case(case).fits


@pytest.mark.parametrize("case", [c for c in MEASURED if "allocated" in c.extra], ids=lambda c: c.id)
def test_second_reading_of_the_same_run(case: PublishedPeak) -> None:
    """Answer.AI's text gives the allocated peak of two of its reserved rows: ftplan's allocated reading, within 10%."""
    est = estimate_case(case)
    dev = est.memory.allocated / (case.extra["allocated"] * case.unit) - 1
    print(f"[published peak] {case.id}: allocated {case.extra['allocated']:.2f} GiB, ftplan "
          f"{est.memory.allocated / GiB:.2f} GiB ({dev:+.1%})")
    assert abs(dev) <= 0.10


def summary() -> dict[str, tuple[float, float, int]]:
    """(source, engine) -> (median |deviation|, worst |deviation|, cases); "all" and "multi-GPU sharded" too."""
    devs: dict[str, list[float]] = {}
    for case in MEASURED:
        devs.setdefault(f"{case.framework} | {engine_label(case)}", []).append(abs(deviation(case)))
    devs["multi-GPU sharded"] = [abs(deviation(c)) for c in SHARDED]
    devs["all"] = [abs(deviation(c)) for c in MEASURED]
    return {k: (statistics.median(v), max(v), len(v)) for k, v in devs.items()}


def test_set_has_50_peaks_15_sharded_from_5_sources() -> None:
    assert len(MEASURED) >= 50
    assert len(SHARDED) >= 15 and len({c.framework for c in SHARDED}) >= 5
    assert all(c.source and c.switches and c.kind in ("allocated", "active", "reserved", "nvidia-smi", "unstated")
               and c.unit in (1e9, 2**30, 2**20) for c in CASES)


@pytest.mark.xfail(strict=True, reason="aims not met: see the README table (the per-case xfails name the causes)")
def test_aims_sharded_median_8_percent_all_median_6_percent_none_sharded_under_10() -> None:
    stats = summary()
    for key, (median, worst, n) in sorted(stats.items()):
        print(f"[published peaks] {key}: {n} cases, median |error| {median:.1%}, worst {worst:.1%}")
    under = [c.id for c in SHARDED if deviation(c) < -UNDER_TOLERANCE_SHARDED]
    print(f"[published peaks] multi-GPU sharded runs under-predicted by more than 10%: {len(under)} {under}")
    assert stats["multi-GPU sharded"][0] <= 0.08 and stats["all"][0] <= 0.06 and not under


def test_fsdp_offload_moves_what_peft_docs_measured() -> None:
    """peft's FSDP QLoRA docs measure the same 70B run with and without fsdp_offload_params: 35.6 and 19.6 GB per GPU.
    What CPU offload takes off the GPU is the 4-bit codes' shard and the LoRA's gradients and states; the
    quantization statistics stay (planner.memory_knobs.offload_kept_quant_state_bytes). ftplan's allocated readings
    differ by that, within 10% of the published difference (the readings' allocator reserve, CUDA context and NCCL
    are the same run's, and cancel; the docs name no GPU for the run without offload, so the tensors are compared)."""
    by_id = {c.id: c for c in CASES}
    on, off = by_id["peft:70b-qlora-fsdp-offload-2x24GB"], by_id["peft:70b-qlora-fsdp-2GPU"]
    moved = estimate_case(off).memory.allocated - estimate_case(on).memory.allocated
    published = (off.measured - on.measured) * off.unit
    print(f"[published peak] peft FSDP QLoRA, what offload moves: published {published / GiB:.2f} GiB, ftplan "
          f"{moved / GiB:.2f} GiB ({moved / published - 1:+.1%})")
    assert abs(moved / published - 1) <= 0.10
