"""The rank-order plans split into phases, with and without DDP's gradient reduce (session 14, issue 27).

Run from the repository root with the repository on PYTHONPATH:
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/measured/ddp_phases_probe.py PLAN [PLAN ...]
(PLAN as benchmarks/rank_order.py names them, e.g. full-DDP-TP1-PP1-DP2-mb4-ga1). Per rank it prints: SDPA's causal
fp32 forward and backward per layer call at the plans' shapes (b x 6 heads x 128 x 64), both ranks at once; per plan
the medians of 7 steps (after 2) of the forward, the backward with DDP's reduce (bwd_sync), the same micro-batch's
forward and backward under no_sync (fwd2, bwd_nosync), clip_grad_norm_ and the AdamW step as
profiler/worker.py builds them (foreach=True when ddp_phases_s14.json was taken; torch's CPU default, the single-tensor
loop, since session 16), and one all-reduce of all gradients alone. bwd_sync - bwd_nosync is the reduce's
exposed time (DDP's backward returns after its buckets' all-reduces finish). Output of two runs:
benchmarks/measured/ddp_phases_s14.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.getcwd())

from benchmarks import rank_order as ro  # noqa: E402
from profiler import worker  # noqa: E402

PHASES = ("fwd", "bwd_sync", "fwd2", "bwd_nosync", "clip", "opt")


def sdpa_times() -> dict[str, tuple[float, float]]:
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out = {}
    for b in (1, 2, 4, 8):
        q, k, v = (torch.randn(b, 6, 128, 64, requires_grad=True) for _ in range(3))
        fw, bw = [], []
        for i in range(12):
            dist.barrier()
            t0 = time.perf_counter()
            o = sdpa(q, k, v, is_causal=True)
            t1 = time.perf_counter()
            o.backward(torch.ones_like(o))
            t2 = time.perf_counter()
            if i >= 2:
                fw.append(t1 - t0)
                bw.append(t2 - t1)
            q.grad = k.grad = v.grad = None
        out[f"sdpa_b{b}"] = (statistics.median(fw), statistics.median(bw))
    return out


def plan_phases(cfg) -> dict[str, float]:
    model = worker._load_model(cfg, None, torch.float32)
    engine, opt, _ = worker._wrap(cfg, model, torch.device("cpu"), 2)
    ids = torch.randint(0, cfg.model.vocab_size, (cfg.micro_batch, cfg.seq_len))
    params = [p for p in engine.parameters() if p.requires_grad]
    ph: dict[str, list[float]] = {k: [] for k in PHASES}
    for i in range(9):
        opt.zero_grad(set_to_none=True)
        dist.barrier()
        t0 = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        dist.barrier()
        t3 = time.perf_counter()
        with engine.no_sync():
            loss = engine(input_ids=ids, labels=ids).loss
            t4 = time.perf_counter()
            loss.backward()
            t5 = time.perf_counter()
        dist.barrier()
        t6 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t7 = time.perf_counter()
        opt.step()
        t8 = time.perf_counter()
        if i >= 2:
            for k, v in zip(PHASES, (t1 - t0, t2 - t1, t4 - t3, t5 - t4, t7 - t6, t8 - t7), strict=True):
                ph[k].append(v)
    out = {k: statistics.median(v) for k, v in ph.items()}
    flat = torch.ones(sum(p.numel() for p in params))
    alone = []
    for _ in range(6):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        alone.append(time.perf_counter() - t0)
    out["allreduce_alone"] = statistics.median(alone[1:])
    out["params"] = flat.numel()
    return out


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    tmp = pathlib.Path(tempfile.mkdtemp())
    (tmp / "config.json").write_text(json.dumps(ro.LLAMA_16M))
    out: dict = sdpa_times()
    for cfg in ro.plan_configs(tmp):
        if ro.plan_name(cfg) in sys.argv[1:]:
            out[ro.plan_name(cfg)] = plan_phases(cfg)
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, out)
    if dist.get_rank() == 0:
        print(json.dumps(ranks))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
