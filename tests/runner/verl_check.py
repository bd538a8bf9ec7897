"""Run by tests/runner/test_verl_parser.py with the Python of a separate virtualenv holding verl 0.9.1 (installed
--no-deps: Ray, vLLM and the GPU stack are not needed to read a configuration): compose each emitted verl.yaml's
overrides onto verl's own ppo_trainer.yaml with Hydra, as `python -m verl.trainer.main_ppo key=value ...` does,
run verl's validate_config (batch arithmetic, micro-batch settings, the actor's dataclass checks) and print what
verl understood. Usage: python verl_check.py FILE.yaml ... -> one JSON line per file."""

from __future__ import annotations

import json
import os
import sys

import yaml


def _arg(key: str, value: object) -> str:
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if isinstance(value, list):
        return f"{key}=[{','.join(str(x) for x in value)}]"
    return f"{key}={value}"


def main() -> None:
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import validate_config

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    for path in sys.argv[1:]:
        with open(path) as f:
            overrides = yaml.safe_load(f)
        try:
            with initialize_config_dir(config_dir=config_dir, version_base=None):
                cfg = compose(config_name="ppo_trainer", overrides=[_arg(k, v) for k, v in overrides.items()])
            use_ref = bool(cfg.algorithm.use_kl_in_reward or cfg.actor_rollout_ref.actor.use_kl_loss)
            validate_config(cfg, use_reference_policy=use_ref, use_critic=True)
        except Exception as exc:  # noqa: BLE001 -- any refusal is the answer
            print(json.dumps({"file": path, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        arr = cfg.actor_rollout_ref
        print(json.dumps({
            "file": path, "train_batch_size": cfg.data.train_batch_size, "n": arr.rollout.n,
            "n_gpus": cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes, "lora_rank": arr.model.lora_rank,
            "micro_batch": arr.actor.ppo_micro_batch_size_per_gpu, "mini_batch": arr.actor.ppo_mini_batch_size,
            "gpu_memory_utilization": arr.rollout.gpu_memory_utilization, "free_cache_engine":
            arr.rollout.free_cache_engine, "tp": arr.rollout.tensor_model_parallel_size,
            "prompt_length": cfg.data.max_prompt_length, "response_length": cfg.data.max_response_length,
            "kl_coef": cfg.algorithm.kl_ctrl.kl_coef, "param_offload": arr.actor.fsdp_config.param_offload,
            "strategy": arr.actor.strategy, "critic_path": cfg.critic.model.path,
            "adv_estimator": cfg.algorithm.adv_estimator}), flush=True)


if __name__ == "__main__":
    main()
