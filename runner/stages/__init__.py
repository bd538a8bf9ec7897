"""Preference stages of `ftplan run` through TRL's trainers: `rm` (reward model, RewardTrainer) and `dpo`
(DPOTrainer). runner.stages.common holds the loop they share with the SFT path's conventions (metrics.jsonl,
run_summary.json, checkpoints, resume); rm.py and dpo.py build the model and the trainer. Which stages run
is planner.runnable_stages (ppo does not: TRL 1.16 ships no PPO trainer)."""
