"""A bf16 linear LM head over random hidden states, tracked by profiler.tracker.StorageTracker: the start of the
loss-memory measurements in tests/profiler/test_loss_releases.py and
tests/validation/test_memory_loop_output_measured.py (each then runs a release's loss, or a training loop's,
inside `with case.tracker:`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

V, T, H = 4096, 256, 64  # vocabulary, tokens per sequence, hidden width


@dataclass
class HeadCase:
    torch: Any
    F: Any  # noqa: N815 - torch.nn.functional, as it is spelled
    head: Any
    hidden: Any
    labels: Any
    tracker: Any
    before_bytes: int  # tracked bytes of the head, hidden states and labels


def head_case(batch: int) -> HeadCase:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F  # noqa: N812

    from profiler.tracker import StorageTracker

    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=False, dtype=torch.bfloat16)
    hidden = torch.randn(batch, T, H, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, V, (batch, T))
    tracker = StorageTracker()
    tracker.track_all([head.weight, hidden, labels])
    return HeadCase(torch=torch, F=F, head=head, hidden=hidden, labels=labels, tracker=tracker,
                    before_bytes=tracker.current_bytes)
