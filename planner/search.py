"""The search space: every valid strategy for a model on a cluster, global batch held fixed.

`candidates` yields TrainConfigs (ZeRO stage x offload x FSDP x TP x PP x micro-batch x
checkpointing x attention x optimizer, per method); `plan` evaluates them all and keeps those that fit.
Ranking is by the time model's tokens/s (`planner.timing`); plans within `TIE_FRACTION` of each other
tie, and a tie goes to the simpler plan (`simplicity_key`): the model's error is larger than 1%, so
a plan that needs offload, DeepSpeed or bitsandbytes, or shards more, must be faster by more than that
to be recommended. The optimizer, precision and attention are the user's: the space holds the one
the user chose unless a list is given (`--optimizers adamw,adamw_8bit`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from typing import Any, TypeVar

from planner import engines
from planner.calibration import DEFAULT, Calibration
from planner.engines import ddp, fsdp
from planner.errors import PlanError
from planner.estimate import Estimate, FitKind, Limits, estimate, fit_reason
from planner.rl import search as rl_search
from planner.rl.settings import RolloutSpace, is_online_rl
from planner.strategy import (
    Attn,
    Batch,
    Engine,
    EngineChoice,
    FsdpStrategy,
    FsdpVersion,
    GradCkpt,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
    Switches,
    TrainConfig,
    ZeroStage,
)
from planner.timing import step_time
from planner.validity import default_attn, problems

MICRO_BATCHES = (1, 2, 4, 8, 16, 32)

# (engine, zero, fsdp strategy, offload, offload device): each engine module's rows (planner/engines/)
_ENGINES: tuple[tuple[Engine, ZeroStage, FsdpStrategy, Offload, OffloadDevice], ...] = engines.ROWS
_ENGINE_CHOICES: tuple[EngineChoice, ...] = tuple(
    EngineChoice(engine=e, zero=z, fsdp=f, offload=o, offload_device=d) for e, z, f, o, d in _ENGINES)
# the same rows with FSDP1 (`--fsdp-version 1`): the FSDP the user asked for is the one searched
_ENGINE_CHOICES_FSDP1: tuple[EngineChoice, ...] = tuple(
    replace(c, fsdp_version=FsdpVersion.ONE) if c.engine is Engine.fsdp else c for c in _ENGINE_CHOICES)


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    methods: tuple[Method, ...] = (Method.full, Method.lora, Method.qlora)
    global_batch: int | None = None  # sequences per optimizer step; None: 8 per GPU
    micro_batches: tuple[int, ...] = MICRO_BATCHES
    grad_ckpts: tuple[GradCkpt, ...] = (GradCkpt.none, GradCkpt.selective, GradCkpt.full)
    # flash_attention_2 and SDPA (which dispatches to the same FlashAttention-2 kernel on Ampere and
    # newer, torch >= 2.2) save the same tensors and run the same FLOPs: the memory and time models
    # cannot tell them apart, so the default space keeps one attention: None is the one transformers itself picks
    # for the model (SDPA, or eager where the class has no SDPA path: gpt-oss; planner.validity.default_attn)
    attns: tuple[Attn, ...] | None = None
    # the user's optimizer only: 8-bit states change the numerics and need bitsandbytes (issue 11)
    optimizers: tuple[Optimizer, ...] = (Optimizer.adamw,)
    tps: tuple[int, ...] | None = None  # None: powers of two within a node
    pps: tuple[int, ...] | None = None
    rollouts: RolloutSpace | None = None  # online RL stages: the generation settings (planner.rl.search)
    # the FSDP the FSDP rows run (--fsdp-version): the user's, never searched
    fsdp_version: FsdpVersion = FsdpVersion.TWO


def search_space(base: TrainConfig, *, methods: list[Method] | tuple[Method, ...] | None = None,
                 global_batch: int | None = None, **narrowing: Any) -> SearchSpace:
    """The search options `plan`, `scale` and `tune` share, checked once: --global-batch positive, --seq-len
    within the model's positions; methods in the order given, without repeats (default: all three)."""
    if global_batch is not None and global_batch < 1:
        raise PlanError(f"--global-batch must be a positive integer, got {global_batch}")
    if base.seq_len > base.model.max_seq_len:
        raise PlanError(f"--seq-len {base.seq_len} exceeds the {base.model.max_seq_len} positions of {base.model.name}")
    chosen = tuple(dict.fromkeys(methods)) if methods else SearchSpace().methods
    if not narrowing.get("attns"):
        narrowing["attns"] = None  # not given (None or empty): the model's default (SearchSpace.attns)
    return SearchSpace(methods=chosen, global_batch=global_batch, **narrowing)


def _powers_of_two(limit: int) -> tuple[int, ...]:
    out, k = [], 1
    while k <= limit:
        out.append(k)
        k *= 2
    return tuple(out)


def default_global_batch(base: TrainConfig) -> int:
    return 8 * base.world_size


def _skeletons(base: TrainConfig, space: SearchSpace) -> Iterator[tuple[dict, list[dict]]]:
    """(fields of one strategy, the batch-shape / checkpointing / attention variants of it). The
    combinations that cannot exist (TP x PP not dividing the GPUs, a batch that does not split evenly)
    are skipped here, before any TrainConfig is built."""
    world = base.world_size
    global_batch = space.global_batch or default_global_batch(base)
    tps = space.tps or _powers_of_two(base.cluster.gpus_per_node)
    pps = space.pps or _powers_of_two(min(world, base.model.num_layers))
    attns = space.attns or (default_attn(base.model),)
    precision = base.precision
    if not base.cluster.gpu.supports_bf16 and precision is Precision.bf16_mixed:
        precision = Precision.fp16_mixed
    for method in space.methods:
        adapter = replace(base.adapter, method=method, quant=Quant.nf4 if method is Method.qlora else Quant.none)
        for engine_choice in (_ENGINE_CHOICES_FSDP1 if space.fsdp_version is FsdpVersion.ONE else _ENGINE_CHOICES):
            for tp in tps:
                for pp in pps:
                    if world % (tp * pp):
                        continue
                    dp = world // (tp * pp)
                    if global_batch % dp:
                        continue
                    per_dp = global_batch // dp
                    micro_batches = [mb for mb in space.micro_batches if per_dp % mb == 0]
                    if not micro_batches:
                        continue
                    for ep in _ep_degrees(base, engine_choice, tp, pp, dp):
                        variants = [{"batch": Batch(micro_batch=mb, grad_accum=per_dp // mb, seq_len=base.seq_len),
                                     "grad_ckpt": ckpt, "attn": attn, "switches": switches}
                                    for mb in micro_batches
                                    for switches in _switches(base, engine_choice, per_dp // mb)
                                    for ckpt in space.grad_ckpts for attn in attns]
                        layout = replace(base.layout, tp=tp, pp=pp, ep=ep)
                        for opt in space.optimizers:
                            yield ({"adapter": adapter, "precision": precision, "engine_choice": engine_choice,
                                    "layout": layout, "optimizer": opt}, variants)


def _switches(base: TrainConfig, engine_choice: EngineChoice, grad_accum: int) -> tuple[Switches, ...]:
    """The user's switches, and where sharded FSDP would keep every unsharded gradient through the Trainer's
    accumulation (planner/engines/fsdp.py no_sync_accumulates), the same with `sync_each_batch`: accelerate's
    GradientAccumulationPlugin option that reduces on every micro-batch, trading the unsharded gradients' memory for
    a reduce-scatter per micro-batch ("may reduce memory requirements when using gradient accumulation with
    distributed training, at expense of speed": accelerate/utils/dataclasses.py GradientAccumulationPlugin), which
    `ftplan run` and the emitted Trainer arguments set. A user's --sync-each-batch is kept as it is; PPO (verl)
    syncs each micro-batch anyway (ddp.syncs_each_micro_batch)."""
    if ddp.syncs_each_micro_batch(base) or engine_choice.engine is not Engine.fsdp or \
            not fsdp.no_sync_accumulates(engine_choice.fsdp, grad_accum):
        return (base.switches,)
    return base.switches, replace(base.switches, sync_each_batch=True)


def _ep_degrees(base: TrainConfig, engine_choice: EngineChoice, tp: int, pp: int, dp: int) -> tuple[int, ...]:
    """Expert-parallel degrees searched: for a MoE model on FSDP without TP or PP, the powers of two that divide
    both its experts and the data-parallel ranks (planner/moe.py); 1 elsewhere."""
    if not base.model.is_moe or engine_choice.engine is not Engine.fsdp or tp > 1 or pp > 1:
        return (1,)
    return tuple(e for e in _powers_of_two(dp) if base.model.num_experts % e == 0)


def _base_fields(base: TrainConfig) -> dict:
    """The config's typed parts and flat fields, as TrainConfig's keywords."""
    return {f.name: getattr(base, f.name) for f in dataclass_fields(TrainConfig)}


def candidates(base: TrainConfig, space: SearchSpace = SearchSpace()) -> Iterator[TrainConfig]:
    """Every combination, valid or not; `plan` filters with `validity.problems`."""
    fields = _base_fields(base)
    for skeleton, variants in _skeletons(base, space):
        fields.update(skeleton)
        for variant in variants:
            fields.update(variant)
            yield TrainConfig(**fields)


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """The plan recommended and why: the fastest plan that is not tight (planner.estimate.is_tight), unless every
    fitting plan is tight or the fastest one is tight and faster than it by more than `margin`."""

    plan: Estimate
    fastest: Estimate  # the fastest fitting plan, in the ranking's order (ties resolved)
    reason: str
    fastest_gain: float  # fastest's tokens/s over the recommended plan's, minus 1 (0 when they are the same)
    margin: float


@dataclass(frozen=True, kw_only=True)
class PlanResult:
    plans: list[Estimate]  # fitting plans, the recommended one first, then by rank
    candidates_evaluated: int
    valid: int
    rejected: dict[str, int]  # reason -> count, for invalid or non-fitting candidates
    recommendation: Recommendation | None = None


TIE_FRACTION = 0.01
# A tight plan (above 90% of the GPU's memory, allocator cache included) is recommended over the fastest plan with
# headroom only when it is faster by more than this: ftplan's step times are within about 5-15% of measured steps
# and its multi-GPU memory within a median 7% (README, "How far the model is from measurements"), so a smaller gain
# is inside the model's error while an out-of-memory an hour in costs the hour.
TIGHT_MARGIN = 0.05
T = TypeVar("T")

# How much sharding a strategy does (fewer shards first when plans tie)
_SHARDING = {(Engine.ddp, ZeroStage.DISABLED): 0, (Engine.deepspeed, ZeroStage.DISABLED): 0,
             (Engine.deepspeed, ZeroStage.OPTIMIZER_STATES): 1, (Engine.deepspeed, ZeroStage.GRADIENTS): 2,
             (Engine.deepspeed, ZeroStage.WEIGHTS): 3}
_FSDP_SHARDING = {FsdpStrategy.no_shard: 0, FsdpStrategy.shard_grad_op: 2, FsdpStrategy.hybrid_shard: 3,
                  FsdpStrategy.full_shard: 3}


def simplicity_key(cfg: TrainConfig) -> tuple[int, ...]:
    """Smaller is simpler: no offload, fewer extra dependencies (DeepSpeed, bitsandbytes optimizers),
    fewer shards, plain DDP before FSDP, no model parallelism, no checkpointing, the Trainer's no_sync, less
    accumulation."""
    offload = {Offload.none: 0, Offload.optimizer: 1, Offload.all: 2}[cfg.offload]
    offload += 1 if cfg.offload_device is OffloadDevice.nvme and cfg.offload is not Offload.none else 0
    deps = int(cfg.engine is Engine.deepspeed) + int(cfg.optimizer not in (Optimizer.adamw, Optimizer.sgd))
    shards = _FSDP_SHARDING[cfg.fsdp] if cfg.engine is Engine.fsdp else _SHARDING[(cfg.engine, cfg.zero)]
    wrapper = int(cfg.engine is Engine.fsdp)  # FSDP wraps the model even when it shards nothing
    return (offload, deps, shards, wrapper, cfg.tp * cfg.pp, int(cfg.grad_ckpt is not GradCkpt.none),
            int(cfg.sync_each_batch), cfg.grad_accum)


def _tokens_per_s(est: Estimate) -> float:
    return est.time.tokens_per_s if est.time is not None else step_time(est.config).tokens_per_s


def rank_key(est: Estimate) -> tuple[float, float, tuple[str, ...]]:
    """Sort key before ties are resolved, smaller first: fastest (tokens/s of the job), then least memory, then the
    plan's name and the choices it does not show, the attention transformers picks by default first (plans the models
    cannot tell apart, SDPA and FlashAttention-2 under --attns sdpa,flash, tie on both: SDPA needs no flash-attn
    package), so that the order never depends on the order the candidates came in."""
    cfg = est.config
    names = (str(cfg), cfg.method.value, str(int(cfg.attn is not default_attn(cfg.model))), cfg.attn.value,
             cfg.fsdp_version.name, cfg.precision.value, cfg.optimizer.value,
             cfg.rollout_name() if is_online_rl(cfg.stage) else "")
    return (-_tokens_per_s(est), est.memory.total, names)


def rank(plans: list[Estimate], tie_fraction: float = TIE_FRACTION) -> list[Estimate]:
    """Fastest first; among the plans within `tie_fraction` of the fastest one left, the simplest goes
    next (then the faster, then the one using less memory)."""
    ordered = sorted(plans, key=rank_key)
    return resolve_ties(ordered, [_tokens_per_s(e) for e in ordered], [simplicity_key(e.config) for e in ordered],
                        tie_fraction)


def resolve_ties(items: list[T], tokens_per_s: list[float], simplicity: list[tuple[int, ...]],
                 tie_fraction: float = TIE_FRACTION) -> list[T]:
    """`items` sorted fastest first (with their tokens/s and simplicity keys) in the ranking's order: among
    those within `tie_fraction` of the fastest one left, the simplest goes next (then the earlier one)."""
    speeds, keys, left = list(tokens_per_s), list(simplicity), list(items)
    if not len(speeds) == len(keys) == len(left):
        raise ValueError("resolve_ties: items, tokens_per_s and simplicity differ in length")
    out: list[T] = []
    while left:
        floor = speeds[0] * (1 - tie_fraction)
        window = 1
        while window < len(left) and speeds[window] >= floor:
            window += 1
        # the first of the simplest (list.index finds the first key equal to the least)
        pick = keys.index(min(keys[:window])) if window > 1 else 0
        del speeds[pick], keys[pick]
        out.append(left.pop(pick))
    return out


def recommend(plans: list[Estimate], margin: float = TIGHT_MARGIN) -> tuple[list[Estimate], Recommendation | None]:
    """`plans` (ranked, best first) with the recommended one moved to the front, and why it was chosen."""
    if not plans:
        return plans, None
    fastest = plans[0]
    loose = next((e for e in plans if not e.tight), None)
    if loose is None:
        return plans, Recommendation(plan=fastest, fastest=fastest, fastest_gain=0.0, margin=margin,
                                     reason="every plan that fits is tight (above 90% of the GPU): the fastest")
    if loose is fastest:
        return plans, Recommendation(plan=fastest, fastest=fastest, fastest_gain=0.0, margin=margin,
                                     reason="the fastest plan, with headroom")
    gain = _tokens_per_s(fastest) / _tokens_per_s(loose) - 1.0
    if gain > margin:
        return plans, Recommendation(plan=fastest, fastest=fastest, fastest_gain=gain, margin=margin,
                                     reason=f"tight, but faster than the fastest plan with headroom ({loose.config}) "
                                            f"by {gain:.1%}, more than the {margin:.0%} margin")
    ordered = [loose] + [e for e in plans if e is not loose]
    if gain <= 0.0:
        # the ranking's first plan won a tie (within TIE_FRACTION) as the simpler one, not by speed
        reason = (f"the fastest plan with headroom; the first-ranked plan is tight and no faster ({gain:+.2%}): it "
                  f"ranks first as the simpler of plans within {TIE_FRACTION:.0%} of each other")
    else:
        reason = f"the fastest plan with headroom; the fastest plan is tight and faster by {gain:.2%}, within the " \
                 f"{margin:.0%} margin"
    return ordered, Recommendation(plan=loose, fastest=fastest, fastest_gain=gain, margin=margin, reason=reason)


def with_recommendation(result: PlanResult, margin: float = TIGHT_MARGIN) -> PlanResult:
    """`result` re-recommended over its plans as ordered now (after runnable_first, say)."""
    plans, rec = recommend(_ranked_again(result), margin)
    return replace(result, plans=plans, recommendation=rec)


def _ranked_again(result: PlanResult) -> list[Estimate]:
    """Undo a previous recommendation's move to the front: the fastest plan first again."""
    rec = result.recommendation
    if rec is None or rec.plan is rec.fastest or not result.plans or result.plans[0] is not rec.plan:
        return list(result.plans)
    rest = result.plans[1:]
    at = next((i for i, e in enumerate(rest) if e is rec.fastest), 0)
    return rest[:at + 1] + [rec.plan] + rest[at + 1:]


def recommendation_to_dict(rec: Recommendation | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {"plan": str(rec.plan.config), "method": rec.plan.config.method.value, "tight": rec.plan.tight,
            "fastest": str(rec.fastest.config), "fastest_tight": rec.fastest.tight,
            "fastest_gain": rec.fastest_gain, "tight_margin": rec.margin, "reason": rec.reason}


def plan(base: TrainConfig, space: SearchSpace = SearchSpace(), limits: Limits = Limits(),
         cal: Calibration = DEFAULT) -> PlanResult:
    """Evaluate every candidate: its validity, then the memory of each valid one, then the time of each
    one that fits. The validity rules (`validity.problems`) read no micro-batch, accumulation,
    checkpointing or attention field, so one check decides every variant of a strategy: a rejected
    strategy counts all its variants as evaluated and rejected (tests/planner/test_search_fast.py
    checks the verdict against `problems` on each variant). Online RL stages search their generation settings
    too (planner.rl.search)."""
    if is_online_rl(base.stage):
        return rl_search.rl_plan(_RL_PARTS, base, space, limits, cal)
    evaluated = valid = 0
    fitting: list[Estimate] = []
    rejected: dict[str, int] = {}
    fields = _base_fields(base)
    for skeleton, variants in _skeletons(base, space):
        fields.update(skeleton)
        fields.update(variants[0])
        evaluated += len(variants)
        found = problems(TrainConfig(**fields))
        if found:
            rejected[found[0]] = rejected.get(found[0], 0) + len(variants)
            continue
        for variant in variants:
            fields.update(variant)
            cfg = TrainConfig(**fields)
            valid += 1
            est = estimate(cfg, limits, cal, timed=None)
            if est.fits:
                fitting.append(est)
            else:
                first = est.fit_failures[0]
                key = "does not fit in GPU memory" if first.kind is FitKind.gpu_memory else fit_reason(cfg, first)
                rejected[key] = rejected.get(key, 0) + 1
    if evaluated == 0:
        raise PlanError("the search space is empty: check --global-batch against the GPU count")
    fitting, recommendation = recommend(rank(fitting))
    return PlanResult(plans=fitting, candidates_evaluated=evaluated, valid=valid, rejected=rejected,
                      recommendation=recommendation)


# what planner.rl.search plans the online RL stages with (it cannot import this module: this one imports it)
_RL_PARTS = rl_search.SearchParts(candidates=candidates, default_global_batch=default_global_batch, rank_key=rank_key,
                                  resolve_ties=resolve_ties, simplicity_key=simplicity_key, result=PlanResult)
