"""The third memory reading (profiler/device_memory.py): the driver's count of the device's memory in use, and the part
of it outside PyTorch's caching allocator, from torch.cuda's two calls (a stand-in answers them here)."""

from __future__ import annotations

from profiler.device_memory import device_memory_in_use

GIB = 2**30


class _Cuda:
    """torch.cuda as the reading calls it: 60 of 80 GiB free, 19 GiB reserved by the caching allocator."""

    @staticmethod
    def mem_get_info() -> tuple[int, int]:
        return 60 * GIB, 80 * GIB

    @staticmethod
    def memory_reserved() -> int:
        return 19 * GIB


def test_the_device_reading_is_the_drivers_count_and_what_lies_outside_the_allocator() -> None:
    assert device_memory_in_use(_Cuda) == (20 * GIB, GIB)
