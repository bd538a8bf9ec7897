"""How good is `ftplan tune --measure`, and how much trial time does it save, against measuring everything?

On a small Llama (built from a config, no download) on 2 CPU processes over gloo, the space is
ZeRO stage (DDP, Z1, Z2, Z3) x micro-batch x activation checkpointing. The exhaustive measured grid runs every
plan once; then the tuner runs with a budget of 34% of the grid's plans (5 of 16: DeepSpeed trials start
slower than DDP ones, so a third of the plans is about 40% of the grid's trial time). Printed, from this
one run:

  quality = grid-measured tokens/s of the tuner's winner / best grid-measured tokens/s  (aim >= 0.95)
  own     = the tuner's own measurement of its winner  / best grid-measured tokens/s  (includes run-to-run noise)
  time    = the tuner's summed trial wall time / the grid's summed trial wall time    (aim <= 0.40)

Usage: python benchmarks/tune_quality.py [--steps 3] [--budget 0.34] [--json]

The CPU is shared and noisy: the same plan can measure 2-3x apart in two trials minutes apart, which
bounds the ratios any tuner can reach on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.build import build_config  # noqa: E402
from planner.search import SearchSpace  # noqa: E402
from planner.strategy import Attn, Engine, GradCkpt, Method, Optimizer, ZeroStage  # noqa: E402
from planner.tune_space import Filters, build_space, trial_label  # noqa: E402
from runner.trial import run_trial, unsupported  # noqa: E402
from runner.tune import TuneOptions, quiet_optuna, tune  # noqa: E402

TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 1024, "hidden_size": 128,
        "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per trial")
    ap.add_argument("--budget", type=float, default=0.34, help="tuner trials as a fraction of the grid")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quiet_optuna()
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "tiny-llama" / "config.json"
        cfg_path.parent.mkdir()
        cfg_path.write_text(json.dumps(TINY))
        base = build_config(model=str(cfg_path), gpus="2xCPU", method=Method.full, seq_len=128, check=False)
        space = build_space(base, SearchSpace(methods=(Method.full,), micro_batches=(2, 8),
                                              grad_ckpts=(GradCkpt.none, GradCkpt.full), attns=(Attn.sdpa,),
                                              optimizers=(Optimizer.adamw,)),
                            Filters(engines=(Engine.ddp, Engine.deepspeed),
                                    zero_stages=(ZeroStage(1), ZeroStage(2), ZeroStage(3))), unsupported)
        plans = list(space.feasible())
        grid: dict[str, tuple[float, float]] = {}
        t0 = time.monotonic()
        for i, cfg in enumerate(plans, 1):
            out = run_trial(cfg, steps=args.steps)
            grid[trial_label(cfg)] = (out.tokens_per_s if out.ok else 0.0, out.wall_s)
            print(f"grid {i}/{len(plans)} {trial_label(cfg)}: {grid[trial_label(cfg)][0]:,.0f} tok/s "
                  f"({out.wall_s:.0f} s){'' if out.ok else ' FAILED ' + out.reason}", file=sys.stderr)
        grid_wall_s = time.monotonic() - t0
        best_name, (best_tps, _) = max(grid.items(), key=lambda kv: kv[1][0])
        grid_trial_s = sum(w for _, w in grid.values())
        trials = max(1, math.floor(args.budget * len(plans)))
        result = tune(space, TuneOptions(measure=True, trials=trials, storage="memory", trial_steps=args.steps))
        winner = result.best_row.name
        out = {
            "plans": len(plans), "tune_trials": trials, "grid_best": best_name, "grid_best_tokens_per_s": best_tps,
            "tune_winner": winner, "tune_winner_grid_tokens_per_s": grid[winner][0],
            "tune_winner_own_tokens_per_s": result.best_row.tokens_per_s,
            "quality_ratio": grid[winner][0] / best_tps,
            "own_quality_ratio": (result.best_row.tokens_per_s or 0.0) / best_tps,
            "grid_trial_s": grid_trial_s, "tune_trial_s": result.measured_trial_s,
            "time_ratio": result.measured_trial_s / grid_trial_s, "grid_wall_s": grid_wall_s,
            "tune_trials_run": [(r.name, r.state, r.tokens_per_s) for r in result.rows if r.state != "duplicate"],
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"grid: {len(plans)} plans, best {best_name} {best_tps:,.0f} tok/s, {grid_trial_s:,.0f} s of trials")
    print(f"tune: {trials} trials, winner {winner} ({out['tune_winner_grid_tokens_per_s']:,.0f} tok/s in the grid, "
          f"{out['tune_winner_own_tokens_per_s']:,.0f} in its own trial), {result.measured_trial_s:,.0f} s of trials")
    print(f"quality ratio {out['quality_ratio']:.3f} (own measurement {out['own_quality_ratio']:.3f}); "
          f"trial-time ratio {out['time_ratio']:.3f}")


if __name__ == "__main__":
    main()
