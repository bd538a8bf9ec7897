"""Wall time of `ftplan plan --model 7b --gpus 8xA800`, as a ratio to `python -c "import torch"` timed in the
same run (both include Python start-up), and the number of candidates the plan evaluated; the same for the plan
that also searches the 8-bit optimizer (`--optimizers adamw,adamw_8bit`, twice the candidates: the default plan
searches only the optimizer the user chose), for a model read from transformers (`--model qwen3-8b --gpus 8xH100`,
its spec shipped as JSON: as many candidates as the Llama plan) and for an online RL plan (`--stage grpo`, which
also searches the generation settings).

    python benchmarks/plan_speed.py [--repeats 5]

Each command runs `repeats` times in a subprocess, interleaved; the medians are compared, so a loaded machine
slows both sides alike. Besides wall time the CPU time (user + system) of each process is compared: a machine
shared with other jobs stretches wall time by waiting, much less the CPU a process uses. Every process runs with
bytecode caching on, in a folder of its own (PYTHONPYCACHEPREFIX), so ftplan's modules load as an installed
package's do, like torch's: with PYTHONDONTWRITEBYTECODE set, ftplan alone would be compiled from source on
every run. Then the search alone: the CPU time of the first `planner.search.plan` call of a fresh process for each
plan (what the command spends besides Python's start-up, the imports and printing the answer). Prints; asserts
nothing (timing belongs in benchmarks, not tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PLAN = [sys.executable, "-m", "ftplan", "plan", "--model", "7b", "--gpus", "8xA800"]
PLAN_WIDE = [*PLAN, "--optimizers", "adamw,adamw_8bit"]
PLAN_QWEN3 = [sys.executable, "-m", "ftplan", "plan", "--model", "qwen3-8b", "--gpus", "8xH100"]
PLAN_GRPO = [*PLAN, "--stage", "grpo"]
PLANS = {"plan": PLAN, "wide": PLAN_WIDE, "qwen3": PLAN_QWEN3, "grpo": PLAN_GRPO}
TORCH = [sys.executable, "-c", "import torch"]
# the same plans, searched in-process: build_config's keywords and search_space's narrowing
SEARCHES = {"plan": ({"model": "7b", "gpus": "8xA800"}, {}),
            "wide": ({"model": "7b", "gpus": "8xA800"}, {"optimizers": ("adamw", "adamw_8bit")}),
            "qwen3": ({"model": "qwen3-8b", "gpus": "8xH100"}, {}),
            "grpo": ({"model": "7b", "gpus": "8xA800", "stage": "grpo"}, {})}
SEARCH_ONCE = """
import json, sys, time
from planner.build import build_config
from planner.search import plan, search_space
from planner.strategy import Optimizer
flat, narrow = json.loads(sys.argv[1])
if "optimizers" in narrow:
    narrow["optimizers"] = tuple(Optimizer(o) for o in narrow["optimizers"])
base = build_config(check=False, **flat)
space = search_space(base, **narrow)
start = time.process_time()
plan(base, space)
print(time.process_time() - start)
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system)."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftplan-plan-speed-pyc-") as pyc:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = pyc
        commands = {**PLANS, "torch": TORCH}
        for cmd in commands.values():  # warm the file cache and write the bytecode
            timed(cmd, env)
        runs: dict[str, list[tuple[float, float]]] = {key: [] for key in commands}
        for _ in range(args.repeats):  # interleaved, so load changes hit every command alike
            for key, cmd in commands.items():
                runs[key].append(timed(cmd, env))
        wall = {k: [w for w, _ in v] for k, v in runs.items()}
        cpu = {k: [c for _, c in v] for k, v in runs.items()}
        torch_wall, torch_cpu = statistics.median(wall["torch"]), statistics.median(cpu["torch"])
        print(f'python -c "import torch": median {torch_wall:.3f} s wall (min {min(wall["torch"]):.3f} s), '
              f"{torch_cpu:.3f} s CPU")
        for key, cmd in PLANS.items():
            data = json.loads(subprocess.run([*cmd, "--json"], check=True, capture_output=True, text=True,
                                             env=env).stdout)
            w, c = statistics.median(wall[key]), statistics.median(cpu[key])
            print(f"{' '.join(cmd[2:])}: median {w:.3f} s wall over {args.repeats} runs (min {min(wall[key]):.3f} s), "
                  f"ratio to import torch {w / torch_wall:.2f} (min-based {min(wall[key]) / min(wall['torch']):.2f}); "
                  f"CPU {c:.3f} s, ratio {c / torch_cpu:.2f}; candidates evaluated {data['candidates_evaluated']:,}, "
                  f"valid (memory + time estimated one by one) {data['valid']:,}, fitting {data['fitting']:,}")
        for key, search in SEARCHES.items():
            cpu_s = [float(subprocess.run([sys.executable, "-c", SEARCH_ONCE, json.dumps(search)], check=True,
                                          capture_output=True, text=True, env=env).stdout)
                     for _ in range(args.repeats)]
            print(f"planner.search.plan alone ({key}): median {statistics.median(cpu_s):.3f} s CPU over "
                  f"{args.repeats} fresh processes (min {min(cpu_s):.3f} s)")


if __name__ == "__main__":
    main()
