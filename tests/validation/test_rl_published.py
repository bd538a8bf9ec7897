"""Published online-RL figures with their configurations, against the planner (README "Online RL", table
"Published"). `pytest -s` prints ftplan's answer beside each figure.

1. TRL PR #3162 (toslali-ibm, 2025-03/04, "Co-Locating vLLM w/ training"): GRPO of Qwen2.5-Math-7B (Qwen2.5-7B's
   shape) under DeepSpeed ZeRO-3 (recipes/accelerate_configs/zero3.yaml, full fine-tuning, bf16, checkpointing),
   vLLM colocated on 7 GPUs with vllm_gpu_memory_utilization=0.3, TP 1, DP 7, against the then-standard 7 training
   GPUs + 1 GPU running the vLLM server: the colocated run fits and trains "~2x faster" ("identical results with 1
   fewer GPU"). The batch shape is not stated in the PR: open-r1's GRPO recipes of the time used 1024-token
   completions and 7 generations, which we take, and per-device batches 4 and 16 bracket what they ran.
   Tolerance on the ratio: 25%.

2. TRL's documentation, grpo_trainer.md "GRPO at scale: train a 70B+ model on multiple nodes" (trl main,
   docs/source/grpo_trainer.md, the SLURM example): Qwen2.5-72B, full, 4 nodes x 8 GPUs training under
   examples/accelerate_configs/deepspeed_zero3.yaml (ZeRO-3, no offload), per_device_train_batch_size=4, the other
   GRPOConfig fields at their defaults (TRL 1.16: num_generations 8, max_completion_length 512, beta 0,
   gradient_checkpointing on, bf16), `trl vllm-serve --tensor_parallel_size 8` on a 5th node (its default
   gpu_memory_utilization 0.9). The GPU is not named; Hugging Face's cluster is H100 80 GB. Prompts (DeepMath-103K
   questions) are planned at 512 tokens, the max_prompt_length GRPOConfig had when the example was written, and
   beta at 0 (today's default) and 0.04 (the default then). Published: it trains (a fits label for the training
   GPUs and the server).

3. verl's "Hardware Resource Needed for RL" (volcengine/verl docs/perf/device_tuning.rst, updated 06/25/2025),
   rows tagged MIN ("the configuration that can run with the minimum resources"), full-parameter GRPO with FSDP
   and vLLM, each with its script under examples/tuning/:
   - Qwen2-7B-Instruct on 2 x H800 (7b/qwen2-7b_grpo_2_h800_fsdp_vllm.sh),
   - Qwen2.5-Coder-14B-Instruct on 4 x H800 (14b/qwen2_14b_grpo_4_h800_fsdp_vllm.sh),
   - Qwen2-72B-Instruct on 32 x H800 (70b/qwen2-70b_grpo_32_h800_fsdp_vllm.sh).
   All three: actor param_offload + optimizer_offload (ftplan --offload all under FSDP full_shard), gradient
   checkpointing, train_batch_size 1024 prompts x rollout.n 5, ppo_mini_batch_size 256 prompts (one generation
   feeds 4 optimizer steps), the KL loss at 0.001 (a reference model), vLLM colocated and asleep while training
   (verl's free_cache_engine, on by default). 7B / 14B: prompts and responses of up to 1024 tokens each,
   ppo_micro_batch_size_per_gpu 16, vLLM TP 2 at 0.6 / TP 4 at 0.5. 72B: 512 + 512 tokens, dynamic batches of
   ppo_max_token_len_per_gpu 24000 (planned as micro-batches of 20 full-length sequences, 20,480 tokens), vLLM
   TP 16 at 0.6 across two nodes, which ftplan plans as TP 8 (TRL's colocated engines stay within a node; TP 8
   holds twice the weights per GPU, so the plan is the harder one). ftplan plans these as TRL's GRPO: verl keeps
   its reference on the host (ref param_offload) where TRL shards it over the GPUs, so the plan counts more than
   verl holds; the sequences are planned at their full length (verl removes padding: GSM8K's are shorter).
   Published: each fits.

4. NeMo RL's performance summary (NVIDIA-NeMo/RL docs/about/performance-summary.md, v0.5 table, commit 108bffd):
   GRPO of Llama-3.1-8B-Instruct on 16 x H100 (recipe examples/configs/recipes/llm/performance/
   grpo-llama3.1-8b-instruct-2n8g.yaml over grpo_math_1B.yaml): 64 prompts x 32 generations per step (G-GBS 2048),
   train_global_batch_size 512 (4 optimizer steps per generation), max total length 4096, vLLM colocated (TP 1,
   gpu_memory_utilization 0.6), KL 0.01 against a reference, sequence packing into 4096-token micro-batches,
   Megatron training (PP 2, activation checkpointing, distributed optimizer): "Total Step time" 92.8 s at an
   average generated sequence of 1,019 tokens. ftplan plans it with data parallelism (ZeRO-1, the distributed
   optimizer's sharding; TRL-style GRPO plans take no PP), micro-batches of 4 sequences and a 128-token prompt:
   completions of 1,019 tokens on average within the 3,968 the total length leaves (--completion-len-mean 1019
   --completion-len 3968, planner/rl/lengths.py), and, to bracket it, every completion at the average or the longest.
"""

from __future__ import annotations

import pytest

from planner.build import build_config
from planner.estimate import estimate
from planner.rl import generation as gen
from planner.rl.settings import Generation
from planner.strategy import FsdpStrategy, GradCkpt, Method, Offload, Stage
from planner.validity import problems

GIB = 2**30

COMMON = dict(model="qwen2.5-7b", stage=Stage.grpo, method=Method.full, zero=3, grad_ckpt=GradCkpt.full, seq_len=1536,
              completion_len=1024, num_generations=7)


def _report(name: str, est) -> None:
    m = est.memory
    print(f"\n{name}: fits={est.fits} {m.total / GIB:.1f} GiB of {est.gpu_memory_bytes / GIB:.0f} "
          f"(phase {m.phase}); step {est.time.step_time_s:.2f} s")


# --- 1. TRL PR #3162 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("micro_batch", [4, 16])
def test_pr3162_qwen_7b_colocated_at_0_3_fits_on_7_gpus(micro_batch: int) -> None:
    est = estimate(build_config(gpus="7xH100", generation=Generation.vllm_colocate, vllm_memory=0.3,
                                micro_batch=micro_batch, **COMMON))
    _report(f"PR #3162 colocated, per-device {micro_batch}", est)
    assert est.fits, est.fit_failures


@pytest.mark.xfail(strict=True, reason="ftplan predicts colocation about 1.1-1.3x faster than a 1-GPU server, the PR "
                   "measured ~2x against TRL 0.16's server, which ftplan (TRL 1.16) does not plan: its trainer sent "
                   "one engine every prompt once with n = num_generations (trl v0.16.0 grpo_trainer.py; the "
                   "colocated engines of v0.18 generate with n = 1), on vLLM's V0 engine where verl's "
                   "docs/README_vllm0.7.md reports generation-time bursts for n > 1, and it pushed the weights "
                   "one parameter at a time, an HTTP request + NCCL broadcast + barrier each (vllm_client.py "
                   "update_model_params; ~1.5 ms per tensor by TRL PR #5249's 0.6 -> 0.15 s for Qwen2-0.5B, "
                   "~0.5 s per step here: too little alone). TRL 1.16 streams the sync in one request; a GPU run "
                   "of both versions would split the rest")
@pytest.mark.parametrize("micro_batch", [4, 16])
def test_pr3162_qwen_7b_colocated_about_2x_faster_than_a_server(micro_batch: int) -> None:
    colo = estimate(build_config(gpus="7xH100", generation=Generation.vllm_colocate, vllm_memory=0.3,
                                 micro_batch=micro_batch, **COMMON))
    server = estimate(build_config(gpus="7xH100", generation=Generation.vllm_server, vllm_server_gpus=1,
                                   micro_batch=micro_batch, **COMMON))
    print(f"\nPR #3162 per-device {micro_batch}: server / colocated step = "
          f"{server.time.step_time_s / colo.time.step_time_s:.2f} (published ~2)")
    assert server.time.step_time_s / colo.time.step_time_s == pytest.approx(2.0, rel=0.25)


# --- 2. TRL docs: GRPO at scale, Qwen2.5-72B on 4 nodes + a vLLM server node ---------------------------

@pytest.mark.parametrize("kl_beta", [0.0, 0.04])
def test_trl_docs_qwen_72b_zero3_on_32_h100_with_a_server_node_fits(kl_beta: float) -> None:
    cfg = build_config(model="qwen2.5-72b", stage=Stage.grpo, method=Method.full, zero=3, grad_ckpt=GradCkpt.full,
                       gpus="4x8xH100", micro_batch=4, seq_len=1024, completion_len=512, num_generations=8,
                       kl_beta=kl_beta, generation=Generation.vllm_server, vllm_server_gpus=8, vllm_tp=8)
    est = estimate(cfg)
    server = gen.vllm_budget(cfg)
    _report(f"TRL docs 72B, beta {kl_beta}", est)
    print(f"  server (TP 8, 0.9): {server.weights / GIB:.1f} GiB weights, {server.kv_cache / GIB:.1f} GiB KV cache "
          f"for {server.max_sequences} sequences of {cfg.seq_len} tokens (the step's batch: "
          f"{gen.engine_batch(cfg)})")
    assert est.fits, est.fit_failures
    assert problems(cfg) == []  # the server's engine holds the weights and at least one sequence
    assert server.max_sequences >= gen.engine_batch(cfg)  # ... and the whole step's batch at once


# --- 3. verl device_tuning.rst: MIN resources for full GRPO ------------------------------------------

VERL_MIN = {
    # row: (model, gpus, micro-batch, grad-accum (optimizer step of 256 prompts x 5), seq, completion, vLLM TP, share)
    "Qwen2-7B, 2xH800": ("qwen2.5-7b", "2xH800", 16, 40, 2048, 1024, 2, 0.6),
    "Qwen2.5-Coder-14B, 4xH800": ("qwen2.5-14b", "4xH800", 16, 20, 2048, 1024, 4, 0.5),
    "Qwen2-72B, 32xH800": ("qwen2.5-72b", "4x8xH800", 20, 2, 1024, 512, 8, 0.6),
}


@pytest.mark.parametrize("row", list(VERL_MIN))
def test_verl_min_resources_full_grpo_fits(row: str) -> None:
    model, gpus, micro, accum, seq, completion, tp, share = VERL_MIN[row]
    cfg = build_config(model=model, stage=Stage.grpo, method=Method.full, fsdp=FsdpStrategy.full_shard,
                       offload=Offload.all, grad_ckpt=GradCkpt.full, gpus=gpus, micro_batch=micro, grad_accum=accum,
                       generation_steps=4, seq_len=seq, completion_len=completion, num_generations=5, kl_beta=0.001,
                       generation=Generation.vllm_colocate, vllm_memory=share, vllm_tp=tp, vllm_sleep=True,
                       sync_each_batch=True)  # verl's dp_actor: one loss.backward() per micro-batch, no no_sync
    est = estimate(cfg)
    _report(f"verl MIN {row}", est)
    assert cfg.global_batch * cfg.generation_steps == 1024 * 5  # train_batch_size x rollout.n per generation
    assert est.fits, est.fit_failures


# --- 4. NeMo RL v0.5: Llama-3.1-8B GRPO step time on 16 x H100 -----------------------------------------

NEMO_STEP_S = 92.8  # per generation of 2048 completions and its 4 optimizer steps
NEMO = dict(model="llama-3.1-8b", stage=Stage.grpo, method=Method.full, zero=1, grad_ckpt=GradCkpt.full,
            gpus="2x8xH100", micro_batch=4, grad_accum=8, generation_steps=4, num_generations=32, kl_beta=0.01,
            generation=Generation.vllm_colocate, vllm_memory=0.6, vllm_tp=1, vllm_sleep=True)
NEMO_PROMPT = 128


def _nemo_step_s(seq_len: int, mean: int | None = None) -> float:
    est = estimate(build_config(seq_len=seq_len, completion_len=seq_len - NEMO_PROMPT, completion_len_mean=mean,
                                **NEMO))
    return est.time.step_time_s * NEMO["generation_steps"]


def test_nemo_rl_llama_8b_step_lies_between_the_average_and_the_longest_completion() -> None:
    """Every completion planned at the average length (1,019 tokens) and at the longest allowed (4,096) bracket the
    published step, and so does the plan of completions stopping at EOS around the average."""
    at_mean, at_max, spread = _nemo_step_s(1019), _nemo_step_s(4096), _nemo_step_s(4096, mean=1019)
    print(f"\nNeMo RL Llama-3.1-8B, 16xH100: published {NEMO_STEP_S} s; ftplan {at_mean:.1f} s at the average "
          f"length, {at_max:.1f} s at the longest, {spread:.1f} s with the average given")
    assert at_mean < NEMO_STEP_S < at_max
    assert at_mean < spread < at_max


@pytest.mark.xfail(strict=True, reason="with the lengths given (1,019 tokens on average, 3,968 at most) ftplan "
                   "predicts ~134 s against 92.8 s (+44%): generation ~25 s (every engine's 128 completions decode "
                   "until the longest of 2,048 stops, ~3,968 steps of weight reads), but the training and scoring "
                   "passes run at ~4,096 tokens because ftplan plans TRL's GRPO, which pads each rank's generation "
                   "batch to its longest completion. NeMo RL packs sequences into 4,096-token micro-batches "
                   "(policy.sequence_packing), so its passes follow the mean: planned so, the step would be ~54 s "
                   "(-42%). Missing: a packed (padding-free) trainer for grpo, NeMo's Megatron PP 2 training, and "
                   "its refit and offload / onload between generation and training")
def test_nemo_rl_llama_8b_step_time_with_the_average_and_longest_completion() -> None:
    assert _nemo_step_s(4096, mean=1019) == pytest.approx(NEMO_STEP_S, rel=0.25)
