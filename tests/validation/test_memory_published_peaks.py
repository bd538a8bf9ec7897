"""ftplan's peak against published measured peaks of four frameworks (tests/validation/published_peaks.py).

Tolerance: each case within ±15% (the issue's "90% within 15%" bar, applied per case); out-of-memory
cases must be predicted not to fit, measured ones to fit. Aims over all measured cases: median |error|
<= 8% and 90% within 15%. Cases outside the bar are strict xfails naming their cause; the aggregate is a
strict xfail while the aims are not met, and prints the figures either way (run with -s).
"""

from __future__ import annotations

import statistics

import pytest
from published_peaks import CASES, GiB, PublishedPeak

from planner.estimate import estimate

NOT_ALLOCATED = ("CUDA context and workspaces", "allocator reserve")
TOLERANCE = 0.15

_TT_UPCAST = ("torchtune without its chunked loss upcasts the logits to fp32 in the eager model and compiles only "
              "the loss module (fp32 logits and gradient remain, 8V per token); ftplan's compiled standard loss is "
              "the Trainer's, upcast and loss in one graph (2eV)")
_TT_FOREACH = ("not identified: the peak is the optimizer step, where ftplan counts torch.optim.AdamW's foreach "
               "temporary (torch/optim/adam.py _multi_tensor_adam: _foreach_sqrt of every exp_avg_sq, one bf16 "
               "parameter-sized buffer, 5.98 GiB; without it -3.9%). Checked: optimizer_in_bwd is off in this row "
               "(the config's default True is the table's next row, '+ Fuse optimizer step into backward', 23.1 GiB; "
               "the README's command sets optimizer_in_bwd=False optimizer=torch.optim.AdamW, no fused flag, so "
               "foreach on CUDA); yet the measured 24.9 GiB leaves no room for the buffer above weights + gradients "
               "+ states (23.93 GiB), and fusing the step into backward saves only 1.8 GiB")
_NVSMI = ("not identified: ftplan is low on these Trainer runs read from nvidia-smi or an unstated tool. Checked: "
          "peft examples/sft at the docs' commits (aa2ca83ca LoRA, 6008f272a QLoRA: dtype, use_reentrant, batch, "
          "packing, all-linear, flash-attn; DeepSpeed casts fp32-loaded weights to bf16); reentrant checkpointing "
          "keeps no bitsandbytes input. Left: the allocator cache beyond the modelled 5% (reserved vs allocated)")
_QWEN = ("not identified: Qwen-1.8B LoRA sits 0.7-1.3 GiB above ftplan at 256-2048 tokens (-11 to -13%) and "
         "2.3 GiB at 4096, while Qwen-7B is within -4.1..+2.5% at every length and 1.8B within 1% at 8192. Checked: "
         "the LoRA rows train no embedding/head; the loss runs in fp32 under autocast (modelled); bs 1, padded to "
         "the length; reentrant checkpointing. The reading's tool is not stated")
XFAIL: dict[str, str] = {
    "torchtune:full+packed+compile": _TT_UPCAST,
    "torchtune:full+packed+compile+chunked-ce+ac": _TT_FOREACH,
    "peft:70b-lora-zero3-8xH100": _NVSMI, "peft:70b-qlora-zero3-2xA100-40G": _NVSMI,
    "peft:70b-qlora-fsdp-offload-2x24GB": _NVSMI,
    "qwen-1.8B:lora-seq4096": _QWEN,
}


def planner_bytes(case: PublishedPeak) -> tuple[float, bool]:
    """ftplan's figure comparable with the case's reading, and whether ftplan says it fits."""
    est = estimate(case.config(), timed=False)
    mem = est.memory
    total = mem.total
    if case.kind in ("allocated", "active"):
        total -= sum(mem.other_items.get(k, 0.0) for k in NOT_ALLOCATED)
    return total, est.fits


def deviation(case: PublishedPeak) -> float:
    pred, _ = planner_bytes(case)
    return pred / (case.measured * case.unit) - 1.0


MEASURED = [c for c in CASES if not c.oom]


def _marks(case: PublishedPeak) -> list:
    cause = XFAIL.get(case.id)
    return [pytest.mark.xfail(strict=True, reason=cause)] if cause else []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in MEASURED])
def test_measured_peak(case: PublishedPeak) -> None:
    pred, fits = planner_bytes(case)
    dev = pred / (case.measured * case.unit) - 1.0
    print(f"[published peak] {case.framework} | {case.id}: measured {case.measured * case.unit / GiB:.2f} GiB "
          f"({case.kind}), ftplan {pred / GiB:.2f} GiB, deviation {dev:+.1%}")
    assert fits, "the run was measured, so it fit"
    assert abs(dev) <= TOLERANCE


@pytest.mark.parametrize("case", [c for c in CASES if c.oom], ids=lambda c: c.id)
def test_out_of_memory_label(case: PublishedPeak) -> None:
    _, fits = planner_bytes(case)
    assert not fits


def summary() -> dict[str, tuple[float, float, int]]:
    """framework -> (median |deviation|, worst |deviation|, cases); "all" for every measured case."""
    devs: dict[str, list[float]] = {}
    for case in MEASURED:
        devs.setdefault(case.framework, []).append(abs(deviation(case)))
    devs["all"] = [d for v in devs.values() for d in v]
    return {k: (statistics.median(v), max(v), len(v)) for k, v in devs.items()}


def test_set_covers_four_frameworks_and_25_peaks() -> None:
    assert len(MEASURED) >= 25
    assert len({c.framework for c in MEASURED}) >= 4
    assert all(c.source and c.switches and c.kind and c.unit in (1e9, 2**30) for c in CASES)


@pytest.mark.xfail(strict=True, reason="aims not met: median 9.5% > 8%, 33 of 39 (85%) within 15%; see the per-case "
                                       "xfails for the 6 outside it")
def test_aims_median_8_percent_and_90_percent_within_15() -> None:
    stats = summary()
    for framework, (median, worst, n) in stats.items():
        print(f"[published peaks] {framework}: {n} cases, median |error| {median:.1%}, worst {worst:.1%}")
    errors = sorted(abs(deviation(c)) for c in MEASURED)
    within = sum(e <= TOLERANCE for e in errors) / len(errors)
    p90 = errors[min(len(errors) - 1, int(0.9 * len(errors)))]
    print(f"[published peaks] all: 90th percentile |error| {p90:.1%}, {within:.0%} within 15%")
    assert stats["all"][0] <= 0.08 and within >= 0.90
