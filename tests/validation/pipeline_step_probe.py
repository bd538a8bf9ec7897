"""Worker for test_memory_pipeline_step_measured.py: one rank of a 2-process gloo run of DeepSpeed's pipeline engine
(0.19.8, CPU accelerator), 2 stages of 1 data-parallel replica each, built as ftplan's runner builds it
(runner/parallel/pipeline.py build_engine: the PipelineModule of the runner's stage layers, its optimizer in the
Trainer's two parameter groups, ftplan's ds_config at ZeRO-0) on the small Llama of zero_step_probe.py, one micro-batch
per step. PRECISION bf16 takes the ds_config as ftplan emits it for a GPU (bf16 enabled: the engine wraps the client
in BF16_Optimizer, runtime/engine.py `_do_optimizer_sanity_check`); fp32 the one the runner trains with on the CPU
(runner/parallel/pipeline.py ds_config: no 16-bit compute there). The client AdamW's kernel is forced on its groups:
`foreach` is what torch picks on a GPU (torch/optim/optimizer.py `_default_to_fused_or_foreach`), `single_tensor` the
CPU's loop.

Live tensor bytes counted by profiler.tracker.StorageTracker over the second `train_batch` (every state exists), read
at three moments the engine's public methods mark: its gradient reduction's start (`buffered_allreduce_fallback`,
which the pipeline's ReduceGrads instruction reaches in either precision: the end of backward), the step's start
(`engine.optimizer.step`) and the client's step (`engine.basic_optimizer.step`, labelled "client step").

Usage: python -m torch.distributed.run --nproc_per_node 2 pipeline_step_probe.py PRECISION:KERNEL:PORT ...
(env: DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1). Each rank imports the libraries once, then runs every case in a process
forked from itself (forked_cases.py); the two ranks' children of a case meet in a gloo group of their own on PORT.
Rank 0 prints one JSON line per case: its "case" and "ranks", each rank's stage, trained elements, the largest trained
tensor, the client's group sizes, the class of DeepSpeed's optimizer, BF16_Optimizer's gradient accumulators (dtype,
bytes) and fp32 partition elements, and the live bytes before forward, at the end of backward, the reduction's peak,
at the step's start and the step's peak (with its label).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from profiler.tracker import StorageTracker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/validation: the probe's model
from zero_step_probe import CONFIG  # noqa: E402

MICRO_BATCH, SEQ = 1, 8


def plan(precision: str) -> Any:
    """ftplan's plan for the case: pp 2, dp 1 on 2 CPU ranks, full fine-tuning at ZeRO-0, the probe's model."""
    from planner.build import build_config
    from planner.models import spec_from_hf_config
    from planner.strategy import Method, Precision

    cfg = build_config(model="llama-2-7b", gpus="2xCPU", zero=0, pp=2, method=Method.full, micro_batch=MICRO_BATCH,
                       seq_len=SEQ, precision=Precision.fp32 if precision == "fp32" else Precision.bf16_mixed,
                       check=False)
    return dataclasses.replace(cfg, model=spec_from_hf_config({"model_type": "llama", **CONFIG}, name="probe-llama"))


def _config(cfg: Any, precision: str) -> dict:
    from planner.configs.ds_config import build_ds_config
    from runner.parallel.pipeline import ds_config

    # bf16: the emitted ds_config (a GPU run's); fp32: the runner's on the CPU, which switches 16-bit compute off
    out = build_ds_config(cfg) if precision == "bf16" else ds_config(cfg, on_cuda=False)
    out.update(steps_per_print=10**9)
    return out


def _wrap(obj: Any, name: str, before: Any) -> None:
    """obj.name(...) runs before() first (an instance attribute: the class's method is left as it is)."""
    inner = getattr(obj, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before()
        return inner(*args, **kwargs)

    setattr(obj, name, wrapped)


def main(precision: str, kernel: str) -> dict:
    import deepspeed

    from runner.parallel.pipeline import build_engine
    from runner.run_common import RunOptions

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    cfg = plan(precision)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    opts = RunOptions(model_path=Path("."), data=Path("."), output=Path("."), learning_rate=1e-4, max_steps=10)
    engine = build_engine(cfg, opts, model, _config(cfg, precision))
    del model  # the other stage's layers go with it, as in the runner
    client = engine.basic_optimizer
    for group in client.param_groups:
        group["foreach"] = kernel == "foreach"
    trained = [p for p in engine.module.parameters() if p.requires_grad]
    out: dict = {"stage": engine.stage_id, "numel": sum(p.numel() for p in trained),
                 "largest": max(p.numel() for p in trained), "optimizer": type(engine.optimizer).__name__,
                 "client_groups": [sum(p.numel() for p in g["params"]) for g in client.param_groups]}
    accumulators = getattr(engine.optimizer, "fp32_groups_gradients_flat", None)
    if accumulators is not None:
        out.update(accumulator_dtype=str(accumulators[0].dtype),
                   accumulator_bytes=sum(t.numel() * t.element_size() for t in accumulators),
                   fp32_partition_numel=sum(t.numel() for t in engine.optimizer.fp32_groups_flat_partition))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CONFIG["vocab_size"], (MICRO_BATCH, SEQ), generator=g)
    at: dict[str, int] = {}

    def reduce_starts() -> None:
        at["after_backward"] = tracker.current_bytes
        tracker.reset_peak()
        tracker.label = "reduce"

    def step_starts() -> None:
        at["reduce_peak"] = tracker.finish().total_bytes
        at["step_start"] = tracker.current_bytes
        tracker.reset_peak()
        tracker.label = "step"

    def client_starts() -> None:
        tracker.label = "client step"

    _wrap(engine, "buffered_allreduce_fallback", reduce_starts)
    _wrap(engine.optimizer, "step", step_starts)
    if client is not engine.optimizer:
        _wrap(client, "step", client_starts)
    for _ in range(2):
        gc.collect()
        tracker = StorageTracker()
        tracker.track_all(o for o in gc.get_objects() if isinstance(o, torch.Tensor))
        before = tracker.current_bytes
        with tracker:
            tracker.label = "forward and backward"
            engine.train_batch(iter([(ids, ids.clone())]))
            peak = tracker.finish()
        out.update(before=before, **at, step_peak=peak.total_bytes, peak_label=peak.label)
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, out)
    gc.collect()
    with contextlib.suppress(Exception):
        dist.barrier()
    dist.destroy_process_group()
    return {"ranks": ranks}


def _case(case: str) -> None:
    precision, kernel, port = case.split(":")
    os.environ.update(MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE="False")
    out = main(precision, kernel)
    if int(os.environ["RANK"]) == 0:
        print(json.dumps({"case": case, **out}), flush=True)


def _preload() -> None:
    """DeepSpeed imported once before the cases fork (zero_step_probe.py `_preload`)."""
    import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    from deepspeed.comm.torch import build_shm_op  # deepspeed.comm's `torch` attribute is the torch package

    build_shm_op()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: forked_cases.py
    from forked_cases import run_forked

    _preload()
    run_forked(sys.argv[1:], _case)
