"""One module per engine, each owning its model-state bytes, buffers, data-parallel communication,
validity rules and search rows: `ddp` (torch DDP), `zero` (DeepSpeed ZeRO-0..3 with offload), `fsdp`
(FSDP's four sharding strategies with CPU offload); `parallel` holds tensor and pipeline parallelism.
planner.memory and planner.timing add their parts up through `of(cfg)`.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from planner.choices import Engine
from planner.engines import ddp, fsdp, zero  # noqa: I001  (fsdp reuses ddp's parts)

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

MODULES: dict[Engine, ModuleType] = {Engine.ddp: ddp, Engine.deepspeed: zero, Engine.fsdp: fsdp}
# every engine row the search enumerates: (engine, zero stage, FSDP strategy, offload, offload device)
ROWS = ddp.ROWS + zero.ROWS + fsdp.ROWS


def of(cfg: TrainConfig) -> ModuleType:
    """The module of the configuration's engine."""
    return MODULES[cfg.engine]

