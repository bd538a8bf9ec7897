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
