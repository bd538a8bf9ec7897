"""Worker for tests/planner/test_zero3_init_allocations.py: the allocations DeepSpeed ZeRO-3 makes while it builds its
optimizer (`deepspeed.initialize`) and while it steps, in order, as one JSON line.

One process (world size 1, DS_ACCELERATOR=cpu), bf16, a small Llama with a tied embedding (one large parameter: the
gradient norm's largest fp64 copy), `sub_group_size` small enough for three sub-groups, contiguous gradients with an
ipg bucket large enough to trace, and torch's SGD with momentum (DeepSpeed's fused Adam needs CUDA; SGD's one state,
its momentum buffer, is made by the first step from the gradient like Adam's moments and its step makes no
temporary). Every storage of at least MIN_BYTES an op returns is an "alloc" event, its death a "free" event
(profiler.tracker's dispatch mode and weakref finalizers); the optimizer's sub-groups are printed with them, and
which DeepSpeed or torch.optim line made each.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True)
SUB_GROUP_SIZE = 2_500_000
REDUCE_BUCKET = 3_000_000
MIN_BYTES = 5_000_000  # above every parameter's 16-bit partition and every gradient but the embedding's fp64 copy


class AllocationLog(TorchDispatchMode):
    """("alloc", name, bytes) and ("free", name) for each new storage of at least MIN_BYTES."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[list[Any]] = []
        self._serial = 0
        # storages alive before the log starts are not its allocations (a view or an in-place op returns them); a
        # storage's address is forgotten when it dies, for a new one may take it
        self._seen: set[int] = set()
        for o in gc.get_objects():
            if isinstance(o, torch.Tensor) and o.device.type != "meta":
                st = o.untyped_storage()
                if st._cdata not in self._seen:
                    self._seen.add(st._cdata)
                    weakref.finalize(st, self._seen.discard, st._cdata)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st.nbytes() >= MIN_BYTES and st._cdata not in self._seen:
                    self._seen.add(st._cdata)
                    self._serial += 1
                    name = f"s{self._serial}"
                    self.events.append(["alloc", name, st.nbytes(), str(func), _caller()])
                    weakref.finalize(st, self._free, st._cdata, name)
        return out

    def _free(self, key: int, name: str) -> None:
        self._seen.discard(key)
        self.events.append(["free", name])


def _caller() -> str:
    """The innermost DeepSpeed or torch.optim line that made the storage."""
    import traceback

    for frame in reversed(traceback.extract_stack()):
        if "deepspeed/" in frame.filename or "torch/optim/" in frame.filename:
            return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} {frame.line}"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> dict:
    import deepspeed

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    largest = max(p.numel() for p in model.parameters())
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
                 "zero_allow_untested_optimizer": True,
                 "zero_optimization": {"stage": 3, "sub_group_size": SUB_GROUP_SIZE, "contiguous_gradients": True,
                                       "overlap_comm": False, "reduce_bucket_size": REDUCE_BUCKET,
                                       "stage3_prefetch_bucket_size": 0, "stage3_param_persistence_threshold": 0}}
    sgd = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, foreach=False)
    gc.collect()
    init = AllocationLog()
    with init:
        engine, *_ = deepspeed.initialize(model=model, optimizer=sgd, config=ds_config)
        gc.collect()
    x = torch.randint(0, CONFIG["vocab_size"], (1, 8))
    engine.backward(engine(input_ids=x, labels=x).loss)
    gc.collect()
    step = AllocationLog()
    with step:
        engine.step()
        gc.collect()
    opt = engine.optimizer
    return {"sub_groups": [int(n) for n in opt.fp16_partitioned_groups_flat_numel], "init": init.events,
            "step": step.events, "largest_partition": largest,
            "reduce_bucket": REDUCE_BUCKET, "version": deepspeed.__version__}


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
