"""The predicted-vs-measured part of `run_summary.json`: each measured figure beside the planner's figure for the
same quantity, at the shape that actually ran. Pure Python (the measurements come in as plain dicts from
runner.memory_probe, one per rank), so that the pairing can be tested with made-up numbers.

Pairs (measured <-> predicted):
- peak tensor bytes of the most loaded rank <-> the planner's allocated reading (planner/memory.py: allocated <=
  reserved <= device); on the CPU device the three are equal;
- CUDA: the allocator's peak reservation <-> the reserved reading; the driver's device memory in use <-> the
  device reading; driver minus reserved (context, NCCL and library workspaces) <-> device minus reserved;
- RSS above its baseline: the host's view, no planner figure (it holds the allocator's slack and library
  buffers too);
- median step time after warm-up <-> the time model's step time, with tokens/s counted the planner's way
  (padded positions, every rank). Only where the time model's efficiency for the device is calibrated or
  published (`time_model_basis`); the CPU pseudo-device's is a placeholder (planner/compute.py, planner/gpus.py).

The planner predicts for `seq_len`-wide micro-batches; the runner pads each batch to its longest example
(runner.data.pad_batch), so the prediction is made again at the widest padded batch the memory figure covers
and at the median padded width of the timed steps.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Any

from planner.calibration import DEFAULT, Calibration
from planner.compute import DEFAULT_COMPUTE_EFFICIENCY, compute_efficiency
from planner.strategy import TrainConfig
from runner.memory_probe import TRACKED_STEPS

WARMUP_STEPS = TRACKED_STEPS  # steps excluded from timing: the first steps, and on the CPU the tracked ones
# Devices whose default efficiency is a placeholder rather than a published figure: the CPU pseudo-device's
# 0.30 "until calibrated" (planner/compute.py) over a nominal peak (planner/gpus.py, "replace by a calibration
# file"). A GPU missing from DEFAULT_COMPUTE_EFFICIENCY gets the fallback, which is no published figure either.
PLACEHOLDER_EFFICIENCY_DEVICES = frozenset({"CPU"})


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryPrediction:
    tensor_bytes: float  # the planner's peak of live tensors (weights, gradients, optimizer, activations, buffers)
    allocator_reserve_bytes: float
    context_bytes: float
    total_bytes: float


def predicted_memory(cfg: TrainConfig, cal: Calibration = DEFAULT) -> MemoryPrediction:
    """The planner's three readings (planner/memory.py): allocated (the tensors), reserved (+ the allocator's
    reserve), and the device's (+ the CUDA context and NCCL's buffers, here together as `context_bytes`)."""
    from planner.memory import memory_per_gpu

    mem = memory_per_gpu(cfg, cal)
    return MemoryPrediction(tensor_bytes=mem.allocated, allocator_reserve_bytes=mem.reserved - mem.allocated,
                            context_bytes=mem.device - mem.reserved, total_bytes=mem.device)


def time_model_basis(gpu_name: str, cal: Calibration = DEFAULT) -> str:
    """Where the compute efficiency of the time model comes from: 'calibration' (a calibration file for this
    device), 'published' (the GPU's default from published runs, planner/compute.py), 'placeholder'."""
    cal_device = dict(cal.key).get("device")
    if cal.compute_efficiency is not None and cal_device in (None, gpu_name):
        return "calibration"
    if gpu_name in PLACEHOLDER_EFFICIENCY_DEVICES or gpu_name not in DEFAULT_COMPUTE_EFFICIENCY:
        return "placeholder"
    return "published"


def _at_width(cfg: TrainConfig, width: int) -> TrainConfig:
    return cfg if width <= 0 or width == cfg.seq_len else replace(cfg, seq_len=width)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def tensor_fields(cfg: TrainConfig, ranks: list[dict[str, Any]], cal: Calibration) -> dict[str, Any]:
    """Peak tensor bytes of the most loaded rank beside the planner's, at the widest batch the peak covers."""
    window = min(r["tensor_steps"] for r in ranks)
    width = max((w for r in ranks for w in r["step_max_width"][:window]), default=0)
    pred = predicted_memory(_at_width(cfg, width), cal)
    peaks = [r["peak_tensor_bytes"] for r in ranks]
    measured = max(peaks) if all(p is not None for p in peaks) else None
    return {"peak_tensor_bytes_measured": measured, "peak_tensor_bytes_predicted": round(pred.tensor_bytes),
            "peak_tensor_bytes_per_rank": peaks, "peak_tensor_source": ranks[0]["tensor_source"],
            "peak_tensor_steps": window, "seq_len_memory_measured": width or cfg.seq_len}


def rss_fields(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    above = [r["rss_peak_bytes"] - r["rss_baseline_bytes"] for r in ranks]
    return {"rss_above_baseline_bytes": max(above), "rss_above_baseline_bytes_per_rank": above,
            "rss_baseline_bytes": max(r["rss_baseline_bytes"] for r in ranks),
            "rss_peak_since_baseline": all(r["rss_peak_since_baseline"] for r in ranks)}


def cuda_fields(cfg: TrainConfig, ranks: list[dict[str, Any]], cal: Calibration) -> dict[str, Any]:
    width = max((w for r in ranks for w in r["step_max_width"]), default=0)
    pred = predicted_memory(_at_width(cfg, width), cal)

    def most(key: str) -> int | None:
        values = [r[key] for r in ranks if r.get(key) is not None]
        return max(values) if values else None

    return {"cuda_reserved_peak_bytes_measured": most("cuda_reserved_peak_bytes"),
            "cuda_reserved_peak_bytes_predicted": round(pred.tensor_bytes + pred.allocator_reserve_bytes),
            "cuda_non_torch_bytes_measured": most("cuda_non_torch_bytes"),
            "cuda_context_bytes_predicted": round(pred.context_bytes),
            "device_used_bytes_measured": most("cuda_device_used_bytes"),
            "device_used_bytes_predicted": round(pred.total_bytes)}


def time_fields(cfg: TrainConfig, ranks: list[dict[str, Any]], cal: Calibration,
                warmup_steps: int = WARMUP_STEPS) -> dict[str, Any]:
    """Median step time of rank 0 after the warm-up steps beside the time model's, at the median padded width;
    tokens/s in padded positions over every rank, as the planner counts them."""
    from planner.timing import step_time

    times = ranks[0]["step_times_s"][warmup_steps:]
    n_steps = min(len(r["step_padded_tokens"]) for r in ranks)
    tokens = [sum(r["step_padded_tokens"][i] for r in ranks) for i in range(warmup_steps, n_steps)]
    width = round(_median([t / cfg.global_batch for t in tokens]) or 0)
    predicted = step_time(_at_width(cfg, width), cal)
    basis = time_model_basis(cfg.cluster.gpu.name, cal)
    # no shapes seen (a forward without input_ids): no token count rather than 0 tokens/s
    measured_tps = sum(tokens) / sum(times) if times and sum(tokens) > 0 and sum(times) > 0 else None
    return {"step_time_s_median_measured": _median(times), "step_time_s_predicted": predicted.step_time_s,
            "tokens_per_s_measured": measured_tps, "tokens_per_s_predicted": predicted.tokens_per_s,
            "steps_timed": len(times), "steps_warmup": min(warmup_steps, len(ranks[0]["step_times_s"])),
            "seq_len_time_measured": width or cfg.seq_len,
            "time_model_calibrated": basis != "placeholder", "time_model_basis": basis,
            "compute_efficiency": compute_efficiency(cfg.cluster.gpu.name, cal.compute_efficiency)}


def comparison(cfg: TrainConfig, ranks: list[dict[str, Any]], *, on_cuda: bool,
               cal: Calibration = DEFAULT) -> dict[str, Any]:
    """Every predicted/measured field of run_summary.json (units in the names)."""
    out: dict[str, Any] = {"device": cfg.cluster.gpu.name, "on_cuda": on_cuda, "seq_len_planned": cfg.seq_len}
    out |= tensor_fields(cfg, ranks, cal)
    out |= rss_fields(ranks)
    if on_cuda:
        out |= cuda_fields(cfg, ranks, cal)
    out |= time_fields(cfg, ranks, cal)
    # the keys of earlier versions, with the meaning of the fields above
    out["measured_tokens_per_s"] = out["tokens_per_s_measured"]
    out["predicted_tokens_per_s"] = out["tokens_per_s_predicted"]
    return out
