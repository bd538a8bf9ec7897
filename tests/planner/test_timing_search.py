"""The search ranks by the time model and decides validity once per strategy, honestly."""

from __future__ import annotations

from planner.build import build_config
from planner.search import TIE_FRACTION, SearchSpace, _skeletons, candidates, plan, rank, simplicity_key
from planner.strategy import Engine, Method, Offload, Optimizer
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
    """Ranked by tokens/s, except that a plan within 1% of the fastest one left may go first when it is
    simpler: no plan is ever more than 1% faster than one ranked above it."""
    base = build_config(model="7b", gpus="8xA800", check=False)
    result = plan(base)
    assert result.candidates_evaluated >= 5_000
    assert result.candidates_evaluated == sum(1 for _ in candidates(base))
    assert len(result.plans) + sum(result.rejected.values()) == result.candidates_evaluated
    ranked = rank(result.plans)  # the ranking, before the recommendation moves a plan with headroom first
    assert result.plans[0] is result.recommendation.plan and result.plans[1:] == [e for e in ranked
                                                                                  if e is not result.plans[0]]
    speeds = [e.time.tokens_per_s for e in ranked]
    fastest_below = 0.0
    for i in range(len(speeds) - 1, -1, -1):
        assert fastest_below <= speeds[i] / (1 - TIE_FRACTION) * (1 + 1e-12)
        fastest_below = max(fastest_below, speeds[i])
    best = ranked[0]
    assert best.time.tokens_per_s == step_time(best.config).tokens_per_s
    assert best.time.tokens_per_s >= max(speeds) * (1 - TIE_FRACTION)


def test_ties_go_to_the_simpler_plan() -> None:
    """DDP and FSDP no_shard, or ZeRO-1 and ZeRO-2, run at nearly the same speed: the one with fewer shards
    and no extra wrapper or dependency is recommended first."""
    base = build_config(model="7b", gpus="8xA800", check=False)
    result = plan(base, SearchSpace(methods=(Method.lora,)))
    plans = rank(result.plans)  # the ranking, before the recommendation moves a plan with headroom first
    first = plans[0].config
    tied = [e for e in plans if e.time.tokens_per_s >= plans[0].time.tokens_per_s * (1 - TIE_FRACTION)]
    assert all(simplicity_key(first) <= simplicity_key(e.config) for e in tied)
    assert first.engine is Engine.ddp and first.offload is Offload.none
    assert result.recommendation.fastest.config == first  # tight (97%): a plan with headroom is recommended


def test_the_users_optimizer_is_kept_unless_a_list_is_asked_for() -> None:
    base = build_config(model="7b", gpus="8xA800", check=False)
    default = plan(base, SearchSpace(methods=(Method.lora,)))
    assert {e.config.optimizer for e in default.plans} == {Optimizer.adamw}
    both = plan(base, SearchSpace(methods=(Method.lora,), optimizers=(Optimizer.adamw, Optimizer.adamw_8bit)))
    assert both.candidates_evaluated == 2 * default.candidates_evaluated
    assert {e.config.optimizer for e in both.plans} == {Optimizer.adamw, Optimizer.adamw_8bit}
