"""Published GRPO figures with their configurations, against the planner (README "Online RL" table).

TRL PR #3162 (toslali-ibm, 2025-03/04, "Co-Locating vLLM w/ training"): GRPO of Qwen2.5-Math-7B (Qwen2.5-7B's
shape) under DeepSpeed ZeRO-3 (recipes/accelerate_configs/zero3.yaml, full fine-tuning, bf16, checkpointing), vLLM
colocated on 7 GPUs with vllm_gpu_memory_utilization=0.3, TP 1, DP 7, against the then-standard 7 training GPUs +
1 GPU running the vLLM server: the colocated run fits and trains "~2x faster" ("identical results with 1 fewer
GPU"). The batch shape is not stated in the PR: open-r1's GRPO recipes of the time used 1024-token completions and
7 generations, which we take, and per-device batches 4 and 16 bracket what they ran. Tolerance on the ratio: 25%.
"""

from __future__ import annotations

import pytest

from planner.build import build_config
from planner.estimate import estimate
from planner.rl.settings import Generation
from planner.strategy import GradCkpt, Method, Stage

COMMON = dict(model="qwen2.5-7b", stage=Stage.grpo, method=Method.full, zero=3, grad_ckpt=GradCkpt.full, seq_len=1536,
              completion_len=1024, num_generations=7)


@pytest.mark.parametrize("micro_batch", [4, 16])
def test_pr3162_qwen_7b_colocated_at_0_3_fits_on_7_gpus(micro_batch: int) -> None:
    est = estimate(build_config(gpus="7xH100", generation=Generation.vllm_colocate, vllm_memory=0.3,
                                micro_batch=micro_batch, **COMMON))
    assert est.fits, est.fit_reasons


@pytest.mark.xfail(strict=True, reason="ftplan predicts colocation 1.14-1.36x faster than a 1-GPU server, the PR "
                   "measured ~2x: decoding is modelled at the datasheet bandwidth on both sides, so the server's "
                   "single engine (7x the batch, waves bounded by its KV cache) is not slowed by what the PR's "
                   "server paid (HTTP round trips, one engine's scheduler); needs a GPU run to split")
@pytest.mark.parametrize("micro_batch", [4, 16])
def test_pr3162_qwen_7b_colocated_about_2x_faster_than_a_server(micro_batch: int) -> None:
    colo = estimate(build_config(gpus="7xH100", generation=Generation.vllm_colocate, vllm_memory=0.3,
                                 micro_batch=micro_batch, **COMMON))
    server = estimate(build_config(gpus="7xH100", generation=Generation.vllm_server, vllm_server_gpus=1,
                                   micro_batch=micro_batch, **COMMON))
    assert server.time.step_time_s / colo.time.step_time_s == pytest.approx(2.0, rel=0.25)
