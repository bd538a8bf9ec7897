"""The planner's numbers for a fixed set of `ftplan plan` / `ftplan estimate` commands, saved once and compared
after a change that must not move any of them (a speed-up: caching, hoisting, pruning).

    python benchmarks/plan_outputs.py --save DIR      # before the change (main)
    python benchmarks/plan_outputs.py --compare DIR   # after it: exit 1 and the first differences if any moved

Each command runs in a subprocess with `--json` (plans with `--all`: every fitting plan, its memory, readings,
time breakdown and config) and the catalog's device constants (`--device-fit none`). The comparison is exact:
the same JSON text, floats to the last bit; where the text differs only in key order, that is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

COMMON = ["--json", "--device-fit", "none"]
PLANS: dict[str, list[str]] = {
    "plan_7b_a800": ["--model", "7b", "--gpus", "8xA800"],
    "plan_7b_a800_wide": ["--model", "7b", "--gpus", "8xA800", "--optimizers", "adamw,adamw_8bit"],
    "plan_qwen3_8b_h100": ["--model", "qwen3-8b", "--gpus", "8xH100"],
    "plan_qwen3_30b_a3b_h100": ["--model", "qwen3-30b-a3b", "--gpus", "8xH100"],
    "plan_gemma3_12b_a100_eager": ["--model", "gemma-3-12b", "--gpus", "4xA100", "--attns", "eager,sdpa",
                                   "--seq-len", "4096"],
    "plan_gpt_oss_20b_h100": ["--model", "gpt-oss-20b", "--gpus", "8xH100", "--method", "lora"],
    "plan_70b_2nodes_full": ["--model", "llama-3.1-70b", "--gpus", "2x8xH100", "--method", "full"],
    "plan_mixtral_a800": ["--model", "mixtral-8x7b", "--gpus", "8xA800", "--method", "lora", "--method", "qlora"],
    "plan_grpo_7b_a800": ["--model", "7b", "--gpus", "8xA800", "--stage", "grpo"],
    "plan_dpo_qwen3_4b_l40s": ["--model", "qwen3-4b", "--gpus", "4xL40S", "--stage", "dpo"],
    "plan_cpu_qwen3_0.6b": ["--model", "qwen3-0.6b", "--gpus", "2xCPU", "--seq-len", "256"],
}
ESTIMATES: dict[str, list[str]] = {
    "est_7b_full_z3": ["--model", "7b", "--gpus", "8xA800", "--method", "full", "--zero", "3", "--micro-batch", "4",
                       "--grad-ckpt", "full"],
    "est_7b_lora_z3": ["--model", "7b", "--gpus", "8xA800", "--method", "lora", "--zero", "3", "--micro-batch", "2"],
    "est_7b_qlora_ddp": ["--model", "7b", "--gpus", "1xA100", "--method", "qlora", "--micro-batch", "4"],
    "est_qwen3_8b_lora_fsdp": ["--model", "qwen3-8b", "--gpus", "8xH100", "--method", "lora", "--fsdp", "full_shard",
                               "--micro-batch", "4"],
    "est_qwen3_30b_a3b_full": ["--model", "qwen3-30b-a3b", "--gpus", "8xH100", "--method", "full", "--fsdp",
                               "full_shard", "--grad-ckpt", "full", "--micro-batch", "2"],
    "est_gemma3_4b_eager": ["--model", "gemma-3-4b", "--gpus", "1xH100", "--method", "lora", "--attn", "eager",
                            "--seq-len", "4096"],
    "est_gpt_oss_20b_lora": ["--model", "gpt-oss-20b", "--gpus", "8xH100", "--method", "lora", "--attn", "eager",
                             "--zero", "2"],
    "est_70b_tp_pp": ["--model", "llama-3.1-70b", "--gpus", "2x8xH100", "--method", "full", "--zero", "1", "--tp", "8",
                      "--pp", "2", "--micro-batch", "1", "--grad-accum", "8", "--grad-ckpt", "selective"],
    "est_grpo_7b": ["--model", "7b", "--gpus", "8xA800", "--stage", "grpo", "--method", "lora"],
    "est_cpu_qwen3_0.6b": ["--model", "qwen3-0.6b", "--gpus", "2xCPU", "--method", "full", "--seq-len", "256"],
}


def commands() -> dict[str, list[str]]:
    base = [sys.executable, "-m", "ftplan"]
    out = {name: [*base, "plan", *args, *COMMON, "--all"] for name, args in PLANS.items()}
    out.update({name: [*base, "estimate", *args, *COMMON] for name, args in ESTIMATES.items()})
    return out


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode:
        return json.dumps({"exit": done.returncode, "stderr": done.stderr.strip().splitlines()[-1:]})
    return done.stdout


def differences(a: Any, b: Any, path: str = "$", limit: int = 10) -> list[str]:
    """Paths where two JSON values differ (floats exactly), at most `limit`."""
    out: list[str] = []
    if type(a) is not type(b):
        return [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict):
        for key in list(dict.fromkeys([*a, *b])):
            if key not in a or key not in b:
                out.append(f"{path}.{key}: only in {'saved' if key in a else 'new'}")
            else:
                out += differences(a[key], b[key], f"{path}.{key}", limit - len(out))
            if len(out) >= limit:
                break
    elif isinstance(a, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            out += differences(x, y, f"{path}[{i}]", limit - len(out))
            if len(out) >= limit:
                break
    elif a != b:
        out.append(f"{path}: {a!r} != {b!r}")
    return out[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, help="write each command's JSON into this folder")
    group.add_argument("--compare", type=Path, help="compare each command's JSON with this folder's")
    parser.add_argument("--only", default="", help="comma-separated case names (default: all)")
    args = parser.parse_args()
    chosen = set(filter(None, args.only.split(",")))
    moved = 0
    for name, cmd in commands().items():
        if chosen and name not in chosen:
            continue
        text = run(cmd)
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{name}.json").write_text(text)
            print(f"saved {name}: {len(text):,} characters")
            continue
        saved = (args.compare / f"{name}.json").read_text()
        if text == saved:
            print(f"same  {name}")
            continue
        found = differences(json.loads(saved), json.loads(text))
        if not found:
            print(f"same  {name} (key order differs)")
            continue
        moved += 1
        print(f"MOVED {name}: {' '.join(cmd[3:])}")
        for line in found:
            print(f"      {line}")
    if moved:
        raise SystemExit(f"{moved} command(s) moved")


if __name__ == "__main__":
    main()
