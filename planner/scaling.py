"""Speed against GPU count: the best plan at 1, 2, 4, ... GPUs, then whole nodes, and its speedup.

Each point is `planner.search.plan` at that GPU count with the same options, so a row of the scaling
report is the plan `ftplan plan` recommends there. Speedup is tokens/s against the smallest count
where a plan fits (one GPU when it fits); efficiency is speedup over the ratio of GPU counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.calibration import DEFAULT, Calibration
from planner.errors import PlanError
from planner.estimate import Estimate, Limits
from planner.gpus import Cluster, GPUSpec
from planner.search import SearchSpace, plan
from planner.strategy import TrainConfig


def gpu_counts(max_gpus: int, gpus_per_node: int) -> list[int]:
    """1, 2, 4, ... within one node, then every whole number of nodes up to `max_gpus`."""
    if max_gpus < 1:
        raise PlanError(f"--max-gpus must be at least 1, got {max_gpus}")
    counts, k = [], 1
    while k <= min(max_gpus, gpus_per_node):
        counts.append(k)
        k *= 2
    if gpus_per_node not in counts and gpus_per_node <= max_gpus:
        counts.append(gpus_per_node)
    counts += [n * gpus_per_node for n in range(2, max_gpus // gpus_per_node + 1)]
    return counts


def cluster_for(gpu: GPUSpec, n_gpus: int) -> Cluster:
    """`n_gpus` in one node up to a node's size, else whole nodes."""
    if n_gpus <= gpu.gpus_per_node:
        return Cluster(gpu=gpu, nodes=1, gpus_per_node=n_gpus)
    return Cluster(gpu=gpu, nodes=n_gpus // gpu.gpus_per_node, gpus_per_node=gpu.gpus_per_node)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScalePoint:
    gpus: int
    cluster: Cluster
    best: Estimate | None  # None: no plan fits
    candidates_evaluated: int
    fitting: int
    speedup: float | None = None
    efficiency: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaleResult:
    points: tuple[ScalePoint, ...]
    baseline_gpus: int | None  # the smallest count with a fitting plan


def scale(base: TrainConfig, max_gpus: int, space: SearchSpace = SearchSpace(), limits: Limits = Limits(),
          cal: Calibration = DEFAULT) -> ScaleResult:
    """The best plan at each GPU count. `base` carries the model and method options; its cluster's GPU
    type is used at every count. `space.global_batch` None (plan's default) grows the global batch with
    the GPUs, 8 sequences per GPU as a fixed per-device batch does; a number holds it fixed."""
    gpu = base.cluster.gpu
    raw: list[tuple[int, Cluster, Estimate | None, int, int]] = []
    for n in gpu_counts(max_gpus, gpu.gpus_per_node):
        cluster = cluster_for(gpu, n)
        cfg = _with_cluster(base, cluster)
        try:
            result = plan(cfg, space, limits, cal)
        except PlanError:
            raw.append((n, cluster, None, 0, 0))
            continue
        raw.append((n, cluster, result.plans[0] if result.plans else None, result.candidates_evaluated,
                    len(result.plans)))
    baseline = next(((n, est) for n, _, est, _, _ in raw if est is not None and est.time is not None), None)
    points = []
    for n, cluster, est, evaluated, fitting in raw:
        speedup = efficiency = None
        if baseline is not None and est is not None and est.time is not None:
            base_n, base_est = baseline
            speedup = est.time.tokens_per_s / base_est.time.tokens_per_s
            efficiency = speedup / (n / base_n)
        points.append(ScalePoint(gpus=n, cluster=cluster, best=est, candidates_evaluated=evaluated,
                                 fitting=fitting, speedup=speedup, efficiency=efficiency))
    return ScaleResult(points=tuple(points), baseline_gpus=baseline[0] if baseline else None)


def _with_cluster(base: TrainConfig, cluster: Cluster) -> TrainConfig:
    from dataclasses import replace

    return replace(base, cluster=cluster)

