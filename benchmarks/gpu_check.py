"""The GPU session's check (issues 24 and 27), in one device call: environment, the CUDA device fit, real single-GPU
steps beside ftplan's three memory readings and step time, and the README's table. The phases are
profiler/gpu_check.py's (each guarded, within --budget-s, the summary written after every phase); the table is
reports/gpu_check_table.py's.

On the device machine (one H100 or H200, no network; transformers, peft and what they need at the locked versions
travel as wheels in .whl/, made here by `bash benchmarks/gpu_wheels.sh`), the whole check is one `run` call with
timeout_s 540, carry [".whl"] and this command (DEVICE_COMMAND below; `--print-command` prints it):

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 && set -o pipefail && python3 benchmarks/gpu_check.py --out $OUT --budget-s 420 2>&1 | tee $OUT/log.txt

What comes back under $OUT: summary.json, table.md, nvidia-smi.txt, <GPU>.json
(the fit, as `ftplan profile calibrate --device` writes it) and log.txt. Expected time on an H100: the environment
about 15 s, the fit 70-100 s, each plan 25-45 s (five plans), about 5 minutes in all; the budget skips what it cannot
hold, cheapest plans first, and the call's 540 s leave 120 s for the install, a plan's stop (torchrun's ranks get 30 s
after SIGTERM) and the transfers.

Here, without a GPU: `python benchmarks/gpu_check.py --out DIR --smoke` runs the same phases on the CPU with a tiny
Llama (the fit phase fails there, as it must without CUDA, and is recorded so); tests/profiler/test_gpu_check.py runs
them against a simulated board.

Usage: python benchmarks/gpu_check.py --out DIR [--budget-s 420] [--smoke] [--plans LABEL,...] [--steps 3]
                                      [--gpu NAME] | --print-command
Exit status 0 once the summary is written (a phase's failure is in it), 2 for bad options (one line on stderr).
"""  # noqa: E501 (the device command stays one line, to be copied whole)

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.errors import PlanError  # noqa: E402
from profiler.gpu_check import CheckOptions, Seams, run_check  # noqa: E402
from reports.gpu_check_table import markdown  # noqa: E402

# The device call (the device README's wheel install, then the check; its output also kept in $OUT/log.txt)
DEVICE_COMMAND = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "
                  "/tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 && "
                  "set -o pipefail && python3 benchmarks/gpu_check.py --out $OUT --budget-s 420 2>&1 | "
                  "tee $OUT/log.txt")
DEVICE_TIMEOUT_S = 540


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2 (argparse would print its usage first)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for summary.json, table.md and the rest")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall seconds for all phases")
    parser.add_argument("--smoke", action="store_true", help="the CPU and a tiny Llama instead of the GPU plans")
    parser.add_argument("--plans", default="", help="comma-separated plan labels (default: all, cheapest first)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per plan, after 1 warm-up")
    parser.add_argument("--gpu", default=None, help="the catalog GPU (default: nvidia-smi's board name)")
    parser.add_argument("--print-command", action="store_true", help="print the device call's command and exit")
    args = parser.parse_args(argv)
    if args.print_command:
        print(f"{DEVICE_COMMAND}\n(timeout_s {DEVICE_TIMEOUT_S}, carry [\".whl\"])")
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    opts = CheckOptions(out_dir=args.out, budget_s=args.budget_s, smoke=args.smoke, steps=args.steps, gpu=args.gpu,
                        plans=tuple(p.strip() for p in args.plans.split(",") if p.strip()))
    try:
        summary = run_check(opts, Seams(markdown=markdown))
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = summary["phases"]["table"]
    print(table.get("markdown") or f"table: {table.get('status')}: {table.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
