"""Which attention kernels the pre-Ampere boards (V100, T4) run, and what ftplan accepts there.

torch's SDPA dispatch (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp): the flash and cuDNN kernels take
[sm80, sm121] (check_flash_attention_hardware_support, check_cudnn_hardware_support), the memory-efficient kernel
[sm50, sm121] in fp16 or fp32 below sm80 (check_mem_efficient_hardware_support, less_than_sm80_mem_efficient_dtypes):
on a V100 (7.0) or T4 (7.5) `--attn sdpa` in 16-mixed runs the memory-efficient kernel, forward and backward.
FlashAttention-2 supports "Ampere, Ada, or Hopper GPUs" (Dao-AILab/flash-attention README): `--attn flash` there is
one line and exit code 2."""

from __future__ import annotations

import pytest
from cli_helpers import run

from planner.build import build_config
from planner.gpus import FLASH_ATTENTION_2_MIN_CAPABILITY, GPUS, flash_attention_2_problem
from planner.strategy import Attn, Method, Precision
from planner.timing import step_time
from planner.validity import problems

PRE_AMPERE = {"V100-32G": (7, 0), "T4": (7, 5)}


@pytest.mark.parametrize("name", sorted(GPUS))
def test_every_board_has_its_compute_capability(name: str) -> None:
    gpu = GPUS[name]
    if gpu.sm_count == 0:
        assert gpu.compute_capability is None  # the CPU device
        return
    assert gpu.compute_capability is not None
    if name in PRE_AMPERE:
        assert gpu.compute_capability == PRE_AMPERE[name]
    else:
        assert gpu.compute_capability >= FLASH_ATTENTION_2_MIN_CAPABILITY
    assert (flash_attention_2_problem(gpu) is None) == (name not in PRE_AMPERE)


def _cfg(gpus: str, attn: Attn, precision: Precision = Precision.fp16_mixed):
    return build_config(model="llama-3.2-1b", gpus=gpus, method=Method.lora, precision=precision, seq_len=2048,
                        micro_batch=1, attn=attn, check=False)


@pytest.mark.parametrize("gpus", ["1xT4", "8xV100-32G"])
def test_flash_refused_before_ampere_and_sdpa_kept(gpus: str) -> None:
    found = problems(_cfg(gpus, Attn.flash))
    assert found and found[0].startswith("--attn flash is FlashAttention-2, which needs an Ampere or newer GPU")
    assert "use --attn sdpa" in found[0]
    assert not problems(_cfg(gpus, Attn.sdpa)) and not problems(_cfg(gpus, Attn.eager))


def test_flash_kept_where_it_runs() -> None:
    assert not problems(_cfg("1xA10G", Attn.flash, Precision.bf16_mixed))
    assert not problems(_cfg("8xA100-80G", Attn.flash, Precision.bf16_mixed))
    # the CPU device runs transformers' SDPA for --attn flash (runner/model.py attn_implementation)
    assert not [p for p in problems(_cfg("2xCPU", Attn.flash, Precision.fp32)) if "FlashAttention-2" in p]


def test_estimate_flash_on_t4_is_one_line_exit_2(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", "llama-3.2-1b", "--gpus", "1xT4",
                         "--method", "lora", "--seq-len", "2048", "--precision", "16-mixed", "--attn", "flash")
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "FlashAttention-2" in err and "T4 is 7.5" in err


@pytest.mark.parametrize("gpus", ["1xT4", "8xV100-32G"])
def test_sdpa_before_ampere_has_no_score_traffic(gpus: str) -> None:
    """No published throughput of the memory-efficient kernel on sm70 / sm75 was found (planner/gpus.py, the V100
    and T4 entries): SDPA there is priced as the attention's s x s matmuls at the GEMM rate, eager attention's
    matmuls without its score passes, so it stays below eager and does not move with --attn flash's refusal."""
    sdpa = step_time(_cfg(gpus, Attn.sdpa)).step_time_s
    eager = step_time(_cfg(gpus, Attn.eager)).step_time_s
    assert sdpa < eager
