"""Planner vs measured peak memory over a fixed set of configurations; prints a table and the median and
worst relative error (predicted / measured - 1).

- Dry runs (profiler.dryrun, fake tensors) of the full-size Llama-2-7B and Llama-3-8B: full fine-tuning,
  LoRA (all linear targets, r 8, dropout 0.05) and LoRA with full activation checkpointing; bf16-mixed,
  SDPA, one sequence of 2048 tokens, AdamW. The planner is asked for `--gpus 1xCPU` (no CUDA context,
  no allocator reserve), so both sides count tensor bytes only.
- Real CPU steps (profiler.launch, torchrun over gloo) of a 134M-parameter Llama (profiler.launch.SMALL_LLAMA),
  full fine-tuning in fp32, one sequence of 256 tokens: one process, and two processes under DDP,
  DeepSpeed ZeRO-2, ZeRO-3 and FSDP (full shard). Measured: the most loaded rank's peak of live tensor bytes.

Usage: python benchmarks/accuracy.py [--only dry|real] [--json FILE]   (about 5-10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planner.build import build_config  # noqa: E402
from planner.memory import memory_per_gpu  # noqa: E402
from planner.strategy import FsdpStrategy, GradCkpt, Method, Precision  # noqa: E402

DRY_CASES: list[tuple[str, str, dict[str, Any]]] = [
    (f"{model} {label}", model, kw)
    for model in ("llama-2-7b", "llama-3-8b")
    for label, kw in (("full", {"method": Method.full}), ("lora", {"method": Method.lora}),
                      ("lora ckpt", {"method": Method.lora, "grad_ckpt": GradCkpt.full}))
]

REAL_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("134M 1 proc", "1xCPU", {}),
    ("134M 2 proc DDP", "2xCPU", {}),
    ("134M 2 proc ZeRO-2", "2xCPU", {"zero": 2}),
    ("134M 2 proc ZeRO-3", "2xCPU", {"zero": 3}),
    ("134M 2 proc FSDP", "2xCPU", {"fsdp": FsdpStrategy.full_shard}),
]


def dry_rows() -> list[dict[str, Any]]:
    from profiler.dryrun import dry_run

    rows = []
    for case, model, kw in DRY_CASES:
        cfg = build_config(model=model, gpus="1xCPU", seq_len=2048, **kw)
        t0 = time.perf_counter()
        result = dry_run(cfg)
        pred = memory_per_gpu(cfg).as_dict()
        rows.append({"case": case, "kind": "dry run", "measured": result.peak_bytes["total"],
                     "predicted": pred["total"],
                     "categories": {k: [result.peak_bytes[k], pred[k]] for k in result.peak_bytes},
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(f"  {case}: {rows[-1]['wall_s']} s", file=sys.stderr)
    return rows


def real_rows() -> list[dict[str, Any]]:
    from profiler.launch import SMALL_LLAMA, launch, write_model_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model_config(SMALL_LLAMA, Path(tmp) / "small-llama")
        for case, gpus, kw in REAL_CASES:
            cfg = build_config(model=str(model_dir), gpus=gpus, method=Method.full, precision=Precision.fp32,
                               seq_len=256, **kw)
            t0 = time.perf_counter()
            result = launch(cfg, warmup_steps=1, steps=1)
            rows.append({"case": case, "kind": "CPU steps", "measured": result.peak_bytes,
                         "predicted": round(memory_per_gpu(cfg).allocated), "step_time_s": result.step_time_s,
                         "wall_s": round(time.perf_counter() - t0, 1)})
            print(f"  {case}: {rows[-1]['wall_s']} s", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("dry", "real"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    if args.only in (None, "dry"):
        rows += dry_rows()
    if args.only in (None, "real"):
        rows += real_rows()
    from rich.console import Console

    from reports.profile_report import accuracy_categories_table, accuracy_table

    console = Console()
    console.print(accuracy_table(rows))
    if any("categories" in r for r in rows):
        console.print(accuracy_categories_table(rows))
    errors = [abs(r["predicted"] / r["measured"] - 1) for r in rows]
    worst = max(range(len(rows)), key=lambda k: errors[k])
    print(f"median |error| {100 * statistics.median(errors):.1f}%, worst {100 * errors[worst]:.1f}% "
          f"({rows[worst]['case']})")
    for kind in ("dry run", "CPU steps"):
        sub = [e for r, e in zip(rows, errors, strict=True) if r["kind"] == kind]
        if sub:
            print(f"  {kind}: median {100 * statistics.median(sub):.1f}%, worst {100 * max(sub):.1f}%")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
