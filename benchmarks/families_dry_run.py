"""Planner vs the fake-tensor dry run of the real transformers model for current architectures at full size: LoRA
and full fine-tuning (also 16 sequences), with and without full activation checkpointing; bf16-mixed, 2048 tokens,
AdamW, `--gpus 1xCPU` (no CUDA context or allocator reserve: both sides count tensor bytes). Prints a markdown
table (the README's) and writes the rows as JSON.

Usage: python benchmarks/families_dry_run.py [--models qwen3-8b,...] [--json FILE]   (about 20-40 minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planner.build import build_config  # noqa: E402
from planner.memory import memory_per_gpu  # noqa: E402
from planner.strategy import Attn, GradCkpt, Method  # noqa: E402

# (catalog name, what it exercises, dense or MoE, extra options)
MODELS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("qwen3-8b", "q/k norms", "dense", {}),
    ("gemma-3-12b", "5:1 sliding-window and global layers, sandwich norms, tied head, SDPA masks past the window",
     "dense", {}),
    ("olmo-2-7b", "post-norms, q/k norms over whole q and k", "dense", {}),
    ("phi-4", "fused qkv_proj and gate_up_proj", "dense", {}),
    ("qwen3-30b-a3b", "128 experts, top-8, fused experts under grouped_mm", "moe", {"lora_dropout": 0.0}),
    ("gpt-oss-20b", "32 experts with biases, attention sinks (eager), alternating windows", "moe",
     {"attn": Attn.eager}),
]
# with one sequence a full fine-tune peaks at the optimizer step (model states only); 16 sequences put its peak at
# the start of backward, where the activations of every layer are held
CASES = [("full", {"method": Method.full}), ("full, 16 seqs", {"method": Method.full, "micro_batch": 16}),
         ("LoRA", {"method": Method.lora}),
         ("full + ckpt", {"method": Method.full, "grad_ckpt": GradCkpt.full}),
         ("LoRA + ckpt", {"method": Method.lora, "grad_ckpt": GradCkpt.full})]
TOLERANCE = {"dense": 0.03, "moe": 0.05}


def rows(models: list[str]) -> list[dict[str, Any]]:
    from profiler.dryrun import dry_run

    out = []
    for name, what, kind, extra in MODELS:
        if models and name not in models:
            continue
        for label, kw in CASES:
            cfg = build_config(model=name, gpus="1xCPU", seq_len=2048, **{**extra, **kw})
            t0 = time.perf_counter()
            result = dry_run(cfg)
            pred = memory_per_gpu(cfg).as_dict()
            out.append({"model": name, "what": what, "kind": kind, "case": label, "phase": result.peak_phase,
                        "measured_bytes": result.peak_bytes["total"], "predicted_bytes": pred["total"],
                        "categories": {k: [result.peak_bytes[k], pred[k]] for k in result.peak_bytes},
                        "wall_s": round(time.perf_counter() - t0, 1)})
            r = out[-1]
            print(f"  {name} {label}: {r['measured_bytes'] / 2**30:.2f} vs {r['predicted_bytes'] / 2**30:.2f} GiB "
                  f"({r['wall_s']} s)", file=sys.stderr, flush=True)
    return out


def table(data: list[dict[str, Any]]) -> str:
    lines = ["| model (what it exercises) | case | dry run GiB (peak phase) | ftplan GiB | deviation | within |",
             "|---|---|---:|---:|---:|---|"]
    for r in data:
        dev = r["predicted_bytes"] / r["measured_bytes"] - 1
        ok = abs(dev) <= TOLERANCE[r["kind"]]
        lines.append(f"| {r['model']} ({r['what']}) | {r['case']} | {r['measured_bytes'] / 2**30:.2f} "
                     f"({r['phase']}) | "
                     f"{r['predicted_bytes'] / 2**30:.2f} | {100 * dev:+.1f}% | "
                     f"{'yes' if ok else 'no'} ({100 * TOLERANCE[r['kind']]:.0f}%) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated catalog names (default: all six)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = rows([m for m in args.models.split(",") if m])
    print(table(data))
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
