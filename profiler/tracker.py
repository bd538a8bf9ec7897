"""A tensor-level memory tracker: counts the bytes of every live storage, with categories at the peak.

A TorchDispatchMode sees every tensor an op returns; each new untyped storage is counted once (by the
identity of its StorageImpl) and uncounted when it dies, through a weakref finalizer on the storage.
This is what PyTorch's caching allocator would hold as `memory_allocated()` without rounding (the
CUDA allocator rounds each block up to 512 bytes: c10/cuda/CUDACachingAllocator.cpp, kMinBlockSize,
negligible for the large tensors of a training step). It works on fake tensors, where no byte exists.
PyTorch's own `torch.distributed._tools.mem_tracker.MemTracker` gives per-module categories too, but
takes about a minute per 7B step and fails on frozen weights; this mode takes seconds.

Categories are decided after the step from what each storage turned out to be: a parameter
(weights), a parameter's `.grad` (gradients), an optimizer state (optimizer), a tensor autograd saved
for backward by the decoder (activations, seen through `saved_tensors_hooks`), anything else (other:
the final norm's, LM head's and loss's buffers, saved or not, as the planner counts them; the optimizer's
foreach scratch; the autocast weight cache).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CATEGORIES = ("weights", "gradients", "optimizer", "activations", "other")


@dataclass
class Snapshot:
    """The live storages at the peak: serial -> bytes, and when (a label set by the caller)."""

    total_bytes: int = 0
    storages: dict[int, int] = field(default_factory=dict)
    label: str = ""


class StorageTracker(TorchDispatchMode):
    """Counts live storage bytes; remembers the set of live storages at the highest total.

    A storage can change size where no dispatch mode sees it: FSDP2 frees and re-allocates each unsharded
    parameter's all-gather output with `untyped_storage().resize_(0 / n)` (torch/distributed/fsdp/_fully_shard/
    _fsdp_param.py, free_storage / alloc_storage, one storage per parameter however small), FSDP1 its padded flat
    parameter (_flat_param.py `_free_storage` / `_alloc_storage`, allocated empty at wrap). The caching allocator
    on CUDA sees those, so every live storage is re-measured at each allocation and each free: its size now, not
    when it was first seen, is what `max_memory_allocated` counts."""

    def __init__(self) -> None:
        super().__init__()
        # StorageImpl address -> (serial, bytes when first seen, the storage)
        self._live: dict[int, tuple[int, int, weakref.ref]] = {}
        self._serial = 0
        self._counted_bytes = 0  # the live storages' bytes when first seen (resizes: resized_bytes)
        self.peak = Snapshot()
        self._peak_bytes = 0
        self._peak_label = ""
        self.label = ""
        self._saved: set[int] = set()  # serials autograd saved for backward
        self.weight_serials: set[int] = set()  # set by the caller once the parameters exist
        self.weight_copies: set[int] = set()  # casts of a parameter (autocast's weight cache)
        self.in_head = False  # set while the final norm, LM head and loss run (the planner's "logits and loss")
        self.head_serials: set[int] = set()
        self._resizes_seen = False  # a live storage was seen at a size other than the one it was first seen at

    # --- counting ---------------------------------------------------------------------------
    def _key(self, t: torch.Tensor) -> tuple[int, torch.UntypedStorage] | None:
        local = getattr(t, "_local_tensor", None)  # a DTensor (FSDP2) holds its shard in a plain tensor
        if local is not None:
            t = local
        try:
            st = t.untyped_storage()
        except (NotImplementedError, RuntimeError):
            return None
        return st._cdata, st

    def track(self, t: torch.Tensor) -> None:
        if t.device.type == "meta":  # shapes only, no bytes (a FakeTensor reports the device it fakes)
            return
        got = self._key(t)
        if got is None:
            return
        key, st = got
        if key in self._live:
            return
        nbytes = st.nbytes()
        self._serial += 1
        self._live[key] = (self._serial, nbytes, weakref.ref(st))
        if self.in_head:
            self.head_serials.add(self._serial)
        self._counted_bytes += nbytes
        weakref.finalize(st, self._free, key, self._serial)
        self._check_peak()

    def resized_bytes(self) -> int:
        """Bytes the live storages hold now minus what they held when first seen (negative while FSDP has
        freed unsharded parameters with resize_(0), positive where it re-allocated one first seen empty)."""
        delta = 0
        for _, counted, ref in self._live.values():
            st = ref()
            if st is not None:
                delta += st.nbytes() - counted
        if delta:
            self._resizes_seen = True
        return delta

    @property
    def current_bytes(self) -> int:
        """Bytes of the live storages now, resizes included."""
        return self._counted_bytes + self.resized_bytes()

    def _check_peak(self) -> None:
        now = self.current_bytes
        if now > self._peak_bytes:
            self._peak_bytes, self._peak_label = now, self.label
            self._take_peak()

    def _free(self, key: int, serial: int) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] == serial:
            # a resize since the last allocation (an all-gather's copy-out into re-allocated parameters) can have
            # raised the total above the peak: the moment before this free is the last one it shows in. Only
            # where storages resize at all (FSDP): a run without one pays the re-measuring at allocations alone
            if self._resizes_seen:
                self._check_peak()
            del self._live[key]
            self._counted_bytes -= entry[1]

    def _take_peak(self) -> None:
        storages = {}
        for serial, counted, ref in self._live.values():
            st = ref()
            storages[serial] = counted if st is None else st.nbytes()
        self.peak = Snapshot(total_bytes=sum(storages.values()), label=self._peak_label, storages=storages)

    def finish(self) -> Snapshot:
        """The peak so far (call after the step)."""
        return self.peak

    def track_all(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self.track(t)

    def serial_of(self, t: torch.Tensor) -> int | None:
        got = self._key(t)
        if got is None:
            return None
        entry = self._live.get(got[0])
        return None if entry is None else entry[0]

    def reset_peak(self) -> None:
        self._peak_bytes, self._peak_label = self.current_bytes, self.label
        self._take_peak()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        # autocast's cached 16-bit copy of a weight (aten/src/ATen/autocast_mode.cpp, cached_cast)
        if (func is torch.ops.aten._to_copy.default and isinstance(out, torch.Tensor) and self.weight_serials
                and self.serial_of(args[0]) in self.weight_serials):
            serial = self.serial_of(out)
            if serial is not None:
                self.weight_copies.add(serial)
        return out

    # --- saved tensors ------------------------------------------------------------------------
    def pack_hook(self, t: torch.Tensor) -> torch.Tensor:
        serial = self.serial_of(t)
        if serial is not None:
            self._saved.add(serial)
        return t

    @staticmethod
    def unpack_hook(t: torch.Tensor) -> torch.Tensor:
        return t

    def saved_tensors(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack_hook, self.unpack_hook)

    # --- categories ---------------------------------------------------------------------------
    def categorize(self, snapshot: Snapshot, *, weights: set[int], gradients: set[int],
                   optimizer: set[int]) -> dict[str, int]:
        """Bytes per category of the storages live in `snapshot`, given the serials of each kind."""
        out = dict.fromkeys(CATEGORIES, 0)
        for serial, nbytes in snapshot.storages.items():
            if serial in weights:
                cat = "weights"
            elif serial in gradients:
                cat = "gradients"
            elif serial in optimizer:
                cat = "optimizer"
            elif serial in self.weight_copies:
                cat = "other"
            elif serial in self._saved and serial not in self.head_serials:
                cat = "activations"
            else:
                cat = "other"
            out[cat] += nbytes
        out["total"] = sum(out[c] for c in CATEGORIES)
        return out
