"""The search ranks by the time model and decides validity once per strategy, honestly."""

from __future__ import annotations

from planner.build import build_config
from planner.search import SearchSpace, _skeletons, candidates, plan
from planner.timing import step_time
from planner.validity import problems


def test_one_validity_check_decides_every_variant() -> None:
    """`plan` checks `problems` on one variant per strategy; every variant must get the same verdict."""
    base = build_config(model="7b", gpus="8xA800", check=False)
    from planner.strategy import TrainConfig

    fields = {name: getattr(base, name) for name in TrainConfig.__dataclass_fields__}
    checked = 0
    for skeleton, variants in _skeletons(base, SearchSpace()):
        fields.update(skeleton)
        fields.update(variants[0])
        verdict = problems(TrainConfig(**fields))
        for variant in variants:
            fields.update(variant)
            assert problems(TrainConfig(**fields)) == verdict
            checked += 1
    assert checked == sum(1 for _ in candidates(base))


def test_plan_evaluates_enough_and_ranks_by_tokens_per_s() -> None:
    base = build_config(model="7b", gpus="8xA800", check=False)
    result = plan(base)
    assert result.candidates_evaluated >= 10_000
    assert result.candidates_evaluated == sum(1 for _ in candidates(base))
    assert len(result.plans) + sum(result.rejected.values()) == result.candidates_evaluated
    speeds = [e.time.tokens_per_s for e in result.plans]
    assert speeds == sorted(speeds, reverse=True)
    best = result.plans[0]
    assert best.time.tokens_per_s == step_time(best.config).tokens_per_s
