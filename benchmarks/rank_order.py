"""Does the time model rank plans in the order they really run? Real 2-process CPU steps vs predictions.

A 16.6M-parameter Llama (hidden 384, 6 layers, vocab 8000, fp32, seq 128), built from a config (no
download), runs real optimizer steps on 2 CPU processes over gloo (`profiler.launch`, the machinery of
`ftplan profile run`, without the memory tracker so that the steps are timed untouched). Plans: DDP,
ZeRO-1/2/3 and FSDP; micro-batch 1 to 8; activation checkpointing none / full; full fine-tuning and LoRA.
Every plan is measured `--repeats` times (default 2), in interleaved rounds (all plans, then all plans
again) so that a slow spell of the shared machine spreads over the plans instead of hitting one.

Printed: per plan the measured step time (median of the repeats, and their spread), the predicted one
with the planner's shipped CPU defaults (planner/gpus.py, fitted by `ftplan profile calibrate --device`),
the error, then Kendall's tau between the measured and the predicted tokens/s and the median
|step-time error|. Aims (issue 27): tau >= 0.8, median error <= 15%, with a fresh device fit of the machine.

Usage: python benchmarks/rank_order.py [--repeats 2] [--steps 3] [--save FILE] [--load FILE]
                                      [--device-fit FILE | --fit-each-round] [--harness fork|fresh] [--json]
`--save` keeps the measurements (per plan and round the median step, every rank's every step, the load average
around each round and the device fit predicted with); `--load` re-predicts saved measurements without running
anything (to check a model change against the same measurements); `--device-fit` predicts with the constants of a
fresh `ftplan profile calibrate --device --out FILE` instead of the shipped CPU defaults (fit and
measure back to back when the machine's load changes); `--fit-each-round` runs one pass of that fit before each
round and predicts with their medians (`ftplan profile calibrate --device --passes N`'s combination), so that the
VM's speed, which drifts 15-30% within minutes, is sampled alike by the fit and the steps. Whole run: about 6-10
minutes on a quiet 2-core machine (each fit pass adds about a minute); the machine's load shows in the spread column.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.build import build_config  # noqa: E402
from planner.errors import PlanError  # noqa: E402
from planner.gpus import with_device_fit  # noqa: E402
from planner.strategy import FsdpStrategy, GradCkpt, Method, Precision, TrainConfig  # noqa: E402
from planner.timing import step_time  # noqa: E402
from profiler.calibrate import kendall_tau  # noqa: E402

LLAMA_16M = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 8000, "hidden_size": 384,
             "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 6,
             "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
SEQ = 128

# (label, engine kwargs, method, micro-batch, grad-accum, checkpointing): 14 plans
PLANS: tuple[tuple[str, dict, Method, int, int, GradCkpt], ...] = (
    ("ddp", {}, Method.full, 1, 2, GradCkpt.none),
    ("ddp", {}, Method.full, 4, 1, GradCkpt.none),
    ("ddp", {}, Method.full, 8, 1, GradCkpt.none),
    ("ddp", {}, Method.full, 4, 1, GradCkpt.full),
    ("z1", {"zero": 1}, Method.full, 2, 1, GradCkpt.none),
    ("z2", {"zero": 2}, Method.full, 2, 1, GradCkpt.none),
    ("z2", {"zero": 2}, Method.full, 8, 1, GradCkpt.none),
    ("z3", {"zero": 3}, Method.full, 2, 1, GradCkpt.none),
    ("z3", {"zero": 3}, Method.full, 8, 1, GradCkpt.full),
    ("fsdp", {"fsdp": FsdpStrategy.full_shard}, Method.full, 2, 1, GradCkpt.none),
    ("fsdp", {"fsdp": FsdpStrategy.full_shard}, Method.full, 8, 1, GradCkpt.none),
    ("ddp", {}, Method.lora, 4, 1, GradCkpt.none),
    ("z2", {"zero": 2}, Method.lora, 4, 1, GradCkpt.none),
    ("z3", {"zero": 3}, Method.lora, 4, 1, GradCkpt.full),
)


def plan_configs(model_path: Path, device_fit: dict | None = None) -> list[TrainConfig]:
    cfgs = [build_config(model=str(model_path), gpus="2xCPU", method=method, precision=Precision.fp32,
                         micro_batch=mb, grad_accum=ga, seq_len=SEQ, grad_ckpt=ckpt, **kw)
            for _, kw, method, mb, ga, ckpt in PLANS]
    if device_fit is None:
        return cfgs
    gpu = with_device_fit(cfgs[0].cluster.gpu, device_fit)
    cluster = replace(cfgs[0].cluster, gpu=gpu)
    return [replace(c, cluster=cluster) for c in cfgs]


def plan_name(cfg: TrainConfig) -> str:
    return f"{cfg.method.value}-{cfg}"


def measure(cfgs: list[TrainConfig], repeats: int, steps: int, *, fit_each_round: bool = False,
            harness: str = "fork") -> tuple[dict[str, list[float]], dict]:
    """`repeats` rounds; each round runs every plan once, the order reversed every other round so that a plan's
    place in the round does not bias its time. `harness` "fork": all plans in one torchrun
    (profiler.launch.launch_many; each plan in a process forked fresh from the rank, profiler.worker.run_many);
    "fresh": each plan in a torchrun of its own (profiler.launch.launch, the plan in the rank itself, as a user's
    run), which pays the interpreter's and the libraries' start-up per plan (5-10 s on this VM). Returns the
    median step time per plan and round, and the raw record: every rank's every timed step, and the machine's
    1-minute load average before and after each round (a round whose load rose was shared with other work). With
    `fit_each_round` one pass of the CPU device fit runs before each round (raw["device_fits"]): the fit and the
    steps then sample the same stretch of the machine's drifting speed."""
    from profiler.device_fit import fit_cpu_device
    from profiler.launch import launch, launch_many

    def run_round(order: list[TrainConfig]) -> list:
        if harness == "fresh":
            return [launch(c, warmup_steps=1, steps=steps, track_memory=False) for c in order]
        return launch_many(order, warmup_steps=1, steps=steps, track_memory=False)

    out: dict[str, list[float]] = {plan_name(c): [] for c in cfgs}
    raw: dict = {"harness": harness, "steps_s": {plan_name(c): [] for c in cfgs}, "rounds": [], "device_fits": []}
    for r in range(repeats):
        if fit_each_round:
            t0 = time.perf_counter()
            raw["device_fits"].append(fit_cpu_device().to_dict())
            print(f"  device fit {r + 1}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        order = cfgs if r % 2 == 0 else cfgs[::-1]
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        for result in run_round(order):
            out[plan_name(result.config)].append(result.step_time_s)
            raw["steps_s"][plan_name(result.config)].append([list(rk.get("step_times_s", ())) for rk in result.ranks])
        load1 = os.getloadavg()[0]
        raw["rounds"].append({"seconds": time.perf_counter() - t0, "load_before": load0, "load_after": load1})
        print(f"  round {r + 1}: {len(cfgs)} plans in {time.perf_counter() - t0:.0f} s (1-minute load {load0:.2f} -> "
              f"{load1:.2f})", file=sys.stderr, flush=True)
    return out, raw


def report(cfgs: list[TrainConfig], measured: dict[str, list[float]]) -> dict:
    rows = []
    for cfg in cfgs:
        times = measured[plan_name(cfg)]
        meas = statistics.median(times)
        try:
            pred = step_time(cfg).step_time_s
        except PlanError:
            continue
        tokens = cfg.global_batch * cfg.seq_len
        rows.append({"plan": plan_name(cfg), "measured_s": meas, "spread": max(times) / min(times) - 1,
                     "predicted_s": pred, "error": pred / meas - 1, "measured_tokens_per_s": tokens / meas,
                     "predicted_tokens_per_s": tokens / pred, "repeats": len(times)})
    tau = kendall_tau([r["measured_tokens_per_s"] for r in rows], [r["predicted_tokens_per_s"] for r in rows])
    med = statistics.median(abs(r["error"]) for r in rows)
    return {"rows": rows, "kendall_tau": tau, "median_abs_error": med,
            "worst_abs_error": max(abs(r["error"]) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="measurements per plan (interleaved rounds)")
    ap.add_argument("--steps", type=int, default=3,
                    help="timed optimizer steps per measurement (their median: ZeRO-3's first step after the warm-up "
                         "can still take 2-3x, while DeepSpeed records its module trace)")
    ap.add_argument("--save", type=Path, help="write the measurements to this JSON file")
    ap.add_argument("--load", type=Path, help="re-predict measurements saved with --save; run nothing")
    ap.add_argument("--device-fit", type=Path, help="predict with this `profile calibrate --device` file")
    ap.add_argument("--fit-each-round", action="store_true",
                    help="run one pass of the device fit before each round and predict with the median of the "
                         "passes (profiler.device_fit.median_fit)")
    ap.add_argument("--harness", choices=("fork", "fresh"), default="fork",
                    help="fork: every plan of a round from one torchrun, each in a child forked from the rank "
                         "(imports paid once); fresh: each plan in a torchrun of its own, as a user's run")
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="refuse to measure when the 1-minute load average is above this (other work biases times)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "llama-16m"
        model_path.mkdir()
        (model_path / "config.json").write_text(json.dumps(LLAMA_16M))
        saved = json.loads(args.load.read_text()) if args.load else {}
        # a saved run is re-predicted with the fit given, else with the fit it was measured with (if it kept one)
        fit = json.loads(args.device_fit.read_text()) if args.device_fit else saved.get("device_fit")
        cfgs = plan_configs(model_path, fit)
        if args.load:
            measured = saved["measured_s"]
        else:
            load = os.getloadavg()[0]
            if load > args.max_load:
                sys.exit(f"the 1-minute load average is {load:.2f} (> --max-load {args.max_load}): other work shares "
                         f"the cores and would bias the times; wait for a quiet machine or raise --max-load")
            t0 = time.perf_counter()
            measured, raw = measure(cfgs, args.repeats, args.steps, fit_each_round=args.fit_each_round,
                                   harness=args.harness)
            print(f"measured {len(cfgs)} plans x {args.repeats} in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
            if raw["device_fits"]:
                from profiler.device_fit import device_fit_from_dict, median_fit

                fit = median_fit([device_fit_from_dict(f) for f in raw["device_fits"]]).to_dict()
                cfgs = plan_configs(model_path, fit)
            if args.save:
                args.save.write_text(json.dumps({"model": LLAMA_16M, "seq_len": SEQ, "measured_s": measured,
                                                 "raw": raw, "device_fit": fit}, indent=1) + "\n")
        out = report(cfgs, measured)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'plan':48s} {'measured s':>10s} {'spread':>7s} {'predicted s':>11s} {'error':>7s}")
    for r in out["rows"]:
        print(f"{r['plan']:48s} {r['measured_s']:10.3f} {r['spread']:7.1%} {r['predicted_s']:11.3f} "
              f"{r['error']:+7.1%}")
    print(f"Kendall tau (tokens/s, measured vs predicted): {out['kendall_tau']:.3f}   (aim >= 0.8)")
    print(f"median |step-time error|: {out['median_abs_error']:.1%}   worst: {out['worst_abs_error']:.1%}"
          "   (aim median <= 15%)")


if __name__ == "__main__":
    main()
