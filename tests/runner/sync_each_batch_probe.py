"""Worker for test_sync_each_batch.py: one rank of a 2-process gloo run of the transformers Trainer on an FSDP2 model,
with the TrainingArguments `ftplan run` builds for a plan (runner.run_common.training_arguments), two optimizer steps
of two micro-batches each.

accelerate sets FSDP up only on GPU-like devices (planner/runnable.py, "FSDP on the CPU"), so on the CPU the model is
sharded by transformers itself at load time: `from_pretrained(distributed_config=DistributedConfig(fsdp_size=2))`
applies FSDP2's `fully_shard` per decoder layer and the root (transformers/distributed/fsdp.py). The Trainer runs
such a model's micro-batches but the last under `_defer_fsdp_gradient_reduction`
(`set_requires_gradient_sync(False)`, what accelerate's `no_sync` does for an FSDP2 model it wrapped), unless its
accelerator's gradient state says `sync_each_batch` (transformers/trainer.py, `_inner_training_loop`).

What the peaks hold, measured per rank (8 layers, mb2 ga2, with sync_each_batch): the wrap is accelerate's
(`model.embed_tokens` and each `model.layers.*` resharded after forward, the final norm and the head one unit kept
gathered, the root: transformers' PreTrainedConfig.base_model_fsdp_plan with LlamaForCausalLM._fsdp_plan, applied by
distributed/fsdp.py `apply_fully_sharded_data_parallelism`, no MixedPrecisionPolicy unless fsdp_mixed_precision), and
the Trainer adds 3,092 B to a hand loop on the same model. One thing is the CPU's own: each parameter's shard is a
view of a storage the size of the whole parameter (2,395,392 B more than the shards). safetensors 0.8 returns a
slice of a tensor as a view of the whole one, transformers' `DtensorShardOperation.shard_tensor`
(distributed/sharding_utils.py) moves it with `.to(device, dtype)`, a no-op for a float32 checkpoint loaded in float32
on the CPU (on a GPU it copies the slice), and FSDP2 keeps an evenly divided local tensor as its sharded data
(_fsdp_param.py `reset_sharded_param`). The peaks' difference, what the test compares, holds none of it.

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
