"""Preference stages of `ftplan run` through TRL's trainers: `rm` (reward model, RewardTrainer) and `dpo`
(DPOTrainer). runner.stages.common holds the loop they share with the SFT path's conventions (metrics.jsonl,
run_summary.json, checkpoints, resume); rm.py and dpo.py build the model and the trainer."""

from __future__ import annotations

from planner.errors import PlanError
from planner.strategy import Stage

TRL_STAGES = (Stage.rm, Stage.dpo)


def ppo_refusal() -> PlanError:
    """TRL 1.16 ships no PPO trainer (neither trl/trainer nor trl/experimental holds one); its online-RL
    trainers are GRPOTrainer and RLOOTrainer, which take reward functions rather than a critic."""
    return PlanError("stage 'ppo' is not run by ftplan run: TRL 1.16 has no PPO trainer; train a reward model "
                     "(--stage rm) and use DPO (--stage dpo), or TRL's GRPOTrainer / RLOOTrainer for online RL")
