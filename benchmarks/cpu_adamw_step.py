"""The clip + AdamW step of two CPU DDP plans, as profiler/worker.py builds them, against the planner's prediction.

torch.optim.AdamW given neither foreach nor fused (the Trainer's `adamw_torch`, the worker) runs the single-tensor
loop on the CPU (planner/torch_adamw.py). Per rank, for the full and the LoRA DDP plans of benchmarks/rank_order.py
(LLAMA_16M, fp32, micro-batch 4, 128 tokens), after the forward and backward of each of 9 steps (the first 2 not
timed): clip_grad_norm_ + the worker's AdamW step, then clip_grad_norm_ + an AdamW(foreach=True) over the same
parameters, each timed (perf_counter, after a barrier; medians), and once, with both optimizers' states made, the
bytes each step's peak holds beyond them (profiler.tracker.StorageTracker entered around step(), the parameters,
gradients and states tracked first: its peak less those).

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 --master_port PORT benchmarks/cpu_adamw_step.py measure
    PYTHONPATH=. python benchmarks/cpu_adamw_step.py predict   # the planner on PYTHONPATH's first entry

Both print JSON. The repository root must be the working directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.append(os.getcwd())  # after PYTHONPATH: `predict` runs the planner it names first

from benchmarks import rank_order as ro  # noqa: E402

PLANS = ("full-DDP-TP1-PP1-DP2-mb4-ga1", "lora-DDP-TP1-PP1-DP2-mb4-ga1")


def _configs() -> list:
    tmp = pathlib.Path(tempfile.mkdtemp())
    (tmp / "config.json").write_text(json.dumps(ro.LLAMA_16M))
    return [c for c in ro.plan_configs(tmp) if ro.plan_name(c) in PLANS]


def predict() -> dict:
    import planner
    from planner import engines
    from planner.states import optimizer_state_bytes_per_param, stage_params
    from planner.timing import step_time

    out: dict = {"planner": planner.__file__}
    for cfg in _configs():
        trained = stage_params(cfg, first=True).trainable
        state_bytes = optimizer_state_bytes_per_param(cfg.optimizer, cfg.precision)
        out[ro.plan_name(cfg)] = {"optimizer_s": step_time(cfg).breakdown_s["optimizer"],
                                  "step_items": engines.of(cfg).step_items(cfg, trained, 1, state_bytes)}
    return out


def _step_s(params: list, opt: object) -> float:
    import torch
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return time.perf_counter() - t0


def _step_bytes(params: list, opt: object) -> int:
    """Bytes live at step()'s peak beyond the parameters, gradients and states (all tracked first: an in-place op's
    output is its input's storage, which the tracker would otherwise count as new)."""
    from profiler.tracker import StorageTracker

    with StorageTracker() as tracker:
        tracker.track_all(params)
        tracker.track_all(p.grad for p in params if p.grad is not None)
        tracker.track_all(v for state in opt.state.values() for v in state.values() if hasattr(v, "untyped_storage"))
        held = tracker.current_bytes
        tracker.reset_peak()
        opt.step()
    return tracker.finish().total_bytes - held


def measure_plan(cfg: object) -> dict:
    import torch

    from profiler import worker

    model = worker._load_model(cfg, None, torch.float32)
    engine, default_opt, _ = worker._wrap(cfg, model, torch.device("cpu"), 2)
    params = [p for p in engine.parameters() if p.requires_grad]
    foreach_opt = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    ids = torch.randint(0, cfg.model.vocab_size, (cfg.micro_batch, cfg.seq_len))
    times: dict[str, list[float]] = {"default": [], "foreach": []}
    for i in range(9):
        for p in params:
            p.grad = None
        engine(input_ids=ids, labels=ids).loss.backward()
        d, f = _step_s(params, default_opt), _step_s(params, foreach_opt)
        if i >= 2:
            times["default"].append(d)
            times["foreach"].append(f)
    largest = max(p.numel() for p in params)
    return {"default_s": statistics.median(times["default"]), "foreach_s": statistics.median(times["foreach"]),
            "default_step_bytes": _step_bytes(params, default_opt),
            "foreach_step_bytes": _step_bytes(params, foreach_opt),
            "tensors": len(params), "params": sum(p.numel() for p in params), "largest_tensor": largest,
            "default_impl": "foreach" if default_opt.defaults.get("foreach") else "default (None)"}


def measure() -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    out = {ro.plan_name(c): measure_plan(c) for c in _configs()}
    ranks: list = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, out)
    if dist.get_rank() == 0:
        print(json.dumps(ranks, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:] == ["measure"]:
        measure()
    else:
        print(json.dumps(predict(), indent=1))
