"""Why the CPU device fit's gloo collective points are unsteady: all-gather and reduce-scatter between two ranks on
this VM's two cores, timed three ways side by side in one run, over several passes:
- back_to_back: nine calls of one size in a row, the median (what profiler/device_fit.py measures);
- interleaved: every size once per round, nine rounds, the median per size (a slow spell spread over all sizes);
- awake: back_to_back while a lowest-priority spinner process runs on each core, so that no vCPU halts while a
  rank waits for its peer (the spinners yield to the ranks; they only keep the cores from going idle).

    python benchmarks/gloo_modes.py [--passes 5] [--save FILE]

Prints per method and size the median over passes of each pass's median time and the spread of the passes (largest /
smallest), and the passes whose points are not monotone in the size (a larger message read faster than a smaller one
by more than 20%): the fit interpolates these points, so one such point moves every ZeRO-3 / FSDP collective of its
size. Then the raw times of 30 back-to-back calls per size (the two modes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler.fit_helpers import _on_ranks  # noqa: E402

SIZES = (2**18, 2**20, 2**22, 2**24)
REPEATS = 9
SPIN = "import os, time\nos.nice(19)\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved(calls: dict[Any, Any], repeats: int) -> dict[Any, float]:
    times: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            times[key].append(_timed(fn))
    return {key: statistics.median(ts) for key, ts in times.items()}


def _rank(rank: int, port: int, out: Any, *, passes: int, methods: tuple[str, ...]) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    calls = {}
    for n in SIZES:
        full, part = torch.ones(n // 4), torch.ones(n // 8)
        calls[f"gather:{n}"] = partial(dist.all_gather_into_tensor, full, part)
        calls[f"scatter:{n}"] = partial(dist.reduce_scatter_tensor, part, full)
    for fn in calls.values():
        fn()
    dist.barrier()
    result: dict[str, Any] = {m: [] for m in methods}
    if "back_to_back" in methods:
        result["raw"] = {key: [_timed(fn) for _ in range(30)] for key, fn in calls.items()}
    for _ in range(passes):
        for method in methods:
            if method == "interleaved":
                result[method].append(_interleaved(calls, REPEATS))
            else:
                result[method].append({k: statistics.median(_timed(fn) for _ in range(REPEATS))
                                       for k, fn in calls.items()})
    if rank == 0:
        out.put(result)
    dist.barrier()
    dist.destroy_process_group()


def _non_monotone(points: dict[str, float], op: str) -> bool:
    ts = [points[f"{op}:{n}"] for n in SIZES]
    return any(b < a / 1.2 for a, b in zip(ts, ts[1:], strict=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()
    data = _on_ranks(partial(_rank, passes=args.passes, methods=("back_to_back", "interleaved")), 2, answers=1)[0]
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(s=600)]) for _ in range(os.cpu_count() or 2)]
    try:
        data.update(_on_ranks(partial(_rank, passes=args.passes, methods=("awake",)), 2, answers=1)[0])
    finally:
        for p in spinners:
            p.kill()
    data["load_1min_after"] = os.getloadavg()[0]
    for method in ("back_to_back", "interleaved", "awake"):
        passes = data[method]
        print(f"{method}:")
        for op in ("gather", "scatter"):
            cells = []
            for n in SIZES:
                vals = [p[f"{op}:{n}"] for p in passes]
                cells.append(f"{n // 1024}K {statistics.median(vals) * 1e3:.2f} ms (x{max(vals) / min(vals):.1f})")
            bad = sum(1 for p in passes if _non_monotone(p, op))
            print(f"  {op:8s} " + "  ".join(cells) + f"   non-monotone passes {bad}/{len(passes)}")
    for key, times in data["raw"].items():
        slow = sum(1 for t in times if t > 2.5 * min(times))
        print(f"raw {key}: min {min(times) * 1e3:.2f} ms, median {statistics.median(times) * 1e3:.2f} ms, "
              f"{slow}/30 calls above 2.5x the fastest")
    if args.save:
        args.save.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
