"""Gradient accumulation with and without the Trainer's no_sync: real 2-process CPU steps vs predictions.

Under the HF Trainer every micro-batch but the last runs under `accelerator.no_sync`, so DDP all-reduces and FSDP
reduce-scatters once per optimizer step; with --sync-each-batch every micro-batch reduces (planner.engines.ddp
`reductions_per_step`). The 16.6M-parameter Llama of benchmarks/rank_order.py (fp32, seq 128) runs DDP and FSDP2
FULL_SHARD, full fine-tuning, micro-batch 1 x `--grad-accum` (default 4), each with and without --sync-each-batch,
on 2 CPU processes over gloo (profiler.launch.launch_many, the machinery of `ftplan profile run`, without the memory
tracker), in `--repeats` interleaved rounds (the order reversed every other round) so that a slow spell of the shared
machine spreads over the plans.

Printed: per plan the measured step time (median of the rounds' medians, and their spread), the predicted one (with
`--device-fit FILE` from `ftplan profile calibrate --device --out FILE`, else the catalog's constants) and the error,
then per engine the measured and predicted cost of syncing every micro-batch (sync-each / no_sync - 1).

Usage: python benchmarks/accum_sync.py [--repeats 3] [--steps 3] [--grad-accum 4] [--device-fit FILE]
                                       [--save FILE] [--load FILE] [--json]
`--load` re-predicts saved measurements without running anything (a model change against the same measurements).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.rank_order import LLAMA_16M, SEQ, measure, plan_name  # noqa: E402
from planner.build import build_config  # noqa: E402
from planner.gpus import with_device_fit  # noqa: E402
from planner.strategy import FsdpStrategy, Method, Precision, TrainConfig  # noqa: E402
from planner.timing import step_time  # noqa: E402

ENGINES: tuple[tuple[str, dict], ...] = (("ddp", {}), ("fsdp2", {"fsdp": FsdpStrategy.full_shard}))


def plan_configs(model_path: Path, grad_accum: int, device_fit: dict | None) -> list[TrainConfig]:
    cfgs = [build_config(model=str(model_path), gpus="2xCPU", method=Method.full, precision=Precision.fp32,
                         micro_batch=1, grad_accum=grad_accum, seq_len=SEQ, sync_each_batch=each, **kw)
            for _, kw in ENGINES for each in (False, True)]
    if device_fit is None:
        return cfgs
    cluster = replace(cfgs[0].cluster, gpu=with_device_fit(cfgs[0].cluster.gpu, device_fit))
    return [replace(c, cluster=cluster) for c in cfgs]


def label(cfg: TrainConfig) -> str:
    return plan_name(cfg) + ("-sync-each" if cfg.sync_each_batch else "-no_sync")


def report(cfgs: list[TrainConfig], measured: dict[str, list[float]]) -> dict:
    rows = []
    for cfg in cfgs:
        times = measured[label(cfg)]
        meas, pred = statistics.median(times), step_time(cfg).step_time_s
        rows.append({"plan": label(cfg), "measured_s": meas, "spread": max(times) / min(times) - 1,
                     "rounds_s": times, "predicted_s": pred, "error": pred / meas - 1})
    costs = []
    for (name, _), (off, on) in zip(ENGINES, zip(rows[::2], rows[1::2], strict=True), strict=True):
        costs.append({"engine": name, "measured": on["measured_s"] / off["measured_s"] - 1,
                      "predicted": on["predicted_s"] / off["predicted_s"] - 1,
                      "measured_by_round": [b / a - 1 for a, b in zip(off["rounds_s"], on["rounds_s"], strict=True)]})
    return {"rows": rows, "sync_each_cost": costs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per measurement (their median)")
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--device-fit", type=Path, help="predict with this `profile calibrate --device` file")
    ap.add_argument("--save", type=Path, help="write the measurements to this JSON file")
    ap.add_argument("--load", type=Path, help="re-predict measurements saved with --save; run nothing")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    saved = json.loads(args.load.read_text()) if args.load else {}
    grad_accum = saved.get("grad_accum", args.grad_accum)
    fit = json.loads(args.device_fit.read_text()) if args.device_fit else saved.get("device_fit")
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "llama-16m"
        model_path.mkdir()
        (model_path / "config.json").write_text(json.dumps(LLAMA_16M))
        cfgs = plan_configs(model_path, grad_accum, fit)
        if args.load:
            measured = saved["measured_s"]
        else:
            by_plan, raw = measure(cfgs, args.repeats, args.steps)
            # rank_order's plan_name does not name the sync: the runs come back in the order given, per round
            measured = {label(c): [] for c in cfgs}
            for r in range(args.repeats):
                order = cfgs if r % 2 == 0 else cfgs[::-1]
                for c in order:
                    measured[label(c)].append(by_plan[plan_name(c)].pop(0))
            if args.save:
                args.save.write_text(json.dumps({"model": LLAMA_16M, "seq_len": SEQ, "grad_accum": grad_accum,
                                                 "measured_s": measured, "raw": raw, "device_fit": fit},
                                                indent=1) + "\n")
        out = report(cfgs, measured)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'plan':56s} {'measured s':>10s} {'spread':>7s} {'predicted s':>11s} {'error':>7s}")
    for r in out["rows"]:
        print(f"{r['plan']:56s} {r['measured_s']:10.3f} {r['spread']:7.1%} {r['predicted_s']:11.3f} "
              f"{r['error']:+7.1%}")
    for c in out["sync_each_cost"]:
        rounds = ", ".join(f"{x:+.1%}" for x in c["measured_by_round"])
        print(f"{c['engine']}: syncing every micro-batch costs {c['measured']:+.1%} measured ({rounds} by round), "
              f"{c['predicted']:+.1%} predicted")


if __name__ == "__main__":
    main()
