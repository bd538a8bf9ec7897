"""Worker for test_memory_zero_step_measured.py: one process, DeepSpeed ZeRO-2/3 in bf16 on the CPU accelerator,
a small Llama; prints, as one JSON line, the live tensor bytes before forward, at the end of backward and the peak
of the step
that follows (profiler.tracker.StorageTracker, second step: every state exists), with the parameter list.

Usage: python zero_step_probe.py STAGE SUB_GROUP_SIZE (run with DS_ACCELERATOR=cpu and a free MASTER_PORT).
"""

from __future__ import annotations

import gc
import json
import os
import sys

import deepspeed
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from profiler.tracker import StorageTracker

CONFIG = dict(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=256)


def main(stage: int, sub_group_size: int) -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
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
    print(json.dumps({"numels": numels, "before": before, "after_backward": after_backward,
                      "step_peak": peak.total_bytes, "peak_label": peak.label}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(float(sys.argv[2])))
