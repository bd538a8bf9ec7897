"""DeepSpeed ZeRO-3's optimizer, built and stepped: the allocations its construction and its first step make on a rank,
in order, and what PyTorch's caching allocator reserves for them (planner.caching_allocator).

`DeepSpeedZeroOptimizer_Stage3` (deepspeed/runtime/zero/stage3.py, read at v0.12.3, the release of late 2023, and at
0.19.8), no offload, `contiguous_gradients` on; P: this rank's trained partition elements, S: a sub-group's:
- `_create_fp16_partitions_with_defragmentation`: the trained 16-bit partitions go to the host, the cache is emptied
  (`defragment`: `empty_cache`) and they come back as one flat buffer, c16 P bytes;
- `_create_fp16_sub_groups` splits each parameter group in parameter order, closing a sub-group once its partition
  elements reach `sub_group_size` (planner.engines.zero.zero3_sub_group_elements);
- `_create_fp32_partitions`, per sub-group: the fp32 master, 4 S, through a temporary: up to 0.18.2
  `.to(device).clone().float().detach()`, a 16-bit clone (c16 S) freed with the expression; from 0.18.3 (PR 7700)
  `converted = .to(device, dtype=fp32)` (4 S) then `converted.clone()`, the converted copy freed when the next
  sub-group's rebinds the name (after that one is made) or when the function returns;
- `initialize_optimizer_states`: `gradient_buffer = torch.zeros(largest S)` in fp32, lent to each sub-group as `.grad`;
  up to 0.13.1 `_optimizer_step(i)` made the optimizer's states there (Adam's two moments, 4 S each); from 0.13.2 (PR
  5104, "Remove optimizer step on initialization") the first real step makes them; the buffer goes when the function
  returns;
- `_setup_for_real_optimizer`, after it: the ipg bucket, `reduce_bucket_size` 16-bit elements, then
  `grad_partitions_flat_buffer`, c16 P zeros, kept for the run.
The step: the gradient norm, each gradient partition cast to fp64 and freed in turn (`get_grad_norm_direct`; the
largest is the embedding's or the LM head's), then per sub-group `_prepare_fp32_grad_for_sub_group`
(`self.flatten(...)`, c16 S, then `.to(fp32)`, 4 S; the flat copy goes with the line), the optimizer step (from 0.13.2
the first makes the states here; the client's torch AdamW then holds its temporaries, on a GPU foreach's
`exp_avg_sq_sqrt`, 4 S, freed when its step returns: planner/torch_adamw.py step_temporaries) and
`_release_sub_group`, which drops the fp32 gradient before the next sub-group.
Checked on the CPU: tests/validation/zero3_init_probe.py traces DeepSpeed 0.19.8's allocations in this order and size.

Nothing empties the cache after the defragmentation, so the segments these allocations leave stay reserved for the
run. Replayed in order on a cache that starts empty (the defragmentation's `empty_cache` makes it so for a full
fine-tune, whose every partition it moves), their peak reserved minus their peak allocated is a floor under the
reserve of the optimizer step (planner.memory). Not replayed: the forward's and backward's blocks (freed before the
step: blocks they leave cached may serve the step's requests, which lowers nothing under this floor since the replay's
own free blocks stay), the reduce stream's (another stream's pool), the steps after the first (the same requests find
the first step's freed blocks).
"""

from __future__ import annotations

from functools import lru_cache

from planner import caching_allocator
from planner.caching_allocator import Event

FP32_BYTES = 4
FP64_BYTES = 8
# DeepSpeed PR 5104 (February 2024, 0.13.2): the optimizer's states are no longer made by a step at construction but
# by the first step, sub-group by sub-group, between its fp32 gradients and their release.
LAZY_STATES_RELEASE = (0, 13, 2)
# DeepSpeed PR 7700 (December 2025, 0.18.3): the fp32 master is converted to fp32 first, then cloned; the converted
# copy is dropped when the next sub-group's conversion rebinds its variable (measured: tests/validation/
# zero3_init_probe.py).
FP32_CONVERT_RELEASE = (0, 18, 3)


def release_tuple(version: str) -> tuple[int, int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:3]]
    return (parts + [0, 0, 0])[0], (parts + [0, 0, 0])[1], (parts + [0, 0, 0])[2]


def init_and_step_events(*, sub_groups: tuple[int, ...], c16: int, state_bytes: tuple[float, ...], bucket: int,
                         largest_partition: int, version: str, temporaries: float = 0.0) -> list[Event]:
    """The allocations of the optimizer's construction and of its first step on a rank: `sub_groups`, this rank's
    partition elements of each sub-group; `c16`, the 16-bit element size; `state_bytes`, the bytes per element of each
    of the optimizer's state tensors (Adam: 4, 4); `bucket`, the ipg bucket's elements; `largest_partition`, the
    largest gradient partition's elements (0: no norm copy worth a segment); `version`: DeepSpeed's release;
    `temporaries`: the fp32 sub-group-sized buffers the optimizer's step holds (torch_adamw.step_temporaries per
    element: 1 for foreach, 0 for DeepSpeed's FusedAdam or torch's fused kernel)."""
    release = release_tuple(version)
    convert_first, states_at_init = release >= FP32_CONVERT_RELEASE, release < LAZY_STATES_RELEASE
    total = sum(sub_groups)
    events: list[Event] = [("alloc", "16-bit partitions", c16 * total)]
    for i, s in enumerate(sub_groups):
        if convert_first:
            events.append(("alloc", f"converted {i}", FP32_BYTES * s))
            events += [("free", f"converted {i - 1}")] if i else []
            events.append(("alloc", f"fp32 master {i}", FP32_BYTES * s))
        else:
            events += [("alloc", "16-bit clone", c16 * s), ("alloc", f"fp32 master {i}", FP32_BYTES * s),
                       ("free", "16-bit clone")]
    if convert_first:
        events.append(("free", f"converted {len(sub_groups) - 1}"))
    states = [[("alloc", f"state {k} of {i}", round(b * s)) for k, b in enumerate(state_bytes)]
              for i, s in enumerate(sub_groups)]
    events.append(("alloc", "gradient_buffer", FP32_BYTES * max(sub_groups)))
    if states_at_init:
        events += [e for group in states for e in group]
    events += [("free", "gradient_buffer"), ("alloc", "ipg bucket", c16 * bucket),
               ("alloc", "gradient partitions", c16 * total)]
    if largest_partition:
        events += [("alloc", "fp64 norm copy", FP64_BYTES * largest_partition), ("free", "fp64 norm copy")]
    for i, s in enumerate(sub_groups):
        events += [("alloc", "flat 16-bit gradients", c16 * s), ("alloc", "fp32 gradients", FP32_BYTES * s),
                   ("free", "flat 16-bit gradients")]
        events += [] if states_at_init else states[i]
        if temporaries:
            events += [("alloc", "AdamW temporaries", round(temporaries * FP32_BYTES * s)),
                       ("free", "AdamW temporaries")]
        events.append(("free", "fp32 gradients"))
    return events


@lru_cache(maxsize=1024)
def init_and_step_replay(*, sub_groups: tuple[int, ...], c16: int, state_bytes: tuple[float, ...], bucket: int,
                         largest_partition: int, version: str, temporaries: float = 0.0) -> caching_allocator.Replay:
    return caching_allocator.replay(init_and_step_events(
        sub_groups=sub_groups, c16=c16, state_bytes=state_bytes, bucket=bucket,
        largest_partition=largest_partition, version=version, temporaries=temporaries))
