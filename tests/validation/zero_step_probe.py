"""Worker for test_memory_zero_step_measured.py: one process, DeepSpeed ZeRO-2/3 in bf16 on the CPU accelerator,
a small Llama; prints, as one JSON line, the live tensor bytes before forward, at the end of backward and the peak
of the step
that follows (profiler.tracker.StorageTracker, second step: every state exists), with the parameter list.

Usage: python zero_step_probe.py STAGE:SUB_GROUP_SIZE ... (run with DS_ACCELERATOR=cpu): the libraries are
imported once and each case runs in a process forked from this one (forked_cases.py) on a free port of its own; each
prints its JSON line with its "case".
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from profiler.tracker import StorageTracker

CONFIG = dict(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(stage: int, sub_group_size: int) -> dict:
    import deepspeed

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    numels = [p.numel() for p in model.parameters()]
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
                 "zero_allow_untested_optimizer": True,
                 "zero_optimization": {"stage": stage, "sub_group_size": sub_group_size, "contiguous_gradients": True,
                                       "overlap_comm": False, "reduce_bucket_size": 65536,
                                       "stage3_prefetch_bucket_size": 0, "stage3_param_persistence_threshold": 0}}
    # plain SGD keeps no state and makes no temporary: the step's extra bytes are DeepSpeed's own
    sgd = torch.optim.SGD(model.parameters(), lr=1e-4, foreach=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=sgd, config=ds_config)
    x = torch.randint(0, CONFIG["vocab_size"], (1, 8))
    for _ in range(2):
        gc.collect()
        tracker = StorageTracker()
        tracker.track_all(o for o in gc.get_objects() if isinstance(o, torch.Tensor))
        before = tracker.current_bytes
        with tracker:
            engine.backward(engine(input_ids=x, labels=x).loss)
            after_backward = tracker.current_bytes
            tracker.label = "step"
            engine.step()
        peak = tracker.finish()
    return {"numels": numels, "before": before, "after_backward": after_backward, "step_peak": peak.total_bytes,
            "peak_label": peak.label}


def _case(case: str) -> None:
    stage, sub_group_size = case.split(":")
    print(json.dumps({"case": case, **main(int(stage), int(float(sub_group_size)))}), flush=True)


def _preload() -> None:
    """DeepSpeed imported once before the cases fork; so is the CPU accelerator's shared-memory collectives op
    that deepspeed.comm loads in every process (its JIT load runs a ninja check each time), and the module ZeRO's
    optimizer check imports (it compiles a Muon step with torch.compile: 3 s)."""
    import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    from deepspeed.comm.torch import build_shm_op  # deepspeed.comm's `torch` attribute is the torch package

    build_shm_op()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: forked_cases.py
    from forked_cases import run_forked

    _preload()
    run_forked(sys.argv[1:], _case)
