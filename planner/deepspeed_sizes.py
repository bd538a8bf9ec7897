"""DeepSpeed's size knobs, derived from the model the way the transformers integration resolves
its "auto" values (transformers/integrations/deepspeed.py, `HfTrainerDeepSpeedConfig.trainer_config_finalize`):
reduce_bucket_size = h*h, stage3_prefetch_bucket_size = 0.9*h*h,
stage3_param_persistence_threshold = 10*h. The memory model and the ds_config emitter share them.
"""

from __future__ import annotations

from planner.models import ModelSpec

# DeepSpeed's own defaults (deepspeed/runtime/zero/config.py), used where we keep them.
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
STAGE3_MAX_REUSE_DISTANCE = 1_000_000_000
SUB_GROUP_SIZE = 1_000_000_000
# overlap_comm "uses 4.5x the allgather_bucket_size and reduce_bucket_size values"
# (DeepSpeed docs, config-json.md, zero_optimization.overlap_comm).
OVERLAP_COMM_FACTOR = 4.5


def reduce_bucket_elements(m: ModelSpec) -> int:
    return m.hidden_size * m.hidden_size


def allgather_bucket_elements(m: ModelSpec) -> int:
    return m.hidden_size * m.hidden_size


def prefetch_bucket_elements(m: ModelSpec) -> int:
    return int(0.9 * m.hidden_size * m.hidden_size)


def param_persistence_threshold(m: ModelSpec) -> int:
    return 10 * m.hidden_size


# ZeRO-Infinity parameter offload swaps whole tensors through fixed pinned buffers and asserts
# `numel <= elements_per_buffer` (deepspeed/runtime/swap_tensor/partitioned_param_swapper.py);
# DeepSpeed's default buffer_size is 1e8 elements (runtime/zero/offload_config.py).
NVME_PARAM_BUFFER_COUNT = 5
_NVME_PARAM_BUFFER_DEFAULT = 100_000_000


def nvme_param_buffer_elements(m: ModelSpec) -> int:
    """Elements per NVMe swap buffer: DeepSpeed's default, or the largest tensor (the embedding) if bigger."""
    return max(_NVME_PARAM_BUFFER_DEFAULT, m.vocab_size * m.hidden_size)
