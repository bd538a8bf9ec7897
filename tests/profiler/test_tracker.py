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


def test_storage_resizes_of_any_size_count() -> None:
    """FSDP2 frees an unsharded parameter with `untyped_storage().resize_(0)` and re-allocates it with
    `resize_(n)` (torch/distributed/fsdp/_fully_shard/_fsdp_param.py free_storage / alloc_storage), one storage per
    parameter, however small: no dispatch mode sees either, the caching allocator on CUDA sees both."""
    tracker = StorageTracker()
    with tracker:
        small = torch.empty(256)  # 1 KiB, as a norm's unsharded weight
        assert tracker.current_bytes == 1024
        small.untyped_storage().resize_(0)
        assert tracker.current_bytes == 0
        other = torch.empty(64)  # 256 bytes: the total is below the 1 KiB peak
        assert tracker.finish().total_bytes == 1024
        small.untyped_storage().resize_(1024)  # re-allocated: 1280 bytes live, no op seen yet
        del other  # the moment before this free is the new peak
        assert tracker.finish().total_bytes == 1280
        empty = torch.empty(0)  # FSDP1's padded flat parameter: allocated empty, resized up when gathered
        empty.untyped_storage().resize_(4096)
        torch.empty(1)  # an allocation re-measures every live storage
        assert tracker.finish().total_bytes == 1024 + 4096 + 4
    del small, empty
    assert tracker.current_bytes == 0
