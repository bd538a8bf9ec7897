"""The autotuner's search space as plain data: named dimensions, and a trial's choices -> TrainConfig.

The space is derived from `planner.search.candidates` (its engine table, TP/PP/micro-batch enumeration
and global-batch arithmetic), so a tune and `ftplan plan` agree on what exists. The engine table is one
dimension, `strategy`, labelled by `TrainConfig.strategy_name()` (DDP, Z0..Z3, Z3+off-all-nvme, FSDP-SGO,
...): ZeRO stage, offload target/device and FSDP strategy come as the rows DeepSpeed and torch accept
together, instead of a product that is mostly invalid. Accumulation is not a dimension: the global
batch is held fixed, so grad_accum = global_batch / (DP x micro_batch). `sync_each_batch` is one where the
planner searches it (sharded FSDP with accumulation: planner.search._switches), False elsewhere.

No optuna here (runner/tune.py turns `Dimension`s into distributions); `analytic_score` is the
analytical objective (the time model's tokens/s and the memory model's peak, both pure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from math import prod

from planner.calibration import DEFAULT, Calibration
from planner.estimate import Estimate, Limits, default_host_bytes, estimate
from planner.search import SearchSpace, candidates, default_global_batch
from planner.strategy import Attn, Engine, Offload, Optimizer, PipeSchedule, TrainConfig, ZeroStage
from planner.validity import problems

Choice = str | int
PARAM_NAMES: tuple[str, ...] = ("method", "strategy", "tp", "pp", "virtual_stages", "micro_batch", "grad_ckpt",
                                "attn", "optimizer", "sync_each_batch")


@dataclass(frozen=True, kw_only=True)
class Dimension:
    name: str
    choices: tuple[Choice, ...]


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Narrow the planner's space (CLI: --engine, --zero, --offload, --virtual-stages)."""

    engines: tuple[Engine, ...] | None = None
    zero_stages: tuple[ZeroStage, ...] | None = None
    offloads: tuple[Offload, ...] | None = None
    virtual_stages: tuple[int, ...] = (1,)

    def keeps(self, cfg: TrainConfig) -> bool:
        if self.engines is not None and cfg.engine not in self.engines:
            return False
        # --zero narrows DeepSpeed's stages; DDP and FSDP stay unless --engine drops them
        if self.zero_stages is not None and cfg.engine is Engine.deepspeed and cfg.zero not in self.zero_stages:
            return False
        return self.offloads is None or cfg.offload in self.offloads


def choices_of(cfg: TrainConfig) -> dict[str, Choice]:
    """A configuration's coordinates in the tune space (the Optuna params of its trial)."""
    return {"method": cfg.method.value, "strategy": cfg.strategy_name(), "tp": cfg.tp, "pp": cfg.pp,
            "virtual_stages": cfg.virtual_stages, "micro_batch": cfg.micro_batch, "grad_ckpt": cfg.grad_ckpt.value,
            "attn": cfg.attn.value, "optimizer": cfg.optimizer.value, "sync_each_batch": cfg.sync_each_batch}


def trial_label(cfg: TrainConfig) -> str:
    """`str(cfg)` plus the non-default choices it does not already name (attention, optimizer, virtual
    stages), so that no two trials of a table share a label."""
    name = str(cfg)
    tokens = set(name.split("-"))
    extra = [f"v{cfg.virtual_stages}"] if cfg.virtual_stages > 1 else []
    extra += [c.value for c, default in ((cfg.attn, Attn.sdpa), (cfg.optimizer, Optimizer.adamw))
              if c is not default and c.value not in tokens]
    return "-".join([name, *extra])


def params_key(params: Mapping[str, Choice]) -> tuple[Choice, ...]:
    return tuple(params[n] for n in PARAM_NAMES)


@dataclass(frozen=True, kw_only=True)
class TuneSpace:
    base: TrainConfig
    global_batch: int
    dimensions: tuple[Dimension, ...]
    # every candidate of the planner's space (virtual_stages 1) that passes the filters, by key, with the
    # reason it cannot run ("" when it can)
    index: Mapping[tuple[Choice, ...], tuple[TrainConfig, str]]
    filters: Filters

    @property
    def size(self) -> int:
        """Points of the product space (what a grid over the dimensions would visit)."""
        return prod(len(d.choices) for d in self.dimensions)

    def config_for(self, params: Mapping[str, Choice]) -> tuple[TrainConfig | None, str]:
        """The configuration a trial's choices name, or None and why it cannot run."""
        v = int(params["virtual_stages"])
        found = self.index.get(params_key({**params, "virtual_stages": 1}))
        if found is None:
            return None, self._why_missing(params)
        cfg, reason = found
        if reason:
            return None, reason
        if v > 1:
            if cfg.pp == 1:
                return None, f"{v} virtual stages need pipeline parallelism (PP > 1)"
            cfg = replace(cfg, pp_schedule=PipeSchedule.interleaved, virtual_stages=v)
            found_problems = problems(cfg)
            if found_problems:
                return None, found_problems[0]
        return cfg, ""

    def feasible(self) -> Iterator[TrainConfig]:
        """Every runnable configuration, in the planner's candidate order (the exhaustive grid)."""
        for cfg, reason in self.index.values():
            if reason:
                continue
            for v in self.filters.virtual_stages:
                out, _ = self.config_for({**choices_of(cfg), "virtual_stages": v})
                if out is not None:
                    yield out

    def _why_missing(self, params: Mapping[str, Choice]) -> str:
        world = self.base.world_size
        tp, pp, mb = int(params["tp"]), int(params["pp"]), int(params["micro_batch"])
        if world % (tp * pp):
            return f"TP({tp}) * PP({pp}) = {tp * pp} does not divide {world} GPUs"
        dp = world // (tp * pp)
        if self.global_batch % dp:
            return f"the global batch {self.global_batch} does not split over DP({dp})"
        if (self.global_batch // dp) % mb:
            return (f"micro-batch {mb} does not divide the {self.global_batch // dp} sequences per data-parallel "
                    f"rank (global batch {self.global_batch} / DP({dp}))")
        return "this combination is outside the search space (excluded by its filters)"


def build_space(base: TrainConfig, space: SearchSpace = SearchSpace(), filters: Filters = Filters(),
                runnable: Callable[[TrainConfig], str | None] | None = None) -> TuneSpace:
    """The tune space over `candidates(base, space)`; `runnable` (a measured trial's capability check)
    returns why a configuration cannot run, or None."""
    index: dict[tuple[Choice, ...], tuple[TrainConfig, str]] = {}
    seen: dict[str, dict[Choice, None]] = {n: {} for n in PARAM_NAMES}
    for cfg in candidates(base, space):
        if not filters.keeps(cfg):
            continue
        found = problems(cfg) or ([runnable(cfg) or ""] if runnable is not None else [""])
        index[params_key(choices_of(cfg))] = (cfg, found[0])
        if not found[0]:
            for name, value in choices_of(cfg).items():
                seen[name][value] = None
    seen["virtual_stages"] = dict.fromkeys(filters.virtual_stages)
    dims = tuple(Dimension(name=n, choices=tuple(seen[n])) for n in PARAM_NAMES)
    return TuneSpace(base=base, global_batch=space.global_batch or default_global_batch(base), dimensions=dims,
                     index=index, filters=filters)


@dataclass(frozen=True, kw_only=True, slots=True)
class Score:
    """The analytical objective of one configuration."""

    estimate: Estimate
    tokens_per_s: float
    step_time_s: float
    peak_bytes: float  # per GPU, the memory model's device reading
    overshoot_bytes: float  # > 0: the largest excess over GPU, host or NVMe capacity (infeasible)


def analytic_score(cfg: TrainConfig, limits: Limits = Limits(), cal: Calibration = DEFAULT) -> Score:
    from planner.timing import step_time

    est = estimate(cfg, limits, cal)
    t = est.time if est.time is not None else step_time(cfg, cal)  # the ranking plan() uses (search.rank_key)
    mem = est.memory
    host_limit = limits.host_bytes_per_node if limits.host_bytes_per_node is not None else default_host_bytes(cfg)
    over = max(mem.fit_bytes - cfg.cluster.gpu.hbm_bytes * (1 - limits.headroom_fraction),
               mem.host_bytes - host_limit, mem.nvme_bytes - limits.nvme_bytes_per_node)
    if not est.fits:
        over = max(over, 1.0)  # estimate() is the authority on fitting; keep the constraint consistent with it
    elif over > 0:
        over = 0.0
    return Score(estimate=est, tokens_per_s=t.tokens_per_s, step_time_s=t.step_time_s, peak_bytes=mem.total,
                 overshoot_bytes=over)


def rank_key(tokens_per_s: float, peak_bytes: float) -> tuple[float, float]:
    """Smaller first: fastest, then least memory (the order of `planner.search.rank_key`)."""
    return (-tokens_per_s, peak_bytes)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, maximizing the first coordinate (tokens/s) and
    minimizing the second (bytes); sorted fastest first."""
    order = sorted(range(len(points)), key=lambda i: rank_key(*points[i]))
    front: list[int] = []
    best_mem = float("inf")
    for i in order:
        if points[i][1] < best_mem:
            front.append(i)
            best_mem = points[i][1]
    return front
