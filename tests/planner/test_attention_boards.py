"""Which attention kernels the pre-Ampere boards (V100, T4) run, and what ftplan accepts there.

torch's SDPA dispatch (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp): the flash and cuDNN kernels take
[sm80, sm121] (check_flash_attention_hardware_support, check_cudnn_hardware_support), the memory-efficient kernel
[sm50, sm121] in fp16 or fp32 below sm80 (check_mem_efficient_hardware_support, less_than_sm80_mem_efficient_dtypes):
on a V100 (7.0) or T4 (7.5) `--attn sdpa` in 16-mixed runs the memory-efficient kernel, forward and backward.
FlashAttention-2 supports "Ampere, Ada, or Hopper GPUs" (Dao-AILab/flash-attention README): `--attn flash` there is
one line and exit code 2."""

from __future__ import annotations

import statistics

import pytest
from cli_helpers import run

from planner import kernels as kn
from planner.build import build_config
from planner.gpus import _MEM_EFFICIENT_TURING, FLASH_ATTENTION_2_MIN_CAPABILITY, GPUS, flash_attention_2_problem
from planner.kernels import FLASH_BACKWARD_OVER_FORWARD
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
    """SDPA's memory-efficient kernel keeps the scores on chip: on the T4 it runs at `_MEM_EFFICIENT_TURING`, on the
    V100 (no published figure) as the s x s matmuls at the GEMM rate, eager attention's matmuls without its score
    passes; either way below eager attention."""
    sdpa = step_time(_cfg(gpus, Attn.sdpa)).step_time_s
    eager = step_time(_cfg(gpus, Attn.eager)).step_time_s
    assert sdpa < eager


# ssiu/flash-attention-turing on a T4 (fp16, batch 4, 32 heads, head dim 128, no mask), 512-16384 tokens: Nsight
# Compute's SM throughput (%) of torch's memory-efficient forward and of the port's, and the port's speedup
# (README, utils/Compute_Throughput.png and utils/Speed_Up.png of 2025-03-10).
TURING_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
MEM_EFFICIENT_FWD_PCT = (27.77, 29.18, 29.98, 30.29, 30.16, 30.23)
PORT_FWD_PCT = (52.52, 57.63, 60.33, 62.23, 63.20, 63.57)
PORT_FWD_SPEEDUP = (1.86, 1.95, 1.99, 2.03, 2.07, 2.07)


def test_sm_throughput_tracks_the_published_forward_speedup() -> None:
    """Reading Nsight's SM throughput as each kernel's share of the tensor peak: the two kernels' ratio reproduces the
    port's published speedup within 2% at every length."""
    for s, mem, port, speedup in zip(TURING_LENGTHS, MEM_EFFICIENT_FWD_PCT, PORT_FWD_PCT, PORT_FWD_SPEEDUP,
                                     strict=True):
        assert port / mem == pytest.approx(speedup, rel=0.02), s


def test_memory_efficient_share_on_the_t4_from_the_published_figures() -> None:
    """planner/gpus.py `_MEM_EFFICIENT_TURING`: forward 0.30 (the kernel's own SM throughput from 2048 tokens on; the
    later README's "up to 66%" at "up to 2.19x" agrees), backward from the port's two kernels (dQ: 3 GEMM units at up
    to 45%, dK dV: 4 at up to 49%) and its "up to 1.51x" over torch's causal backward, which does 5 units; forward +
    backward in FlashAttention-2's count (backward 2.5x the forward's FLOPs)."""
    fwd = statistics.median(MEM_EFFICIENT_FWD_PCT[2:]) / 100
    assert fwd == pytest.approx(0.30, abs=0.005) and fwd == pytest.approx(0.66 / 2.19, abs=0.005)
    bwd = 5 / (1.51 * (3 / 0.45 + 4 / 0.49))
    assert bwd == pytest.approx(0.223, abs=0.001)
    both = (1 + FLASH_BACKWARD_OVER_FORWARD) / (1 / fwd + FLASH_BACKWARD_OVER_FORWARD / bwd)
    assert both == pytest.approx(_MEM_EFFICIENT_TURING, abs=0.005)
    assert GPUS["T4"].attention_efficiency == _MEM_EFFICIENT_TURING
    assert GPUS["V100-32G"].attention_efficiency is None  # no published sm70 figure


def test_t4_sdpa_attention_scales_with_the_square_not_with_score_traffic() -> None:
    """The memory-efficient kernel's causal blocks at a fixed share: twice the tokens, 3.5-4.1x the attention core
    (four times the blocks, fuller waves), where the matmul stand-in's score writes made 512 tokens memory-bound."""
    m = _cfg("1xT4", Attn.sdpa).model
    gpu = GPUS["T4"]
    core = {s: sum(kn.flash_attention_s(m, 1, s, 1, gpu, gpu.peak_fp16_flops_per_s, gpu.attention_efficiency,
                                        Attn.sdpa)) for s in (1024, 2048, 4096)}
    assert 3.5 < core[2048] / core[1024] < 4.1 and 3.5 < core[4096] / core[2048] < 4.1
