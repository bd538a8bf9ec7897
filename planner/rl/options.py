"""The rollout options (planner.options.RolloutArgs) as a TrainConfig's Rollout and as the search's RolloutSpace."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from planner.rl.generation import VLLM_SERVER_MEMORY
from planner.rl.settings import Generation, Rollout, RolloutSpace, default_rollout
from planner.strategy import Stage

if TYPE_CHECKING:
    from planner.options import RolloutArgs


def rollout_from(args: RolloutArgs, stage: Stage) -> Rollout:
    """One rollout: the stage's defaults, with what the options set (a server's memory share defaults to
    `trl vllm-serve`'s 0.9)."""
    r = default_rollout(stage)
    given = {name: getattr(args, name) for name in ("num_generations", "kl_beta", "generation", "vllm_memory",
                                                    "vllm_sleep", "vllm_server_gpus", "vllm_tp", "generation_steps",
                                                    "reward_model")}
    r = replace(r, completion_len=args.completion_len, completion_len_mean=args.completion_len_mean,
                num_iterations=args.num_iterations,
                **{k: v for k, v in given.items() if v is not None})
    if r.generation is Generation.vllm_server and args.vllm_memory is None:
        r = replace(r, vllm_memory=VLLM_SERVER_MEMORY)
    return r


def rollout_space(args: RolloutArgs, stage: Stage) -> RolloutSpace:
    """What `plan` searches: every generation setting the options leave open (PPO: verl's colocated vLLM)."""
    space = RolloutSpace()
    if stage is Stage.ppo:
        space = replace(space, generations=(Generation.vllm_colocate,))
    if args.generation is not None:
        space = replace(space, generations=(args.generation,))
    if args.vllm_memory is not None:
        space = replace(space, vllm_memory=args.vllm_memory)
    if args.vllm_sleep is not None:
        space = replace(space, vllm_sleep=(args.vllm_sleep,))
    if args.vllm_server_gpus is not None:
        space = replace(space, vllm_server_gpus=(args.vllm_server_gpus,))
    if args.vllm_tp is not None:
        space = replace(space, vllm_tp=args.vllm_tp)
    if args.generation_steps is not None:
        space = replace(space, generation_steps=(args.generation_steps,))
    return space
