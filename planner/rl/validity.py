"""Which online RL plans can exist, with the reason when one cannot (planner.validity calls `rl_problems`)."""

from __future__ import annotations

from planner.gpus import is_cpu
from planner.rl import generation as gen
from planner.rl.settings import Generation, rollout_problems
from planner.strategy import Engine, FsdpStrategy, Quant, Stage, TrainConfig


def rl_problems(cfg: TrainConfig) -> list[str]:
    r = cfg.rollout
    out = rollout_problems(cfg.seq_len, cfg.global_batch, r)
    if out:
        return out
    stage = cfg.stage.value
    if cfg.stage in (Stage.grpo, Stage.rloo) and r.num_generations < 2:
        out.append(f"stage {stage} needs at least 2 generations per prompt for its group baseline "
                   f"(--num-generations {r.num_generations})")
    if cfg.tp > 1 or cfg.pp > 1:
        trainer = "verl's FSDP workers" if cfg.stage is Stage.ppo else "TRL's trainers"
        out.append(f"stage {stage} trains through {trainer}, which take data parallelism only: --tp 1 --pp 1")
    if cfg.stage is Stage.ppo:
        if cfg.engine is not Engine.fsdp or cfg.fsdp is not FsdpStrategy.full_shard:
            out.append("stage ppo is handed to verl, whose workers shard actor, critic, reference and reward with "
                       "FSDP: plan with --fsdp full_shard (--offload all for verl's parameter and optimizer offload)")
        if r.generation is not Generation.vllm_colocate:
            out.append("stage ppo is handed to verl, which generates with vLLM beside the models it trains "
                       "(its hybrid engine): --generation vllm-colocate")
    if r.generation is Generation.transformers:
        return out
    if is_cpu(cfg.cluster.gpu):
        out.append("vLLM generates on CUDA GPUs: plan the CPU with --generation transformers")
        return out
    if cfg.quant is Quant.int8:
        out.append("vLLM has no in-flight 8-bit quantization (TRL refuses Linear8bitLt): --quant nf4 or "
                   "--generation transformers")
    if r.generation is Generation.vllm_colocate:
        if r.vllm_server_gpus:
            out.append("--vllm-server-gpus is for --generation vllm-server")
        if cfg.world_size % r.vllm_tp or r.vllm_tp > cfg.cluster.gpus_per_node:
            out.append(f"--vllm-tp {r.vllm_tp} must divide the {cfg.world_size} training GPUs within a node "
                       "(TRL's colocated engines are groups of consecutive ranks)")
    else:
        if r.vllm_server_gpus < 1:
            out.append("--generation vllm-server needs --vllm-server-gpus (GPUs of its own for `trl vllm-serve`)")
        elif r.vllm_server_gpus % r.vllm_tp:
            out.append(f"--vllm-tp {r.vllm_tp} must divide the server's {r.vllm_server_gpus} GPUs")
    if not out:
        budget = gen.vllm_budget(cfg)
        if budget.max_sequences < 1:
            out.append(f"vLLM's {budget.budget / 2**30:.1f} GiB ({r.vllm_memory:g} of the GPU) holds "
                       f"{budget.weights / 2**30:.1f} GiB of weights and {budget.activations / 2**30:.1f} GiB of "
                       f"activations but not one {cfg.seq_len}-token sequence: raise --vllm-memory or --vllm-tp")
    return out
