"""reports.run_report: a ratio only between figures of the same quantity (made-up summaries, CPU and CUDA)."""

from __future__ import annotations

from typing import Any

from reports.run_report import run_summary_table, summary_notes, summary_rows

GIB = 2**30


def _summary(**kw: Any) -> dict[str, Any]:
    base = {"plan": "Z2-TP1-PP1-DP2-mb8-ga1", "steps": 30, "device": "CPU", "on_cuda": False, "seq_len_planned": 64,
            "peak_tensor_bytes_measured": 92 * 2**20, "peak_tensor_bytes_predicted": 90 * 2**20,
            "peak_tensor_source": "profiler.tracker.StorageTracker", "peak_tensor_steps": 3,
            "seq_len_memory_measured": 64, "rss_above_baseline_bytes": 256 * 2**20, "rss_peak_since_baseline": True,
            "step_time_s_median_measured": 1.8, "step_time_s_predicted": 0.24, "tokens_per_s_measured": 569.0,
            "tokens_per_s_predicted": 4356.0, "steps_timed": 27, "steps_warmup": 3, "seq_len_time_measured": 64,
            "time_model_calibrated": False, "time_model_basis": "placeholder", "compute_efficiency": 0.3,
            "eval_loss": 2.0, "eval_perplexity": 7.39}
    return base | kw


def _rows(s: dict[str, Any]) -> dict[str, Any]:
    return {r.quantity: r for r in summary_rows(s)}


def test_cpu_rows_compare_tensors_with_tensors_and_print_no_uncalibrated_speed_ratio() -> None:
    rows = _rows(_summary())
    tensor = rows["peak tensor memory, most loaded rank"]
    assert (tensor.predicted, tensor.measured, tensor.ratio) == ("90.0 MiB", "92.0 MiB", "1.02x")
    rss = rows["RSS above baseline, most loaded rank"]
    assert rss.predicted == "-" and rss.ratio == "-" and "no planner figure" in rss.note
    for name in ("step time", "tokens/s (padded, all ranks)"):
        assert rows[name].ratio == "not calibrated"
    assert "not calibrated for CPU" in rows["step time"].note and "--calibration" in rows["step time"].note
    assert not any("reserved" in q or "nvidia-smi" in q for q in rows)  # no CUDA rows on the CPU


def test_calibrated_speed_rows_have_ratios_and_name_their_basis() -> None:
    rows = _rows(_summary(time_model_calibrated=True, time_model_basis="calibration", compute_efficiency=0.04))
    assert rows["step time"].ratio == "7.50x" and rows["tokens/s (padded, all ranks)"].ratio == "0.13x"
    assert "calibrated for CPU (compute efficiency 0.04)" in rows["step time"].note


def test_cuda_rows_each_with_the_planners_matching_figure() -> None:
    s = _summary(device="A800", on_cuda=True, peak_tensor_bytes_measured=30 * GIB, peak_tensor_bytes_predicted=29 * GIB,
                 cuda_reserved_peak_bytes_measured=32 * GIB, cuda_reserved_peak_bytes_predicted=30.45 * GIB,
                 cuda_non_torch_bytes_measured=0.6 * GIB, cuda_context_bytes_predicted=0.5 * GIB,
                 device_used_bytes_measured=33 * GIB, device_used_bytes_predicted=30.95 * GIB,
                 time_model_calibrated=True, time_model_basis="published", compute_efficiency=0.55)
    rows = _rows(s)
    assert rows["peak tensor memory, most loaded rank"].ratio == "1.03x"
    assert "max_memory_allocated" in rows["peak tensor memory, most loaded rank"].note
    assert rows["peak reserved by PyTorch's allocator"].ratio == "1.05x"
    assert rows["CUDA context, NCCL and library workspaces"].ratio == "1.20x"
    assert rows["device memory used (nvidia-smi)"].ratio == "1.07x"
    assert rows["RSS above baseline, most loaded rank"].ratio == "-"
    assert rows["step time"].ratio == "7.50x" and "published default efficiency 0.55" in rows["step time"].note


def test_shape_and_step_count_notes() -> None:
    rows = _rows(_summary(seq_len_memory_measured=20, seq_len_time_measured=18))
    assert "planner at seq 20" in rows["peak tensor memory, most loaded rank"].note
    assert "planner at seq 18" in rows["step time"].note
    few = _rows(_summary(steps_timed=0, steps_warmup=2, step_time_s_median_measured=None, tokens_per_s_measured=None))
    assert few["step time"].measured == "-" and "run more steps" in few["step time"].note


def test_table_and_notes_render() -> None:
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(run_summary_table(_summary()))
    text = console.export_text()
    assert "1.02x" in text and "not calibrated" in text and "eval perplexity" in text
    assert len(summary_notes(_summary())) == 4
