"""A tied embedding's two gradients at the end of backward (planner.memory.tied_embedding_items), measured.

One CPU process, a one-layer Llama whose embedding and LM head share a weight (tie_word_embeddings) and whose
vocabulary dominates its parameters, fp32, SGD with momentum (no step temporaries), live tensor bytes of the
second step's forward and backward (profiler.tracker.StorageTracker): the peak is the end of backward, where the
head's gradient waits in autograd's input buffer for the embedding's, and both and their sum exist beside the other
gradients, the weights and the momentum buffers.
"""

from __future__ import annotations

import dataclasses
import gc

import pytest

from planner.build import build_config
from planner.memory import memory_per_gpu
from planner.models import spec_from_hf_config
from planner.strategy import Method, Optimizer, Precision

CONFIG = dict(model_type="llama", vocab_size=32000, hidden_size=64, intermediate_size=172, num_hidden_layers=1,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True)
SEQ = 16


def _measured_peak() -> int:
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from profiler.tracker import StorageTracker

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "model_type"}))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=False)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, SEQ))
    peak = 0
    for _ in range(2):  # the second step: the momentum buffers exist
        gc.collect()
        tracker = StorageTracker()
        # the model's and the optimizer's tensors only: tensors other tests left alive in this process are not
        # this step's (the rest is created inside the tracker and counted as it is)
        state = (v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
        tracker.track_all([*model.parameters(), *model.buffers(), *state])
        with tracker:
            model(input_ids=ids, labels=ids).loss.backward()
            peak = tracker.finish().total_bytes
            opt.step()
            opt.zero_grad(set_to_none=True)
    return peak


def test_tied_embedding_second_gradient_at_the_end_of_backward() -> None:
    cfg = build_config(model="llama-2-7b", gpus="1xCPU", method=Method.full, precision=Precision.fp32,
                       optimizer=Optimizer.sgd, micro_batch=1, seq_len=SEQ, check=False)
    cfg = dataclasses.replace(cfg, model=spec_from_hf_config(CONFIG, name="tied-probe"))
    mem = memory_per_gpu(cfg)
    measured = _measured_peak()
    matrix_bytes = 4 * CONFIG["vocab_size"] * CONFIG["hidden_size"]
    dev = mem.allocated / measured - 1
    print(f"[measured] tied embedding: peak {measured:,} B, planner {mem.allocated:,.0f} B ({mem.phase}), "
          f"deviation {dev:+.1%}")
    assert mem.phase == "gradients"
    assert mem.other_items["tied embedding: its second gradient"] == matrix_bytes
    assert mem.other_items["tied embedding: the sum of its two gradients"] == matrix_bytes
    assert abs(dev) <= 0.02
    # without the terms the planner would sit two V x H gradients (two fifths of this peak) below
    assert (mem.allocated - 2 * matrix_bytes) / measured - 1 < -0.3
