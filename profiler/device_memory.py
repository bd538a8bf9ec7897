"""The third memory reading of a GPU run: what the device holds, beside PyTorch's own two.

`torch.cuda.max_memory_allocated` counts the tensors, `max_memory_reserved` the caching allocator's segments; the
driver's count (`torch.cuda.mem_get_info`, cudaMemGetInfo: total minus free, what nvidia-smi shows as memory in use,
every process on the device counted) adds what lies outside the allocator: the CUDA context, cuBLAS and NCCL
workspaces (planner/memory.py `MemoryBreakdown.device`). Read by profiler.worker after each measured step and by
runner.memory_probe after each training step.
"""

from __future__ import annotations

from typing import Any


def device_memory_in_use(cuda: Any) -> tuple[int, int]:
    """(bytes in use on the current device, of which outside PyTorch's caching allocator), from `cuda` =
    torch.cuda: the driver's total minus free, and that minus `memory_reserved()`."""
    free, total = cuda.mem_get_info()
    used = int(total - free)
    return used, used - int(cuda.memory_reserved())
