"""StorageTracker counts live storage bytes: views once, frees through finalizers, categories at the peak."""

from __future__ import annotations

import torch

from profiler.tracker import StorageTracker


def test_counts_allocations_views_and_frees() -> None:
    tracker = StorageTracker()
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        v = a.view(10, 100)  # a view: no new storage
        b = torch.empty(500, dtype=torch.bfloat16)  # 1000 bytes
        assert tracker.current_bytes == 5000
        del b
        assert tracker.current_bytes == 4000
        c = a * 2  # 4000 more
        assert tracker.current_bytes == 8000
        del c, v
    assert tracker.finish().total_bytes == 8000
    del a
    assert tracker.current_bytes == 0


def test_categories_at_the_peak() -> None:
    tracker = StorageTracker()
    with tracker:
        w = torch.ones(256, requires_grad=True)  # 1 KiB parameter
        tracker.weight_serials = {tracker.serial_of(w)}
        with tracker.saved_tensors():
            y = (w * 3).sin()  # sin saves its input (w * 3): an activation
        loss = y.sum()
        loss.backward()
        grad = {tracker.serial_of(w.grad)}
        peak = tracker.finish()
    cats = tracker.categorize(peak, weights=tracker.weight_serials, gradients=grad, optimizer=set())
    assert cats["weights"] == 1024
    assert cats["activations"] >= 1024
    assert cats["total"] == peak.total_bytes
