"""Worker for test_memory_zero_adamw_step_measured.py: one rank of a 2-process gloo run of DeepSpeed ZeRO-0, 2 or 3
(0.19.8, CPU accelerator) stepping a client torch.optim.AdamW (ZeRO-0: directly in fp32, under the wrapper DeepSpeed
picks in bf16, which the output names), as ftplan's ds_config without offload leaves it (no optimizer section: the
Trainer's `adamw_torch` is the optimizer DeepSpeed wraps), on the small Llama of zero_step_probe.py. The client
optimizer has the Trainer's two parameter groups (GROUPS "trainer": weight decay on the matrices, none on the norms:
transformers trainer.py create_optimizer / get_decay_parameter_names, as ftplan's runner and profiler worker build
them) or one group of every parameter (GROUPS "one", what a LoRA model's groups come to), and its kernel forced:
`foreach=True` is what torch picks on CUDA (torch/optim/optimizer.py `_default_to_fused_or_foreach`), `foreach=False`
the CPU's single-tensor loop.
Live tensor bytes counted by profiler.tracker.StorageTracker over the second step (every state exists).

Usage: python -m torch.distributed.run --nproc_per_node 2 zero_adamw_step_probe.py STAGE:PRECISION:KERNEL:GROUPS:PORT
... (env: DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1); PRECISION fp32 or bf16, KERNEL foreach or single_tensor. Each rank
imports the libraries once, then runs every case in a process forked from itself (forked_cases.py); the two ranks'
children of a case meet in a gloo group of their own on PORT. Rank 0 prints one JSON line per case, its "case" with
the live bytes before forward, after backward and the step's peak (its label "client step" while the client's
step() runs), the storages of 1 MiB or more live at that peak, the parameter count and the class of DeepSpeed's
optimizer. At ZeRO-0 also the gradient reduction at the end of backward (`engine.buffered_allreduce_fallback`, which
`_backward_epilogue` -> `allreduce_gradients` reaches at every accumulation boundary: wrapped on the instance, the
class's method left as it is): the live bytes at its start and its peak, and the gradients' dtypes it reduced.
"""

from __future__ import annotations

import contextlib
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


def _wrap(obj: Any, name: str, before: Any, after: Any) -> None:
    """obj.name(...) runs between before() and after() (an instance attribute: the class's method is left as it is)."""
    inner = getattr(obj, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before()
        try:
            return inner(*args, **kwargs)
        finally:
            after()

    setattr(obj, name, wrapped)


def _ds_config(stage: int, precision: str) -> dict:
    """ftplan's own ds_config for the case (planner/configs/ds_config.py), less what the client optimizer replaces."""
    import dataclasses

    from planner.build import build_config
    from planner.configs.ds_config import build_ds_config
    from planner.models import spec_from_hf_config
    from planner.strategy import Method, Precision

    cfg = build_config(model="llama-2-7b", gpus="2xCPU", zero=stage, method=Method.full, micro_batch=MICRO_BATCH,
                       seq_len=SEQ, precision=Precision.fp32 if precision == "fp32" else Precision.bf16_mixed,
                       check=False)
    cfg = dataclasses.replace(cfg, model=spec_from_hf_config({"model_type": "llama", **CONFIG}, name="probe"))
    ds = build_ds_config(cfg)
    ds.pop("optimizer", None)
    ds.pop("scheduler", None)
    ds.update(steps_per_print=10**9)
    return ds


def main(stage: int, precision: str, kernel: str, groups: str) -> dict:
    import deepspeed

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    numel = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if "norm" not in n]  # a Llama has no biases
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    param_groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}] \
        if groups == "trainer" else [{"params": list(model.parameters())}]
    opt = torch.optim.AdamW(param_groups, lr=1e-4, foreach=kernel == "foreach")
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=_ds_config(stage, precision))
    g = torch.Generator().manual_seed(dist.get_rank())
    ids = torch.randint(0, CONFIG["vocab_size"], (MICRO_BATCH, SEQ), generator=g)
    out: dict = {"numel": numel, "optimizer": type(engine.optimizer).__name__}
    client_step = opt.step

    def labelled_step(*args, **kwargs):  # the peak's label says whether the client's step held it
        tracker.label = "client step"
        try:
            return client_step(*args, **kwargs)
        finally:
            tracker.label = "step"

    opt.step = labelled_step
    at: dict[str, int] = {}
    reduced: dict[str, Any] = {}

    def reduce_starts() -> None:
        at["reduce_start"] = tracker.current_bytes
        grads = [q.grad for q in engine.module.parameters() if q.grad is not None]
        reduced.update(dtypes=sorted({str(t.dtype) for t in grads}), bytes=sum(t.nbytes for t in grads),
                       largest=max(t.numel() for t in grads))
        tracker.reset_peak()
        tracker.label = "reduce"

    def reduce_ends() -> None:
        at["reduce_peak"] = tracker.finish().total_bytes
        at["reduce_end"] = tracker.current_bytes
        tracker.label = "backward"

    if stage == 0:
        _wrap(engine, "buffered_allreduce_fallback", reduce_starts, reduce_ends)
        out["reduced"] = reduced
    for _ in range(2):
        gc.collect()
        tracker = StorageTracker()
        tracker.track_all(o for o in gc.get_objects() if isinstance(o, torch.Tensor))
        before = tracker.current_bytes
        with tracker:
            tracker.label = "backward"
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            # the baseline once both ranks' backward collectives are done: a bucket whose reduction the other rank
            # has not joined yet is still alive when this rank's backward returns, and freed before the client step,
            # so without the barrier the rise read 2-4 reduce buckets low in some runs (once in CI)
            dist.barrier()
            gc.collect()
            after_backward = tracker.current_bytes
            tracker.reset_peak()
            tracker.label = "step"
            engine.step()
            peak = tracker.finish()
        out.update(before=before, after_backward=after_backward, **at, step_peak=peak.total_bytes,
                   peak_label=peak.label,
                   peak_storages=sorted((b for b in peak.storages.values() if b >= 1 << 20), reverse=True))
    gc.collect()
    with contextlib.suppress(Exception):
        dist.barrier()
    dist.destroy_process_group()
    return out


def _case(case: str) -> None:
    stage, precision, kernel, groups, port = case.split(":")
    os.environ.update(MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE="False")
    out = main(int(stage), precision, kernel, groups)
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
