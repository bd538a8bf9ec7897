"""Online RL through TRL's GRPOTrainer (`grpo`: Shao et al. 2024, DeepSeekMath, Sec. 4.1: group-relative
advantages over num_generations completions per prompt) and RLOOTrainer (`rloo`: Ahmadian et al. 2024, REINFORCE
with the leave-one-out baseline). The plan's rollout settings become GRPOConfig / RLOOConfig fields
(`config_fields`, also what the emitted grpo_config.yaml holds); rewards are named on the command line
(runner.stages.rewards); prompts come from runner.stages.prompt_data.

The reference model is TRL's own: none when beta = 0, the adapter-disabled base under peft, and for full
fine-tuning a copy TRL loads from the policy's checkpoint in the policy's dtype (planner.rl.memory counts each).
Generation runs with transformers' `generate` (the only engine on the CPU) or vLLM as the plan says.
"""

from __future__ import annotations

from typing import Any

from planner.errors import PlanError
from planner.rl.settings import Generation, prompt_len
from planner.strategy import Method, Stage, TrainConfig
from runner.stages.models import StageModels


def config_class(cfg: TrainConfig) -> type:
    if cfg.stage is Stage.rloo:
        from trl import RLOOConfig

        return RLOOConfig
    from trl import GRPOConfig

    return GRPOConfig


def trainer_class(cfg: TrainConfig) -> type:
    if cfg.stage is Stage.rloo:
        from trl import RLOOTrainer

        return RLOOTrainer
    from trl import GRPOTrainer

    return GRPOTrainer


def rollout_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The plan's rollout settings as GRPOConfig / RLOOConfig fields (trl 1.16 trainer/grpo_config.py)."""
    r = cfg.rollout
    fields: dict[str, Any] = {
        "num_generations": r.num_generations,
        "max_completion_length": r.completion_len,
        "beta": r.kl_beta,
        "steps_per_generation": cfg.grad_accum * r.generation_steps,
        "num_iterations": r.num_iterations,
        "use_vllm": r.generation is not Generation.transformers,
    }
    if r.generation is not Generation.transformers:
        fields.update({"vllm_mode": "server" if r.generation is Generation.vllm_server else "colocate",
                       "vllm_max_model_length": cfg.seq_len})
        if r.generation is Generation.vllm_colocate:
            fields.update({"vllm_gpu_memory_utilization": r.vllm_memory, "vllm_enable_sleep_mode": r.vllm_sleep,
                           "vllm_tensor_parallel_size": r.vllm_tp})
    return fields


def config_fields(cfg: TrainConfig, opts: Any) -> dict[str, Any]:
    # TRL counts the generated tokens into num_input_tokens_seen itself; the Trainer's own count looks for input_ids
    return {**rollout_fields(cfg), "include_num_input_tokens_seen": "no", "eval_strategy": "no"}


def check_engine(cfg: TrainConfig, on_cuda: bool) -> None:
    """vLLM generation needs CUDA and the vllm package where the run happens (one line otherwise)."""
    if cfg.rollout.generation is Generation.transformers:
        return
    import importlib.util

    if not on_cuda or importlib.util.find_spec("vllm") is None:
        raise PlanError(f"plan {cfg} generates with vLLM, which needs CUDA GPUs and the vllm package here: "
                        "re-plan with --generation transformers, or run it where vLLM is installed")


def datasets(cfg: TrainConfig, opts: Any, tokenizer: Any) -> tuple[Any, Any]:
    """The prompts within the plan's prompt length; no eval split (evaluating would generate again)."""
    from runner.stages.prompt_data import fit_prompts, load_prompts, to_dataset

    prompts = fit_prompts(load_prompts(opts.data), tokenizer, prompt_len(cfg.seq_len, cfg.rollout), opts.data)
    return to_dataset(prompts), None


def load_models(cfg: TrainConfig, src: Any, opts: Any, *, on_cuda: bool) -> StageModels:
    from runner.model import ModelOptions, load_model, lora_config

    check_engine(cfg, on_cuda)
    mopts = ModelOptions(modules_to_save=opts.modules_to_save, rope_scaling=opts.rope_scaling, on_cuda=on_cuda)
    policy = load_model(cfg, src, mopts, wrap=False)
    peft_config = None if cfg.method is Method.full else lora_config(cfg, mopts)
    return StageModels(model=policy, peft_config=peft_config)


def make_trainer(models: StageModels, *, args: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any,
                 callbacks: list[Any], cfg: TrainConfig, opts: Any) -> Any:
    from runner.run_common import offloading_trainer
    from runner.stages.rewards import parse_rewards

    trainer = offloading_trainer(trainer_class(cfg), cfg)
    return trainer(model=models.model, reward_funcs=parse_rewards(opts.rewards), args=args,
                   train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                   callbacks=callbacks, peft_config=models.peft_config)
