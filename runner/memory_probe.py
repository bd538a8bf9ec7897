"""What one rank of `ftplan run` measures for the run summary, each quantity as the planner defines it.

- Peak live tensor bytes, the planner's memory model's quantity. On CUDA `torch.cuda.max_memory_allocated`
  (the caching allocator's count of bytes handed to tensors, rounded to 512-byte blocks). On the CPU the
  profiler's dispatch-mode tracker (profiler.tracker.StorageTracker): the weights are registered when training
  starts, everything the engine and the first `TRACKED_STEPS` optimizer steps create is seen through dispatch
  (DeepSpeed's partitions and buckets, gradients, optimizer states, activations, logits). The planner's peak
  is reached within them: the optimizer states exist from step 1, ZeRO-3 keeps parameters gathered for reuse
  from step 2. The tracker then stops, so it slows down only those warm-up steps, which are not timed.
- Resident set size above the RSS before the model was loaded (the interpreter and libraries excluded): the
  host's view, which adds the allocator's slack and library buffers to the tensors. Peak RSS is read from
  VmHWM after resetting it (`/proc/self/clear_refs` "5", proc(5)), so an earlier peak of the process (an
  in-process run after other work) does not count.
- On CUDA also the allocator's peak reservation (`max_memory_reserved`), and the driver's view, sampled at
  every optimizer-step end: device memory in use (`cudaMemGetInfo` total - free, what nvidia-smi shows as
  Memory-Usage, all processes on the device) and that minus what PyTorch has reserved (the CUDA context,
  NCCL and library workspaces: what the planner's "CUDA context and workspaces" item predicts).
- Per optimizer step: its wall time (from the previous step's end) and the padded token count and widest
  padded sequence of the micro-batches this rank ran, so that the prediction is made for the shape that ran.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRACKED_STEPS = 3  # CPU: tensor bytes are counted over these first steps; every run times the steps after them
_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field_name: str) -> int | None:
    """A `VmRSS:` / `VmHWM:` line of /proc/self/status (kB), in bytes; None where there is no procfs."""
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _ru_maxrss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux (getrusage(2))
    return int(kib if sys.platform == "darwin" else kib * 1024)


def current_rss_bytes() -> int:
    now = _status_bytes("VmRSS")
    return now if now is not None else _ru_maxrss_bytes()


def reset_peak_rss() -> bool:
    """Set VmHWM to the current RSS (Linux >= 4.0, proc(5) clear_refs); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    hwm = _status_bytes("VmHWM")
    return hwm if hwm is not None else _ru_maxrss_bytes()


@dataclass(kw_only=True)
class RankMeasurement:
    """One rank's figures, plain numbers (sent to rank 0 with all_gather_object)."""

    rank: int
    tensor_source: str  # how peak_tensor_bytes was measured
    peak_tensor_bytes: int | None = None
    tensor_steps: int = 0  # steps the tensor peak covers (from the first)
    rss_baseline_bytes: int = 0
    rss_peak_bytes: int = 0
    rss_peak_since_baseline: bool = True  # False: VmHWM could not be reset, the peak is the process's lifetime one
    cuda_reserved_peak_bytes: int | None = None
    cuda_device_used_bytes: int | None = None  # max over step ends of cudaMemGetInfo total - free
    cuda_non_torch_bytes: int | None = None  # max over step ends of (total - free) - memory_reserved
    step_times_s: list[float] = field(default_factory=list)
    step_padded_tokens: list[int] = field(default_factory=list)
    step_max_width: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryProbe:
    """Create it before the model is loaded (the RSS baseline); `start(model)` just before `trainer.train()`,
    `callback()` among the Trainer's callbacks, `stop()` after training (also on failure)."""

    def __init__(self, *, on_cuda: bool, rank: int, tracked_steps: int = TRACKED_STEPS) -> None:
        self.on_cuda = on_cuda
        self.tracked_steps = tracked_steps
        since = reset_peak_rss()
        self.m = RankMeasurement(rank=rank, rss_baseline_bytes=current_rss_bytes(), rss_peak_since_baseline=since,
                                 tensor_source="torch.cuda.max_memory_allocated" if on_cuda
                                 else "profiler.tracker.StorageTracker")
        self._tracker: Any = None
        self._hook: Any = None
        self._widths: list[tuple[int, int]] = []  # (rows, width) of each training forward since the last step end
        self._t_last = 0.0
        self._stopped = False

    # --- the tensor tracker (CPU) and the batch-shape hook ------------------------------------
    def start(self, model: Any) -> None:
        self._hook = model.register_forward_pre_hook(self._record_shape, with_kwargs=True)
        if self.on_cuda:
            return
        from profiler.tracker import StorageTracker

        self._tracker = StorageTracker()
        self._tracker.__enter__()
        # created before the mode was entered: the weights (and rotary / norm buffers)
        self._tracker.track_all(t for t in (*model.parameters(), *model.buffers()) if t is not None)

    def _record_shape(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return  # evaluation batches are not training steps
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = getattr(ids, "shape", None)
        if shape is not None and len(shape) == 2:
            self._widths.append((int(shape[0]), int(shape[1])))

    def _stop_tracker(self) -> None:
        if self._tracker is None:
            return
        tracker, self._tracker = self._tracker, None
        tracker.__exit__(None, None, None)
        self.m.peak_tensor_bytes = int(tracker.finish().total_bytes)
        self.m.tensor_steps = len(self.m.step_times_s)

    def stop(self) -> None:
        """End of training (idempotent): stop the tracker if the run had fewer steps than it tracks, read RSS."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_tracker()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        # The window's peak includes the baseline sample: VmRSS and VmHWM are sums of per-CPU counters read without
        # folding (mm/rss_stat, percpu_counter_read_positive since Linux 6.2), so VmHWM can read a few hundred KiB
        # below an earlier VmRSS. The max keeps peak >= baseline, as it is by definition.
        self.m.rss_peak_bytes = max(peak_rss_bytes(), current_rss_bytes(), self.m.rss_baseline_bytes)
        if self.on_cuda:
            import torch

            self.m.peak_tensor_bytes = int(torch.cuda.max_memory_allocated())
            self.m.cuda_reserved_peak_bytes = int(torch.cuda.max_memory_reserved())
            self.m.tensor_steps = len(self.m.step_times_s)

    # --- per step -----------------------------------------------------------------------------
    def step_begin_clock(self) -> None:
        self._t_last = time.perf_counter()

    def step_end(self) -> None:
        now = time.perf_counter()
        self.m.step_times_s.append(now - self._t_last)
        self._t_last = now
        self.m.step_padded_tokens.append(sum(rows * width for rows, width in self._widths))
        self.m.step_max_width.append(max((width for _, width in self._widths), default=0))
        self._widths = []
        if self.on_cuda:
            self._sample_cuda()
        elif len(self.m.step_times_s) >= self.tracked_steps:
            self._stop_tracker()

    def _sample_cuda(self) -> None:
        import torch

        from profiler.device_memory import device_memory_in_use

        used, non_torch = device_memory_in_use(torch.cuda)
        m = self.m
        m.cuda_device_used_bytes = max(used, m.cuda_device_used_bytes or 0)
        m.cuda_non_torch_bytes = max(non_torch, m.cuda_non_torch_bytes or 0)

    def callback(self) -> Any:
        """A TrainerCallback that feeds the probe (its step clock starts at on_train_begin)."""
        from transformers import TrainerCallback

        probe = self

        class MemoryProbeCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
                probe.step_begin_clock()

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                probe.step_end()

            def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
                probe.stop()

        return MemoryProbeCallback()


def gather(m: RankMeasurement) -> list[dict[str, Any]]:
    """Every rank's measurement, in rank order (a collective: every rank must call it)."""
    import torch.distributed as dist

    mine = m.as_dict()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out
