"""Worker for test_sync_each_batch.py: one rank of a 2-process gloo run of the transformers Trainer on an FSDP2 model,
with the TrainingArguments `ftplan run` builds for a plan (runner.run_common.training_arguments), two optimizer steps
of two micro-batches each.

accelerate sets FSDP up only on GPU-like devices (planner/runnable.py, "FSDP on the CPU"), so on the CPU the model is
sharded by transformers itself at load time: `from_pretrained(distributed_config=DistributedConfig(fsdp_size=2))`
applies FSDP2's `fully_shard` per decoder layer and the root (transformers/distributed/fsdp.py). The Trainer runs
such a model's micro-batches but the last under `_defer_fsdp_gradient_reduction`
(`set_requires_gradient_sync(False)`, what accelerate's `no_sync` does for an FSDP2 model it wrapped), unless its
accelerator's gradient state says `sync_each_batch` (transformers/trainer.py, `_inner_training_loop`).

Case PLAN:PORT (PLAN: a plan.json; the model directory in $SYNC_PROBE_MODEL). Rank 0 prints one JSON line per case:
{"case", "sync_each_batch" (the Trainer's accelerator.gradient_state.plugin_kwargs), "peak_tensor_bytes" (each rank's,
runner.memory_probe on the CPU: profiler.tracker.StorageTracker over the steps), "train_loss"}.
Usage: python -m torch.distributed.run --nproc_per_node 2 sync_each_batch_probe.py CASE ... (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PrinterCallback, Trainer
from transformers.distributed import DistributedConfig

from runner.emit import load_plan
from runner.memory_probe import MemoryProbe, gather
from runner.run_common import RunOptions, training_arguments

STEPS = 2


def main(plan_path: Path, model_dir: Path) -> dict:
    cfg = load_plan(plan_path)
    rank = int(os.environ["RANK"])
    probe = MemoryProbe(on_cuda=False, rank=rank)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 distributed_config=DistributedConfig(fsdp_size=cfg.world_size))
    opts = RunOptions(model_path=model_dir, data=plan_path, output=plan_path.parent / "out", max_steps=STEPS)
    # a model sharded at load time has no optimizer checkpoint (transformers/trainer.py refuses to save one)
    args = training_arguments(cfg, opts, on_cuda=False, has_eval=False, extra={"save_strategy": "no"})
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(STEPS * cfg.grad_accum * cfg.micro_batch * cfg.dp):
        ids = torch.randint(4, cfg.model.vocab_size, (cfg.seq_len,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[probe.callback()])
    trainer.remove_callback(PrinterCallback)  # its log dicts would read as the case's JSON line (runner.train too)
    probe.start(model)
    try:
        result = trainer.train()
    finally:
        probe.stop()
    ranks = gather(probe.m)
    return {"sync_each_batch": trainer.accelerator.gradient_state.plugin_kwargs.get("sync_each_batch", False),
            "peak_tensor_bytes": [r["peak_tensor_bytes"] for r in ranks], "train_loss": result.training_loss}


def _case(case: str) -> None:
    plan, port = case.rsplit(":", 1)
    os.environ.update(MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE="False")
    out = main(Path(plan), Path(os.environ["SYNC_PROBE_MODEL"]))
    if int(os.environ["RANK"]) == 0:
        print(json.dumps({"case": case, **out}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: forked_cases.py
    from forked_cases import run_forked

    run_forked(sys.argv[1:], _case)
