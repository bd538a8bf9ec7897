"""TrainConfig <-> plain dict (plan.json). Enums go out as their values; the model travels as its
config.json fields so a plan made from a local config stays loadable without that file."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from planner import strategy as st
from planner.errors import PlanError
from planner.gpus import Cluster, gpu_from_name
from planner.models import ModelSpec
from planner.rl.settings import is_online_rl
from planner.strategy import FLAT_FIELDS, ROLLOUT_FIELDS, TrainConfig

_ENUMS: dict[str, type[Enum]] = {
    "method": st.Method, "quant": st.Quant, "precision": st.Precision, "optimizer": st.Optimizer,
    "engine": st.Engine, "zero": st.ZeroStage, "fsdp": st.FsdpStrategy, "offload": st.Offload,
    "offload_device": st.OffloadDevice, "grad_ckpt": st.GradCkpt, "attn": st.Attn, "stage": st.Stage,
    "pp_schedule": st.PipeSchedule, "cross_entropy": st.CrossEntropy, "kernels": st.Kernels,
    "fsdp_version": st.FsdpVersion, "generation": st.Generation,
}


# switches added after plan.json's first release, written only when set: plans without them read as before
OMITTED_AT_DEFAULT: dict[str, Any] = {"transformers_version": "", "fused_adamw": False}


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rl = is_online_rl(cfg.stage)
    for name, value in cfg.flat().items():
        if name in ROLLOUT_FIELDS and not rl:  # plans of the other stages read as before these existed
            continue
        if name in OMITTED_AT_DEFAULT and value == OMITTED_AT_DEFAULT[name]:
            continue
        if name == "model":
            value = dataclasses.asdict(value)
            if value["rope_scaling"] is None:  # plans without RoPE scaling read as before it existed
                del value["rope_scaling"]
        elif name == "cluster":
            value = {"gpu": value.gpu.name, "nodes": value.nodes, "gpus_per_node": value.gpus_per_node}
        elif isinstance(value, Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    try:
        kwargs: dict[str, Any] = {}
        for name in FLAT_FIELDS:
            if name not in data:
                continue
            value = data[name]
            if name == "model":
                value = ModelSpec(**value)
            elif name == "cluster":
                value = Cluster(gpu=gpu_from_name(value["gpu"]), nodes=int(value["nodes"]),
                                gpus_per_node=int(value["gpus_per_node"]))
            elif name in _ENUMS:
                value = _ENUMS[name](value)
            elif name == "lora_targets":
                value = tuple(value)
            kwargs[name] = value
        if "model" not in kwargs or "cluster" not in kwargs:
            raise PlanError("plan lacks its 'model' or 'cluster'")
        return TrainConfig(**kwargs)
    except PlanError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise PlanError(f"not a valid ftplan configuration: {exc}") from None
