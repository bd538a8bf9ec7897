"""DeepSpeed ZeRO-3's optimizer, built and stepped: the allocations its construction and each step make on a rank, in
order, and what PyTorch's caching allocator reserves for them (planner.caching_allocator).

`DeepSpeedZeroOptimizer_Stage3.__init__` (deepspeed/runtime/zero/stage3.py; the same lines in 0.12.x, the release of
late 2023, and 0.19.8 except where noted), no offload, `contiguous_gradients` on:
- `_create_fp16_partitions_with_defragmentation`: the trained 16-bit partitions go to the host, the cache is emptied
  (`empty_cache`) and they come back as one flat buffer, c16 x P bytes (P: this rank's trained partition elements);
- `_create_fp16_sub_groups` splits each parameter group in parameter order, closing a sub-group once its partition
  elements reach `sub_group_size` (planner.engines.zero.zero3_sub_group_elements);
- `_create_fp32_partitions`, per sub-group of S elements: the fp32 master, 4 S, made through a temporary that is freed
  at once: up to DeepSpeed 0.18 `.to(device).clone().float()` (a 16-bit clone, c16 S, then its fp32 copy), from the
  low-precision-master change (DeepSpeed PR 7700, December 2025; 0.19.8) `.to(device, dtype=fp32)` then `.clone()`
  (4 S, then 4 S);
- `initialize_optimizer_states`: `gradient_buffer = torch.zeros(largest sub-group)` in fp32, lent to every sub-group
  as its `.grad` while `_optimizer_step(i)` makes the optimizer's states (Adam: exp_avg and exp_avg_sq, 4 S each, made
  by the first step, sub-group by sub-group), then dropped when the function returns;
- `_setup_for_real_optimizer`, after it: the contiguous gradients' ipg bucket, `reduce_bucket_size` elements in the
  16-bit dtype, then `grad_partitions_flat_buffer`, c16 x P zeros (the gradient partitions, kept for the run).
Each step (`step`): the gradient norm, one gradient partition at a time cast to fp64 and freed (`get_grad_norm_direct`;
the largest is the embedding's or the LM head's partition), then per sub-group `_prepare_fp32_grad_for_sub_group`
(`self.flatten(averaged_gradients)` in 16 bits, c16 S, then `.to(fp32)`, 4 S; the flat copy goes when the line ends)
and `_release_sub_group` drops the fp32 gradient before the next sub-group.

Nothing empties the cache after the defragmentation, so the segments these allocations leave stay reserved for the
run: replayed in order on a cache that starts empty (the defragmentation's `empty_cache` makes it so for a full
fine-tune, whose every partition it moves), their peak reserved minus their peak allocated is a floor under the
reserve of the optimizer step's peak (planner.allocator.reserve_bytes). Not replayed: the backward's blocks (freed
before the step; cached blocks they leave may serve the step and add nothing to this floor) and the reduce stream's
(another stream's pool).
"""

from __future__ import annotations

from functools import lru_cache

from planner import caching_allocator
from planner.caching_allocator import Event

FP32_BYTES = 4
FP64_BYTES = 8
# The first DeepSpeed release whose `_create_fp32_partitions` converts to fp32 before cloning (PR 7700).
FP32_CONVERT_RELEASE = (0, 19)


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def init_and_step_events(*, sub_groups: tuple[int, ...], c16: int, state_bytes: tuple[float, ...], bucket: int,
                         largest_partition: int, version: str) -> list[Event]:
    """The allocations of the optimizer's construction and of one step on a rank: `sub_groups`, this rank's partition
    elements of each sub-group; `c16`, the 16-bit element size; `state_bytes`, the bytes per element of each of the
    optimizer's state tensors (Adam: 4, 4); `bucket`, the ipg bucket's elements; `largest_partition`, the largest
    gradient partition's elements (0: no norm copy worth a segment); `version`: DeepSpeed's release."""
    total = sum(sub_groups)
    events: list[Event] = [("alloc", "16-bit partitions", c16 * total)]
    convert_first = _release(version) >= FP32_CONVERT_RELEASE
    for i, s in enumerate(sub_groups):
        events += [("alloc", "temporary", (FP32_BYTES if convert_first else c16) * s),
                   ("alloc", f"fp32 master {i}", FP32_BYTES * s), ("free", "temporary")]
    events.append(("alloc", "gradient_buffer", FP32_BYTES * max(sub_groups)))
    for i, s in enumerate(sub_groups):
        events += [("alloc", f"state {k} of {i}", round(b * s)) for k, b in enumerate(state_bytes)]
    events += [("free", "gradient_buffer"), ("alloc", "ipg bucket", c16 * bucket),
               ("alloc", "gradient partitions", c16 * total)]
    if largest_partition:
        events += [("alloc", "fp64 norm copy", FP64_BYTES * largest_partition), ("free", "fp64 norm copy")]
    for s in sub_groups:
        events += [("alloc", "flat 16-bit gradients", c16 * s), ("alloc", "fp32 gradients", FP32_BYTES * s),
                   ("free", "flat 16-bit gradients"), ("free", "fp32 gradients")]
    return events


@lru_cache(maxsize=1024)
def init_and_step_replay(*, sub_groups: tuple[int, ...], c16: int, state_bytes: tuple[float, ...], bucket: int,
                         largest_partition: int, version: str) -> caching_allocator.Replay:
    return caching_allocator.replay(init_and_step_events(
        sub_groups=sub_groups, c16=c16, state_bytes=state_bytes, bucket=bucket,
        largest_partition=largest_partition, version=version))
