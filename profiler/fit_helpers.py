"""What the CPU and CUDA device fits share: timing a call, a relative-residual line fit, spawning ranks."""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Any

from profiler.launcher import free_port, offline_env


def _median_time(fn: Any, repeats: int, inner: int = 1) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def _line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Slope and intercept minimizing the squared *relative* residuals (weights 1/y^2), so that the
    small sizes, whose times are short, count as much as the large ones."""
    w = [1.0 / (y * y) for y in ys]
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, xs, strict=True)) / sw
    my = sum(wi * y for wi, y in zip(w, ys, strict=True)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs, strict=True))
    slope = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


@contextmanager
def _offline_children() -> Any:
    """This process's environment offline (profiler.launcher.offline_env) while children start: a spawned process
    copies os.environ at start (multiprocessing has no env argument), and the fit's ranks import DeepSpeed and
    transformers, whose bitsandbytes would otherwise ask the Hub for a kernel (profiler/launcher.py). Restored after."""
    added = {k: v for k, v in offline_env().items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _on_ranks(target: Any, n: int, answers: int | None = None) -> list[Any]:
    """Run `target(rank, port, queue)` on `n` spawned processes at once, offline; the `answers` (default n) they
    put."""
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, port, queue)) for r in range(n)]
    with _offline_children():
        for p in procs:
            p.start()
    got = [queue.get(timeout=900) for _ in range(n if answers is None else answers)]
    for p in procs:
        p.join(timeout=120)
    return got
