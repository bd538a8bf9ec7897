"""planner.caching_allocator's replay of PyTorch's CUDA caching allocator, against the allocator's documented rules and
published recordings of it, and planner.loss_allocations' loss blocks against planner.loss_memory's allocated peaks.

A CPU has no caching allocator (torch's CPU tensors go back to malloc), so the fixtures are what the allocator's source
states and what runs on GPUs recorded:
- c10/cuda/CUDACachingAllocator.cpp's head comment: small requests are packed into 2 MiB segments, 1-10 MiB requests
  split a 20 MiB segment, larger ones get their own segment, a freed block serves any request it fits, and a failed
  cudaMalloc frees the cached segments and retries;
- pytorch/pytorch test/test_cuda.py `test_out_of_memory_retry` and `test_set_per_process_memory_fraction`;
- pytorch/pytorch issue 69526: a 512 x 3 x 224 x 224 fp32 input beside a small conv's weights reads 294 MB allocated
  and 296 MB reserved (`memory_allocated` / `memory_reserved` in MiB).
"""

from __future__ import annotations

import pytest

from planner import allocator, loss_memory
from planner.build import build_config
from planner.caching_allocator import (
    LARGE_BUFFER_BYTES,
    SMALL_BUFFER_BYTES,
    CachingAllocator,
    OutOfMemory,
    round_size,
    segment_bytes,
)
from planner.loss_allocations import standard_loss_events, standard_loss_replay
from planner.memory import memory_per_gpu
from planner.strategy import Attn, CrossEntropy, FsdpStrategy, GradCkpt, Method, Precision, TrainConfig

MiB = 2**20


def test_sizes_round_to_512_bytes_and_segments_by_pool() -> None:
    assert round_size(1) == 512 and round_size(513) == 1024 and round_size(4096) == 4096
    assert segment_bytes(round_size(4)) == SMALL_BUFFER_BYTES  # one float: a 2 MiB small segment
    assert segment_bytes(5 * MiB) == LARGE_BUFFER_BYTES  # 1-10 MiB: a 20 MiB segment
    assert segment_bytes(10 * MiB) == 10 * MiB and segment_bytes(11 * MiB + 1) == 12 * MiB  # own, 2 MiB rounded


def test_small_requests_share_one_2_mib_segment() -> None:
    alloc = CachingAllocator()
    for _ in range(4096):  # 4096 x 512 B fill one segment exactly
        alloc.malloc(4)
    assert (alloc.segments, alloc.reserved_bytes) == (1, 2 * MiB)
    alloc.malloc(4)
    assert alloc.segments == 2


def test_mid_size_requests_split_a_20_mib_segment() -> None:
    alloc = CachingAllocator()
    for _ in range(4):  # 4 x 5 MiB = 20 MiB: one segment
        alloc.malloc(5 * MiB)
    assert (alloc.segments, alloc.reserved_bytes) == (1, 20 * MiB)
    alloc.malloc(5 * MiB)
    assert alloc.reserved_bytes == 40 * MiB


def test_a_freed_block_serves_a_smaller_request_and_its_rest_stays_free() -> None:
    alloc = CachingAllocator()
    a = alloc.malloc(100 * MiB)
    alloc.free(a)
    alloc.malloc(60 * MiB)
    alloc.malloc(40 * MiB)  # the split's remainder
    assert alloc.reserved_bytes == 100 * MiB
    alloc.malloc(1 * MiB + 512)  # a large-pool request: a new 20 MiB segment, the 100 MiB one is full
    assert alloc.reserved_bytes == 120 * MiB


def test_freed_neighbours_merge_within_a_segment_not_across() -> None:
    alloc = CachingAllocator()
    a, b = alloc.malloc(60 * MiB), alloc.malloc(60 * MiB)
    alloc.free(a)
    alloc.free(b)
    alloc.malloc(100 * MiB)  # two 60 MiB segments, free, never merge: a third
    assert alloc.reserved_bytes == 220 * MiB
    alloc = CachingAllocator()
    c = alloc.malloc(100 * MiB)
    alloc.free(c)
    d, e = alloc.malloc(50 * MiB), alloc.malloc(50 * MiB)  # the 100 MiB block split in two
    alloc.free(d)
    alloc.free(e)  # merged back: one 100 MiB block serves 100 MiB again
    alloc.malloc(100 * MiB)
    assert alloc.reserved_bytes == 100 * MiB


def test_best_fit_takes_the_smallest_free_block() -> None:
    alloc = CachingAllocator()
    big, small = alloc.malloc(200 * MiB), alloc.malloc(100 * MiB)
    alloc.free(big)
    alloc.free(small)
    alloc.malloc(90 * MiB)  # from the 100 MiB block; the 200 MiB one stays whole
    alloc.malloc(200 * MiB)
    assert alloc.reserved_bytes == 300 * MiB


def test_out_of_memory_retry_frees_cached_segments() -> None:
    """test_cuda.py test_out_of_memory_retry: half the device allocated, a second half fails; once the first is freed
    (still cached) the second succeeds, because the failed cudaMalloc released the cached segment. The device's free
    memory is its total less the CUDA context (0.5 GiB here)."""
    total = 80 * 2**30
    alloc = CachingAllocator(capacity_bytes=total - 2**29)
    a = alloc.malloc(total // 2)
    with pytest.raises(OutOfMemory):
        alloc.malloc(total // 2)
    alloc.free(a)
    alloc.malloc(total // 2)
    assert alloc.reserved_bytes == total // 2


def test_memory_fraction_limits_reservations() -> None:
    """test_cuda.py test_set_per_process_memory_fraction: with a fraction of 0.5, 0.499 of the device less what is
    reserved fits, 0.5 does not (a live 1024-float tensor keeps its small segment)."""
    total = 80 * 2**30
    alloc = CachingAllocator(capacity_bytes=0.5 * total)
    alloc.malloc(1024 * 4)
    t = alloc.malloc(int(total * 0.499) - alloc.peak_reserved_bytes)
    alloc.free(t)
    alloc.release_cached()
    with pytest.raises(OutOfMemory):
        alloc.malloc(int(total * 0.5))


def test_issue_69526_input_beside_small_weights() -> None:
    """pytorch/pytorch issue 69526: the input (512, 3, 224, 224) fp32 and a Conv2d(3, 28, 3)'s weight and bias read
    memory_allocated 294 MB and memory_reserved 296 MB before the forward."""
    alloc = CachingAllocator()
    alloc.malloc(28 * 3 * 3 * 3 * 4)
    alloc.malloc(28 * 4)
    alloc.malloc(512 * 3 * 224 * 224 * 4)
    assert round(alloc.allocated_bytes / MiB) == 294
    assert alloc.reserved_bytes // MiB == 296


@pytest.mark.parametrize("version", ["4.44.0", "4.47.0", ""])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("logit_bytes", [2, 4])
def test_loss_replay_allocates_what_loss_memory_counts(version: str, batch: int, logit_bytes: int) -> None:
    """The replayed blocks' allocated peak is planner.loss_memory's standard loss (the same ops, counted by hand)."""
    from planner import transformers_versions
    seq, vocab = 2048, 32000
    run = standard_loss_replay(batch=batch, seq_len=seq, vocab=vocab, logit_bytes=logit_bytes, version=version,
                               keeps_output=False)
    shifted = batch > 1 and transformers_versions.loss_keeps_shifted_copy(version)
    counted = loss_memory.standard_loss_bytes(batch * seq, vocab, logit_bytes=logit_bytes, shifted_copy=shifted)
    assert run.peak_allocated_bytes == pytest.approx(counted, rel=0.01)


def test_loss_replay_reserves_18_bytes_per_logit_up_to_4_45() -> None:
    """transformers 4.31-4.45 with several sequences: 12 bytes per logit allocated, 18 reserved. Backward's full-length
    slice gradient (4 T V) fits none of the freed blocks: the 16-bit logits' is half its size, the shifted copy's and
    log_softmax's are b rows short."""
    batch, seq, vocab = 8, 2048, 128256
    run = standard_loss_replay(batch=batch, seq_len=seq, vocab=vocab, logit_bytes=2, version="4.44.0",
                               keeps_output=False)
    logits = batch * seq * vocab
    assert run.peak_allocated_bytes / logits == pytest.approx(12, abs=0.01)
    assert run.peak_reserved_bytes / logits == pytest.approx(18, abs=0.01)


def test_loss_replay_from_4_49_reuses_the_upcast() -> None:
    """From 4.49 (labels shifted, no slice): the nll gradient takes the freed upcast's block, the log_softmax gradient
    needs a new one: 14 reserved for 12 allocated."""
    run = standard_loss_replay(batch=8, seq_len=2048, vocab=128256, logit_bytes=2, version="", keeps_output=False)
    assert run.reserve_bytes / (8 * 2048 * 128256) == pytest.approx(2, abs=0.01)


def test_loss_events_free_what_they_allocate() -> None:
    for version in ("4.30.0", "4.44.0", "4.47.0", ""):
        for keeps in (False, True):
            events = standard_loss_events(batch=4, seq_len=512, vocab=32000, logit_bytes=2, version=version,
                                          keeps_output=keeps)
            made = [e[1] for e in events if e[0] == "alloc"]
            freed = [e[1] for e in events if e[0] == "free"]
            assert sorted(made) == sorted(freed) and len(set(made)) == len(made)



def _liger_hf(version: str, seq_len: int = 2048) -> TrainConfig:
    """Liger-Kernel's README benchmark without Liger: Llama 3-8B full, FSDP1 on 8 A100s, batch 8, checkpointing."""
    return build_config(model="llama-3-8b", gpus="8xA100-80G", method=Method.full, precision=Precision.bf16_mixed,
                        fsdp=FsdpStrategy.full_shard, fsdp_version=1, micro_batch=8, seq_len=seq_len,
                        grad_ckpt=GradCkpt.full, attn=Attn.sdpa, transformers_version=version, check=False)


def test_the_replay_is_a_floor_under_the_reserve() -> None:
    """Where the loss sets the peak, the plan's reserve is at least the loss blocks' replayed reserve: with transformers
    4.44 (6 bytes per logit) that is above GMLake's recomputation share; with a current release (2 bytes) it is not,
    and the share stands."""
    logits = 8 * 2048 * 128256
    old, new = memory_per_gpu(_liger_hf("4.44.0")), memory_per_gpu(_liger_hf(""))
    assert old.phase == new.phase == "backward" and old.allocated == new.allocated
    assert old.reserve_wanted == pytest.approx(6 * logits, rel=0.01)
    assert new.reserve_wanted > 2 * logits  # GMLake's share of the step's transient bytes, above the 4.49+ floor
    assert old.reserve_wanted > new.reserve_wanted


def test_no_replay_off_the_standard_eager_loss() -> None:
    base = dict(model="llama-3-8b", gpus="8xA100-80G", micro_batch=8, seq_len=2048, transformers_version="4.44.0",
                check=False)
    assert allocator.loss_replay(build_config(**base)) is not None
    for kw in (dict(cross_entropy=CrossEntropy.chunked), dict(torch_compile=True), dict(tp=2),
               dict(model="llama-2-7b", attn=Attn.eager)):  # eager scores (32 heads x 2048) outsize V = 32000
        assert allocator.loss_replay(build_config(**{**base, **kw})) is None
