"""Which engine / ZeRO stage / offload combinations exist: the rule `strategy.EngineChoice` checks itself with.
Apart from planner/engines/ (each engine's memory, communication, validity and search rows) because those
modules read a whole TrainConfig, while these rules read only the choices: strategy.py builds on this module
and planner/engines/ on strategy.py, so no import runs in a circle."""

from __future__ import annotations

from planner.choices import Engine, Offload, OffloadDevice, ZeroStage


def ddp_problem(zero: ZeroStage, offload: Offload, device: OffloadDevice) -> str | None:
    if zero is not ZeroStage.DISABLED:
        return "--zero needs DeepSpeed"
    if offload is not Offload.none:
        return "offload needs DeepSpeed ZeRO or FSDP"
    return None


def zero_problem(zero: ZeroStage, offload: Offload, device: OffloadDevice) -> str | None:
    if offload is not Offload.none and zero is ZeroStage.DISABLED:
        return "offload needs ZeRO stage 1, 2 or 3"
    if offload is Offload.all and zero is not ZeroStage.WEIGHTS:
        return "parameter offload needs ZeRO-3 (or FSDP)"
    if device is OffloadDevice.nvme and offload is not Offload.none and zero is not ZeroStage.WEIGHTS:
        return "NVMe offload (ZeRO-Infinity) needs ZeRO-3"
    return None


def fsdp_problem(zero: ZeroStage, offload: Offload, device: OffloadDevice) -> str | None:
    if zero is not ZeroStage.DISABLED:
        return "FSDP and ZeRO are exclusive"
    if offload is Offload.optimizer:
        return "FSDP offloads parameters, gradients and optimizer together: use --offload all"
    if device is OffloadDevice.nvme and offload is not Offload.none:
        return "FSDP offloads to CPU only; NVMe offload needs DeepSpeed ZeRO-3"
    return None


_RULES = {Engine.ddp: ddp_problem, Engine.deepspeed: zero_problem, Engine.fsdp: fsdp_problem}


def combination_problem(engine: Engine, zero_stage: ZeroStage, offload: Offload, device: OffloadDevice) -> str | None:
    """Why the engine cannot take this ZeRO stage and offload (None: it can)."""
    if offload is Offload.none and device is OffloadDevice.nvme:
        return "--offload-device nvme needs --offload optimizer or all"
    return _RULES[engine](zero_stage, offload, device)
