"""Online RL stages: GRPO and RLOO (TRL's GRPOTrainer / RLOOTrainer) and PPO (handed to verl).

- `settings`: the rollout part of a TrainConfig (generations per prompt, completion length, KL beta, the
  generation engine: transformers' `generate`, vLLM colocated or vLLM on its own GPUs);
- `generation`: KV cache, vLLM's memory budget, prefill and decode time, the weight sync;
- `memory`: the stage's peak per GPU (the policy's training step from planner.memory, plus the reference and
  reward models, the buffered generations and the generation engine, with a generation phase);
- `timing`: the stage's step (the policy's training step from planner.timing, plus generation, scoring and sync);
- `search`: the generation settings the plan searches (colocate vs server, memory utilization, generation batch);
- `verl`: a PPO plan as verl's configuration and launch command.
"""
