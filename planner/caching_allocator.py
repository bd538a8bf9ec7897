"""PyTorch's CUDA caching allocator, replayed in pure Python: the reserved bytes a sequence of allocations and frees
leaves, under the allocator's block rules.

The rules, from c10/cuda/CUDACachingAllocator.cpp (torch 2.x, default PYTORCH_CUDA_ALLOC_CONF; the file's head comment
and `malloc`, `round_size`, `get_pool`, `get_allocation_size`, `get_free_block`, `should_split`, `alloc_found_block`,
`free_block`, `try_merge_blocks`, `release_cached_blocks`):
- every request is rounded up to a multiple of 512 bytes (kMinBlockSize; `round_size` without
  roundup_power2_divisions);
- requests of at most 1 MiB (kSmallSize) come from the small pool, larger ones from the large pool; a free block of
  one pool never serves the other;
- a request no cached block can serve makes a new segment (cudaMalloc): 2 MiB (kSmallBuffer) for the small pool,
  20 MiB (kLargeBuffer) for a large request under 10 MiB (kMinLargeAlloc), else the request rounded up to 2 MiB
  (kRoundLarge);
- the free block chosen is the smallest that fits (the pool is ordered by size, then address: best fit, lowest
  address among equals);
- the block found is split when what remains is at least 512 bytes (small pool) or more than 1 MiB (large pool);
  otherwise the request takes the whole block;
- a freed block merges with the free blocks beside it in its own segment; segments never merge;
- a cudaMalloc the device has no room for first frees every cached segment that holds no live block
  (`release_cached_blocks`), then retries; if that fails too the allocation fails (out of memory).
`max_memory_reserved` is the peak of the segments' sum, `max_memory_allocated` the peak of the live blocks' (rounded)
sizes. Not modelled: several streams (a freed block serves only its stream's requests), `record_stream`'s delayed
frees, max_split_size_mb, roundup_power2_divisions, garbage_collection_threshold and expandable_segments (one growable
segment per stream: what the rules above fragment, it tiles).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

MIN_BLOCK_BYTES = 512  # kMinBlockSize
SMALL_SIZE_BYTES = 1 << 20  # kSmallSize: the largest small-pool request
SMALL_BUFFER_BYTES = 2 << 20  # kSmallBuffer: a small-pool segment
LARGE_BUFFER_BYTES = 20 << 20  # kLargeBuffer: the segment of a 1-10 MiB request
MIN_LARGE_ALLOC_BYTES = 10 << 20  # kMinLargeAlloc
ROUND_LARGE_BYTES = 2 << 20  # kRoundLarge


def round_size(nbytes: int) -> int:
    """`round_size`: a request's block size, a multiple of 512 bytes."""
    return max(MIN_BLOCK_BYTES, -(-nbytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES)


def segment_bytes(size: int) -> int:
    """`get_allocation_size`: the segment cudaMalloc'ed for a (rounded) request no cached block serves."""
    if size <= SMALL_SIZE_BYTES:
        return SMALL_BUFFER_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_BUFFER_BYTES
    return -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES


def is_small(size: int) -> bool:
    return size <= SMALL_SIZE_BYTES


def should_split(block_bytes: int, size: int) -> bool:
    """`should_split` (no max_split_size): whether a block serving `size` keeps its remainder as a free block."""
    remaining = block_bytes - size
    return remaining >= MIN_BLOCK_BYTES if is_small(size) else remaining > SMALL_SIZE_BYTES


class OutOfMemory(Exception):
    """A request the device had no room for, even after the cache released its free segments."""


@dataclass(slots=True)
class _Block:
    addr: int
    size: int
    small: bool
    allocated: bool = False
    prev: _Block | None = None  # neighbours within the block's segment
    next: _Block | None = None


class CachingAllocator:
    """One device's allocator, default stream only. `capacity_bytes`: what the allocator may reserve (the card less
    what lives outside it); None for no limit."""

    def __init__(self, capacity_bytes: float | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # pool -> sorted (size, addr)
        self._blocks: dict[int, _Block] = {}  # addr -> block, free or live
        self._next_addr = 0
        self.allocated_bytes = 0
        self.reserved_bytes = 0
        self.peak_allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self.segments = 0

    def malloc(self, nbytes: int) -> int:
        """A live block of at least `nbytes`; returns its address."""
        size = round_size(nbytes)
        small = is_small(size)
        block = self._best_fit(small, size)
        if block is None:
            block = self._new_segment(small, segment_bytes(size))
        if should_split(block.size, size):
            rest = _Block(addr=block.addr + size, size=block.size - size, small=small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            self._blocks[rest.addr] = rest
            self._insert_free(rest)
        block.allocated = True
        self.allocated_bytes += block.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return block.addr

    def free(self, addr: int) -> None:
        """`free_block`: the block returns to its pool, merged with free neighbours of its segment."""
        block = self._blocks[addr]
        block.allocated = False
        self.allocated_bytes -= block.size
        for other in (block.prev, block.next):
            if other is not None and not other.allocated:
                self._remove_free(other)
                del self._blocks[other.addr]
                if other is block.prev:
                    del self._blocks[block.addr]
                    block.addr, block.prev = other.addr, other.prev
                    if block.prev is not None:
                        block.prev.next = block
                    self._blocks[block.addr] = block
                else:
                    block.next = other.next
                    if block.next is not None:
                        block.next.prev = block
                block.size += other.size
        self._insert_free(block)

    def release_cached(self) -> None:
        """`release_cached_blocks`: cudaFree every segment that is one free block."""
        for small in (True, False):
            keep = []
            for size, addr in self._free[small]:
                block = self._blocks[addr]
                if block.prev is None and block.next is None:
                    del self._blocks[addr]
                    self.reserved_bytes -= size
                    self.segments -= 1
                else:
                    keep.append((size, addr))
            self._free[small] = keep

    def _best_fit(self, small: bool, size: int) -> _Block | None:
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i == len(pool):
            return None
        _, addr = pool.pop(i)
        return self._blocks[addr]

    def _new_segment(self, small: bool, nbytes: int) -> _Block:
        if self.capacity_bytes is not None and self.reserved_bytes + nbytes > self.capacity_bytes:
            self.release_cached()
            if self.reserved_bytes + nbytes > self.capacity_bytes:
                raise OutOfMemory(f"{nbytes} bytes more than the {self.capacity_bytes:.0f} the device has")
        block = _Block(addr=self._next_addr, size=nbytes, small=small)
        self._next_addr += nbytes
        self._blocks[block.addr] = block
        self.reserved_bytes += nbytes
        self.segments += 1
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block

    def _insert_free(self, block: _Block) -> None:
        bisect.insort(self._free[block.small], (block.size, block.addr))

    def _remove_free(self, block: _Block) -> None:
        pool = self._free[block.small]
        i = bisect.bisect_left(pool, (block.size, block.addr))
        del pool[i]


Event = tuple[Literal["alloc"], str, int] | tuple[Literal["free"], str]


@dataclass(frozen=True, slots=True)
class Replay:
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    out_of_memory: bool = False

    @property
    def reserve_bytes(self) -> int:
        """Reserved minus allocated at their peaks: what the cache holds beyond the live blocks."""
        return self.peak_reserved_bytes - self.peak_allocated_bytes


def replay(events: tuple[Event, ...] | list[Event], capacity_bytes: float | None = None) -> Replay:
    """Runs ("alloc", name, bytes) / ("free", name) events on an empty cache."""
    alloc = CachingAllocator(capacity_bytes)
    live: dict[str, int] = {}
    try:
        for event in events:
            if event[0] == "alloc":
                live[event[1]] = alloc.malloc(event[2])
            else:
                alloc.free(live.pop(event[1]))
    except OutOfMemory:
        return Replay(alloc.peak_allocated_bytes, alloc.peak_reserved_bytes, out_of_memory=True)
    return Replay(alloc.peak_allocated_bytes, alloc.peak_reserved_bytes)
