"""Wall time of `ftplan plan --model 7b --gpus 8xA800`, as a ratio to `python -c "import torch"` timed in the
same run (both include Python start-up), and the number of candidates the plan evaluated; the same for the plan
that also searches the 8-bit optimizer (`--optimizers adamw,adamw_8bit`, twice the candidates: the default plan
searches only the optimizer the user chose).

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
PLAN_WIDE = [*PLAN, "--optimizers", "adamw,adamw_8bit"]
TORCH = [sys.executable, "-c", "import torch"]


def wall_s(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for cmd in (PLAN, PLAN_WIDE, TORCH):  # warm the file cache and bytecode
        wall_s(cmd)
    times: dict[str, list[float]] = {"plan": [], "wide": [], "torch": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit all three
        for key, cmd in (("plan", PLAN), ("wide", PLAN_WIDE), ("torch", TORCH)):
            times[key].append(wall_s(cmd))
    torch_s = statistics.median(times["torch"])
    print(f'python -c "import torch": median {torch_s:.3f} s (min {min(times["torch"]):.3f} s)')
    for key, cmd in (("plan", PLAN), ("wide", PLAN_WIDE)):
        data = json.loads(subprocess.run([*cmd, "--json"], check=True, capture_output=True, text=True).stdout)
        median = statistics.median(times[key])
        print(f"{' '.join(cmd[2:])}: median {median:.3f} s over {args.repeats} runs (min {min(times[key]):.3f} s), "
              f"ratio to import torch {median / torch_s:.2f} (min-based {min(times[key]) / min(times['torch']):.2f}); "
              f"candidates evaluated {data['candidates_evaluated']:,}, valid (memory + time estimated one by one) "
              f"{data['valid']:,}, fitting {data['fitting']:,}")

if __name__ == "__main__":
    main()
