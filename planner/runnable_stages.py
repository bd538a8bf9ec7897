"""Which stage / method / optimizer combinations `ftplan run` executes: the stage half of the runnable rules
(pure data, no torch; the parallelism half, TP / PP / multi-node, lives with those engines).

- `pt`, `sft`: the transformers Trainer; `rm`, `dpo`: TRL's RewardTrainer / DPOTrainer (runner.stages), all
  three methods (full, LoRA, QLoRA) and every optimizer: bitsandbytes' NF4 layers and 8-bit / paged optimizers
  run on CUDA and on its CPU backend (runner.quant).
- `rm`, `dpo` run with data parallelism only (DDP, FSDP, DeepSpeed ZeRO): TRL's trainers take the Trainer's
  engines, not tensor or pipeline parallel ones.
- `grpo`, `rloo`: TRL's GRPOTrainer / RLOOTrainer (runner.stages.grpo), generating with transformers' `generate`
  or a colocated vLLM engine (which needs CUDA and the vllm package where it runs); a vLLM server is started by the
  user (`trl vllm-serve`, the command launch.sh prints), so such plans are emitted, not run. Both trainers refuse
  Liger's fused linear cross-entropy (trl_fused_loss_refusal).
- `ppo`: TRL 1.16 ships no PPO trainer (neither trl/trainer nor trl/experimental holds one): PPO plans are handed to
  verl (verl.yaml and its launch line in the emitted files, planner.rl.verl), which needs GPUs, Ray and vLLM.
"""

from __future__ import annotations

from planner.rl.settings import Generation
from planner.strategy import CrossEntropy, Stage, TrainConfig

PPO_REFUSAL = ("stage 'ppo' is not run by ftplan run: TRL 1.16 has no PPO trainer; the plan is handed to verl "
               "(--emit writes verl.yaml and its launch line: it needs GPUs, Ray and vLLM), or use TRL's GRPOTrainer "
               "/ RLOOTrainer here (--stage grpo / rloo)")
SERVER_REFUSAL = ("generation on a vLLM server: start `trl vllm-serve` on its GPUs first (--emit's launch.sh prints "
                  "the command), then train with the emitted files; ftplan run does not start the server")
TRL_STAGES = (Stage.rm, Stage.dpo, Stage.grpo, Stage.rloo)


FUSED_LOSS_REFUSAL = ("TRL's {STAGE} trainer computes log-probabilities through its own fused LM head and refuses "
                      "Liger's fused linear cross-entropy: re-plan with --cross-entropy standard (--kernels liger "
                      "keeps Liger's layer kernels)")


def trl_refuses_fused_loss(cfg: TrainConfig) -> bool:
    """TRL 1.16's GRPOTrainer computes log-probabilities through its own fused LM head and raises on Liger's fused
    linear cross-entropy (trl/trainer/grpo_trainer.py: `liger_kernel_config={"fused_linear_cross_entropy": True}` is
    not supported); RLOOTrainer likewise."""
    return cfg.stage in (Stage.grpo, Stage.rloo) and cfg.cross_entropy is CrossEntropy.fused


def trl_fused_loss_refusal(cfg: TrainConfig) -> str | None:
    """FUSED_LOSS_REFUSAL for this plan, None where its loss runs."""
    return FUSED_LOSS_REFUSAL.format(STAGE=cfg.stage.value.upper()) if trl_refuses_fused_loss(cfg) else None


def stage_refusal(cfg: TrainConfig) -> str | None:
    """Why `ftplan run` does not execute this plan's stage, method and optimizer; None when it does."""
    if cfg.stage is Stage.ppo:
        return PPO_REFUSAL
    if cfg.stage in (Stage.grpo, Stage.rloo) and cfg.rollout.generation is Generation.vllm_server:
        return SERVER_REFUSAL
    if cfg.stage in TRL_STAGES and (cfg.tp > 1 or cfg.pp > 1):
        return (f"stage '{cfg.stage.value}' runs through TRL's trainers, which take data parallelism only "
                f"(DDP, FSDP, DeepSpeed ZeRO); plan {cfg} uses TP/PP: re-plan with --tp 1 --pp 1")
    return trl_fused_loss_refusal(cfg)


def stage_runnable(cfg: TrainConfig) -> bool:
    return stage_refusal(cfg) is None
