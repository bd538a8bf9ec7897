"""Wall time of `ftplan plan --model 7b --gpus 8xA800`, as a ratio to `python -c "import torch"` timed in the
same run (both include Python start-up), and the number of candidates the plan evaluated.

    python benchmarks/plan_speed.py [--repeats 5]

Each command runs `repeats` times in a subprocess; the medians are compared, so a loaded machine slows
both sides alike. Prints; asserts nothing (timing belongs in benchmarks, not tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PLAN = [sys.executable, "-m", "ftplan", "plan", "--model", "7b", "--gpus", "8xA800"]
TORCH = [sys.executable, "-c", "import torch"]


def wall_s(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    wall_s(PLAN)  # warm the file cache and bytecode for both sides
    wall_s(TORCH)
    plan_times, torch_times = [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit both
        plan_times.append(wall_s(PLAN))
        torch_times.append(wall_s(TORCH))
    done = subprocess.run([*PLAN, "--json"], check=True, capture_output=True, text=True)
    data = json.loads(done.stdout)
    plan_s, torch_s = statistics.median(plan_times), statistics.median(torch_times)
    print(f"ftplan plan --model 7b --gpus 8xA800: median {plan_s:.3f} s over {args.repeats} runs "
          f"(min {min(plan_times):.3f} s)")
    print(f'python -c "import torch":            median {torch_s:.3f} s (min {min(torch_times):.3f} s)')
    print(f"ratio plan / import torch: {plan_s / torch_s:.2f} (min-based {min(plan_times) / min(torch_times):.2f})")
    print(f"candidates evaluated: {data['candidates_evaluated']:,}; valid (memory + time estimated one by one): "
          f"{data['valid']:,}; fitting: {data['fitting']:,}")


if __name__ == "__main__":
    main()
