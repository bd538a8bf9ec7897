"""transformers' causal-LM loss by release (planner.transformers_versions, planner.loss_memory.standard_loss_bytes),
measured on this CPU with profiler.tracker.StorageTracker: bf16 logits from a linear head, then the loss as each
release computes it (the operations its `ForCausalLMLoss` runs, in order):
- 4.46-4.48: `.float()`, a contiguous copy of the logits shifted by one token, cross_entropy on it, while the
  model's 16-bit logits stay referenced for its output (dropped with it before backward, as the Trainer does). With
  one sequence the shifted slice is already contiguous and `.contiguous()` copies nothing;
- 4.49 on: `.float()`, labels padded and shifted instead, cross_entropy on the upcast logits.
The bytes the head and loss add at their peak (forward or backward) are compared with the planner's.
"""

from __future__ import annotations

import pytest
from head_loss_case import T, V, head_case

from planner.build import build_config
from planner.loss_memory import standard_loss_bytes


def _peak_added_bytes(*, shifted_copy: bool, batch: int) -> int:
    case = head_case(batch)
    F, head, hidden, labels, tracker, before = (case.F, case.head, case.hidden, case.labels, case.tracker,
                                                 case.before_bytes)
    with tracker:
        tracker.label = "forward"
        logits = head(hidden)  # the model's 16-bit logits, kept for its output
        upcast = logits.float()
        if shifted_copy:
            shifted = upcast[..., :-1, :].contiguous()
            loss = F.cross_entropy(shifted.view(-1, V), labels[..., 1:].reshape(-1))
            del shifted
        else:
            padded = F.pad(labels, (0, 1), value=-100)[..., 1:]
            loss = F.cross_entropy(upcast.view(-1, V), padded.reshape(-1))
        del upcast, logits  # the Trainer drops the model's output before backward
        tracker.label = "backward"
        loss.backward()
        del loss
        peak = tracker.finish()
    # the head's and the hidden state's gradients come after the loss's backward has freed its buffers
    assert hidden.grad is not None and peak.total_bytes - before > hidden.grad.nbytes + head.weight.grad.nbytes
    return peak.total_bytes - before


@pytest.mark.parametrize(("release", "batch"), [("4.46.1", 2), ("4.46.1", 1), ("4.49.0", 2)])
def test_loss_peak_by_release(release: str, batch: int) -> None:
    from planner.memory_knobs import loss_keeps_shifted_copy

    cfg = build_config(model="llama-2-7b", gpus="1xA100-80G", micro_batch=batch, transformers_version=release,
                       check=False)
    shifted = loss_keeps_shifted_copy(cfg)
    assert shifted == (release == "4.46.1" and batch > 1)
    measured = _peak_added_bytes(shifted_copy=release == "4.46.1", batch=batch)
    planned = standard_loss_bytes(batch * T, V, logit_bytes=2, shifted_copy=shifted)
    dev = planned / measured - 1
    print(f"[measured] transformers {release} loss, batch {batch}: {measured:,} B, planner {planned:,.0f} B "
          f"({dev:+.1%})")
    assert abs(dev) <= 0.03
