"""How much the tensor tracker (profiler.tracker.StorageTracker, the CPU tensor-peak measurement of `ftplan run`)
slows a training step, measured side by side in one process.

    python benchmarks/tracker_overhead.py [--steps 12] [--micro-batch 8] [--seq-len 64] [--hidden 256]

A Llama built from a LlamaConfig (4 layers, hidden 256 by default: 3.7M parameters, the issue-16 example),
fp32, foreach AdamW, on this machine's CPU. Steps alternate between tracked (the dispatch mode entered
around the step) and untracked, so that load from other processes hits both alike; the first two steps
(optimizer state creation) are dropped. Prints one JSON line: the median step times and their ratio, and the
ops per step the mode dispatched. `ftplan run` tracks only its first steps (runner.memory_probe.TRACKED_STEPS)
and times the ones after them, so this ratio is what those warm-up steps cost, not a distortion of the
reported step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    a = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from profiler.tracker import StorageTracker

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=a.hidden, intermediate_size=a.hidden * 43 // 16,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=max(256, a.seq_len))
    model = LlamaForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    ids = torch.randint(0, cfg.vocab_size, (a.micro_batch, a.seq_len))

    class Counting(StorageTracker):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            type(self).ops += 1
            return super().__torch_dispatch__(func, types, args, kwargs)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    tracked: list[float] = []
    plain: list[float] = []
    for i in range(a.steps * 2 + 2):
        track = i % 2 == 0
        t0 = time.perf_counter()
        if track:
            tracker = Counting()
            with tracker:
                tracker.track_all((*model.parameters(), *model.buffers()))
                step()
            tracker.finish()
        else:
            step()
        dt = time.perf_counter() - t0
        if i >= 2:
            (tracked if track else plain).append(dt)
    t_med, p_med = statistics.median(tracked), statistics.median(plain)
    print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "micro_batch": a.micro_batch,
                      "seq_len": a.seq_len, "steps_each": len(tracked),
                      "step_s_median_untracked": round(p_med, 4), "step_s_median_tracked": round(t_med, 4),
                      "tracked_over_untracked": round(t_med / p_med, 3),
                      "ops_per_step": Counting.ops // (a.steps + 1)}))


if __name__ == "__main__":
    main()
