"""How good is `ftplan tune --measure`, and how much trial time does it save, against measuring everything?

A Llama where compute dominates (55M parameters: hidden 640, 10 layers, vocab 4096; seq-len 256;
built from a config, no download) on 2 CPU processes over gloo. The space: DDP and DeepSpeed ZeRO-1/2/3
x micro-batch 1, 2 (global batch 4) x activation checkpointing none/full = 16 plans, in fp32 (a CPU
without bf16 units emulates bf16-mixed autocast at a small fraction of its fp32 rate).

1. The exhaustive grid: every plan measured `--grid-repeats` times (warm-up plus `--steps` timed steps
   each); a plan's grid figure is the mean of its repeats' median-step tokens/s. With `--grid-cache FILE`
   the grid is read from (or, first time, written to) FILE, so later runs only run the tuner.
2. The tuner, `--runs` times, each a fresh study with a budget of `--budget` x the grid's plans.

Printed per tuner run:
  quality = grid tokens/s of the tuner's winner / best grid tokens/s                     (aim >= 0.95)
  time    = the tuner's summed trial wall time / one pass of the grid's trial wall time (aim <= 0.35)
and per trial its measured tokens/s, how far apart its timed steps were (the spread it saw), whether it was a
confirmation repeat (runner/tuning/measured.py), the time model's and the calibrated prediction, and the grid's
figure; then the worst run and the grid's repeat spread.
One pass of the grid is the grid's summed trial time divided by its repeats (the cost of measuring every
plan once with the same steps: the cheapest exhaustive alternative, so the ratio is conservative).

Usage: python benchmarks/tune_quality.py [--steps 2] [--grid-repeats 2] [--budget 0.3] [--runs 3]
                                         [--grid-cache FILE] [--json]
The CPU is shared: the figures are ratios measured side by side in one run, never absolute speeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.build import build_config  # noqa: E402
from planner.search import SearchSpace  # noqa: E402
from planner.strategy import Attn, Engine, GradCkpt, Method, Optimizer, Precision, ZeroStage  # noqa: E402
from planner.tune_space import Filters, TuneSpace, build_space, trial_label  # noqa: E402
from runner.trial import run_trial, unsupported  # noqa: E402
from runner.tune import TuneOptions, quiet_optuna, tune  # noqa: E402

MODEL = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 4096, "hidden_size": 640,
         "intermediate_size": 1728, "num_hidden_layers": 10, "num_attention_heads": 10, "num_key_value_heads": 10,
         "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
SEQ_LEN, GLOBAL_BATCH = 256, 4


def make_space(model_dir: Path) -> TuneSpace:
    path = model_dir / "bench-llama-55m" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(MODEL))
    base = build_config(model=str(path), gpus="2xCPU", method=Method.full, precision=Precision.fp32, seq_len=SEQ_LEN,
                        check=False)
    space_def = SearchSpace(methods=(Method.full,), global_batch=GLOBAL_BATCH, micro_batches=(1, 2),
                            grad_ckpts=(GradCkpt.none, GradCkpt.full), attns=(Attn.sdpa,),
                            optimizers=(Optimizer.adamw,))
    filters = Filters(engines=(Engine.ddp, Engine.deepspeed), zero_stages=(ZeroStage(1), ZeroStage(2), ZeroStage(3)))
    return build_space(base, space_def, filters, unsupported)


def measure_grid(space: TuneSpace, steps: int, repeats: int) -> dict[str, dict[str, float]]:
    """Every plan `repeats` times, interleaved (pass 1 over all plans, then pass 2) so drift hits all alike."""
    plans = list(space.feasible())
    runs: dict[str, list[tuple[float, float]]] = {trial_label(c): [] for c in plans}
    for rep in range(repeats):
        for i, cfg in enumerate(plans, 1):
            out = run_trial(cfg, steps=steps, timeout_s=900)
            runs[trial_label(cfg)].append((out.tokens_per_s if out.ok else 0.0, out.wall_s))
            print(f"grid pass {rep + 1}/{repeats} plan {i}/{len(plans)} {trial_label(cfg)}: "
                  f"{out.tokens_per_s:,.0f} tok/s ({out.wall_s:.0f} s){'' if out.ok else ' FAILED ' + out.reason}",
                  file=sys.stderr, flush=True)
    return {name: {"tokens_per_s": statistics.fmean(t for t, _ in r), "trial_s": sum(w for _, w in r),
                   "spread": (max(t for t, _ in r) / min(t for t, _ in r) - 1) if min(t for t, _ in r) > 0 else 0.0}
            for name, r in runs.items()}


def tune_once(space: TuneSpace, grid: dict[str, dict[str, float]], trials: int, steps: int, seed: int,
              repeats: int) -> dict:
    result = tune(space, TuneOptions(measure=True, trials=trials, storage="memory", trial_steps=steps, seed=seed))
    best_name = max(grid, key=lambda n: grid[n]["tokens_per_s"])
    winner = result.best_row.name
    grid_pass_s = sum(g["trial_s"] for g in grid.values()) / repeats
    return {"winner": winner, "winner_grid_tokens_per_s": grid[winner]["tokens_per_s"],
            "grid_best": best_name, "grid_best_tokens_per_s": grid[best_name]["tokens_per_s"],
            "quality": grid[winner]["tokens_per_s"] / grid[best_name]["tokens_per_s"],
            "tune_trial_s": result.measured_trial_s, "grid_pass_trial_s": grid_pass_s,
            "time_ratio": result.measured_trial_s / grid_pass_s,
            "trials": [{"name": r.name, "round": r.round, "steps": r.steps, "measured": r.tokens_per_s,
                        "range": r.tokens_per_s_range,
                        "spread": (r.tokens_per_s_range[1] / r.tokens_per_s_range[0] - 1)
                        if r.tokens_per_s_range and r.tokens_per_s_range[0] > 0 else None,
                        "repeat": sum(1 for q in result.rows if q.name == r.name and q.number < r.number) > 0,
                        "predicted": r.predicted_tokens_per_s, "calibrated": r.calibrated_tokens_per_s,
                        "grid": grid.get(r.name, {}).get("tokens_per_s")} for r in result.rows],
            "calibration": result.calibration}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per trial (after one warm-up)")
    ap.add_argument("--grid-repeats", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.3, help="tuner trials as a fraction of the grid's plans")
    ap.add_argument("--runs", type=int, default=3, help="tuner runs against the one grid")
    ap.add_argument("--grid-cache", type=Path, help="read the grid from this JSON file, or write it there")
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="refuse to start when the 1-minute load average is above this (other work biases times)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    if load > args.max_load:
        sys.exit(f"the 1-minute load average is {load:.2f} (> --max-load {args.max_load}): other work shares the "
                 f"cores and would bias the trials; wait for a quiet machine or raise --max-load")
    quiet_optuna()
    with tempfile.TemporaryDirectory() as tmp:
        space = make_space(Path(tmp))
        plans = sum(1 for _ in space.feasible())
        if args.grid_cache and args.grid_cache.exists():
            cached = json.loads(args.grid_cache.read_text())
            grid, repeats = cached["grid"], cached["repeats"]
        else:
            t0 = time.monotonic()
            grid, repeats = measure_grid(space, args.steps, args.grid_repeats), args.grid_repeats
            print(f"grid measured in {time.monotonic() - t0:,.0f} s", file=sys.stderr)
            if args.grid_cache:
                args.grid_cache.write_text(json.dumps({"grid": grid, "repeats": repeats, "steps": args.steps}))
        trials = max(2, math.floor(args.budget * plans))
        runs = [tune_once(space, grid, trials, args.steps, seed, repeats) for seed in range(args.runs)]
    if args.json:
        print(json.dumps({"plans": plans, "tune_trials": trials, "grid": grid, "runs": runs}, indent=2))
        return
    print(f"grid: {plans} plans x {repeats} repeats; median repeat spread "
          f"{statistics.median(g['spread'] for g in grid.values()):.1%}")
    for name, g in sorted(grid.items(), key=lambda kv: -kv[1]["tokens_per_s"]):
        print(f"  {name:36s} {g['tokens_per_s']:9,.0f} tok/s  (repeats {g['spread']:+.0%} apart)")
    for i, r in enumerate(runs, 1):
        print(f"run {i}: {trials} trials, winner {r['winner']} ({r['winner_grid_tokens_per_s']:,.0f} tok/s in the "
              f"grid; best {r['grid_best']} {r['grid_best_tokens_per_s']:,.0f}): quality {r['quality']:.3f}, "
              f"trial time {r['tune_trial_s']:,.0f} s / {r['grid_pass_trial_s']:,.0f} s = {r['time_ratio']:.3f}")
        for t in r["trials"]:
            spread = f"{t['spread']:5.1%}" if t["spread"] is not None else "    -"
            print(f"    round {t['round']} {t['name']:36s}{' (repeat)' if t['repeat'] else '         '} steps "
                  f"{t['steps']}  measured {t['measured'] or 0:9,.0f} (steps {spread} apart)  "
                  f"predicted {t['predicted'] or 0:9,.0f}  calibrated {t['calibrated'] or 0:9,.0f}  "
                  f"grid {t['grid'] or 0:9,.0f}")
    qualities = [r["quality"] for r in runs]
    ratios = [r["time_ratio"] for r in runs]
    spreads = [g["spread"] for g in grid.values()]
    print(f"quality min {min(qualities):.3f} (aim >= 0.95 in every run); trial time max {max(ratios):.3f} "
          f"(aim <= 0.35); grid repeat spread median {statistics.median(spreads):.1%}, max {max(spreads):.1%}")


if __name__ == "__main__":
    main()
