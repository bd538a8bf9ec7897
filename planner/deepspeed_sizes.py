"""DeepSpeed's size knobs, derived from the model the way the transformers integration resolves
its "auto" values (transformers/integrations/deepspeed.py, `HfTrainerDeepSpeedConfig.trainer_config_finalize`):
reduce_bucket_size = h*h, stage3_prefetch_bucket_size = 0.9*h*h,
stage3_param_persistence_threshold = 10*h. The memory model and the ds_config emitter share them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from planner.models import ModelSpec

# DeepSpeed's own defaults (deepspeed/runtime/zero/config.py), used where we keep them.
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
STAGE3_MAX_REUSE_DISTANCE = 1_000_000_000
SUB_GROUP_SIZE = 1_000_000_000
# ftplan's ds_config sets overlap_comm true (planner/configs/ds_config.py); LLaMA-Factory's and ms-swift's
# ZeRO-3 configs set it false.
OVERLAP_COMM = True

# A run whose ds_config sets its own sizes (a published run's, a user's file): `configured(...)` replaces the
# values below for the code inside the block. Keys: reduce_bucket, allgather_bucket, prefetch_bucket,
# persistence_threshold, overlap_comm, and the run's DeepSpeed release ("0.12.3": planner.zero3_init_allocations).
_CONFIGURED: ContextVar[dict[str, float] | None] = ContextVar("ds_sizes", default=None)
KEYS = ("reduce_bucket", "allgather_bucket", "prefetch_bucket", "persistence_threshold", "overlap_comm", "release")
# The DeepSpeed release ftplan pins (its ZeRO-3 construction is replayed as this release allocates).
RELEASE = "0.19.8"


@contextmanager
def configured(**sizes: float | str) -> Iterator[None]:
    unknown = set(sizes) - set(KEYS)
    if unknown:
        raise KeyError(f"unknown DeepSpeed size {sorted(unknown)}; known: {', '.join(KEYS)}")
    token = _CONFIGURED.set({**(_CONFIGURED.get() or {}), **sizes})
    try:
        yield
    finally:
        _CONFIGURED.reset(token)


def _configured() -> dict[str, float | str]:
    return _CONFIGURED.get() or {}


def configuration() -> tuple[tuple[str, float | str], ...]:
    """The sizes `configured` set for the code running now (empty outside a block): memos of what reads them key on
    it (planner.memory's strategy parts)."""
    return tuple(sorted(_configured().items()))


def release() -> str:
    return str(_configured().get("release", RELEASE))


def reduce_bucket_elements(m: ModelSpec) -> int:
    return int(_configured().get("reduce_bucket", m.hidden_size * m.hidden_size))


def allgather_bucket_elements(m: ModelSpec) -> int:
    return int(_configured().get("allgather_bucket", m.hidden_size * m.hidden_size))


def prefetch_bucket_elements(m: ModelSpec) -> int:
    return int(_configured().get("prefetch_bucket", int(0.9 * m.hidden_size * m.hidden_size)))


def param_persistence_threshold(m: ModelSpec) -> int:
    return int(_configured().get("persistence_threshold", 10 * m.hidden_size))


def overlap_comm() -> bool:
    return bool(_configured().get("overlap_comm", OVERLAP_COMM))


# ZeRO-Infinity parameter offload swaps whole tensors through fixed pinned buffers and asserts
# `numel <= elements_per_buffer` (deepspeed/runtime/swap_tensor/partitioned_param_swapper.py);
# DeepSpeed's default buffer_size is 1e8 elements (runtime/zero/offload_config.py).
NVME_PARAM_BUFFER_COUNT = 5
_NVME_PARAM_BUFFER_DEFAULT = 100_000_000


def nvme_param_buffer_elements(m: ModelSpec) -> int:
    """Elements per NVMe swap buffer: DeepSpeed's default, or the largest tensor (the embedding) if bigger."""
    return max(_NVME_PARAM_BUFFER_DEFAULT, m.vocab_size * m.hidden_size)
