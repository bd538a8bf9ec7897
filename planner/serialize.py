"""TrainConfig <-> plain dict (plan.json). Enums go out as their values; the model travels as its
config.json fields so a plan made from a local config stays loadable without that file. Reading back is
the plan.json schema: each field of its type, within the domain's bounds (planner/input_checks.py)."""

from __future__ import annotations

from enum import Enum
from typing import Any

from planner import strategy as st
from planner.bnb_versions import parse_bnb_version
from planner.errors import PlanError
from planner.gpus import Cluster, gpu_from_name
from planner.input_checks import (
    CONFIG_BOUNDS,
    CONFIG_FLOAT_BOUNDS,
    DEFAULT_INT_BOUNDS,
    MODEL_BOUNDS,
    MODEL_TEXTS,
    check_bool,
    check_cluster_size,
    check_config,
    check_fields,
    check_float,
    check_int,
    check_layer_kinds,
    check_lora_targets,
    check_model_spec,
    check_text,
    field_kinds,
    one_line,
)
from planner.model_layers import LayerKind
from planner.models import ModelSpec, model_to_dict
from planner.rl.settings import Rollout, is_online_rl
from planner.strategy import FLAT_FIELDS, ROLLOUT_FIELDS, TrainConfig
from planner.transformers_versions import parse_transformers_version

_ENUMS: dict[str, type[Enum]] = {
    "method": st.Method, "quant": st.Quant, "precision": st.Precision, "optimizer": st.Optimizer,
    "engine": st.Engine, "zero": st.ZeroStage, "fsdp": st.FsdpStrategy, "offload": st.Offload,
    "offload_device": st.OffloadDevice, "grad_ckpt": st.GradCkpt, "attn": st.Attn, "stage": st.Stage,
    "pp_schedule": st.PipeSchedule, "cross_entropy": st.CrossEntropy, "kernels": st.Kernels,
    "fsdp_version": st.FsdpVersion, "generation": st.Generation,
}


# switches added after plan.json's first release, written only when set: plans without them read as before
OMITTED_AT_DEFAULT: dict[str, Any] = {"transformers_version": "", "fused_adamw": False, "keeps_output": False,
                                      "sync_each_batch": False,
                                      "doc_len": None, "collator_mask": False, "completion_len_mean": None,
                                      "litgpt": False}


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rl = is_online_rl(cfg.stage)
    for name, value in cfg.flat().items():
        if name in ROLLOUT_FIELDS and not rl:  # plans of the other stages read as before these existed
            continue
        if name in OMITTED_AT_DEFAULT and value == OMITTED_AT_DEFAULT[name]:
            continue
        if name == "model":
            # without the defaults of the fields a model read from transformers fills (planner.models); plans
            # without RoPE scaling read as before it existed
            value = model_to_dict(value)
        elif name == "cluster":
            value = {"gpu": value.gpu.name, "nodes": value.nodes, "gpus_per_node": value.gpus_per_node}
        elif isinstance(value, Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    if cfg.ep > 1:  # expert parallelism (planner/moe.py): absent from plans without it
        out["ep"] = cfg.ep
    return out


# the parts' scalar fields by flat name: their runtime types (int, float, bool, str, tuple) from the dataclasses
_PART_KINDS: dict[str, tuple[type, ...]] = {
    name: kinds for part in (st.Adapter, st.ParallelLayout, st.Batch, st.EngineChoice, st.Switches, Rollout)
    for name, kinds in field_kinds(part).items()}
_WHERE = "not a valid ftplan configuration: "


def _enum(name: str, value: Any) -> Enum:
    cls = _ENUMS[name]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PlanError(f"{_WHERE}'{name}' must be one of {', '.join(str(e.value) for e in cls)}, got {value!r}")
    try:
        return cls(value)
    except ValueError:
        raise PlanError(f"{_WHERE}'{name}' must be one of {', '.join(str(e.value) for e in cls)}, "
                        f"got {one_line(repr(value))[:60]}") from None


def _scalar(name: str, value: Any) -> Any:
    """One flat field of plan.json's config, checked against its type and the domain's bounds."""
    if name in _ENUMS:
        return _enum(name, value)
    kinds = _PART_KINDS[name]
    if value is None and type(None) in kinds:  # an optional field left unset (completion_len_mean, doc_len)
        return None
    if bool in kinds:
        return check_bool(value, f"'{name}'", where=_WHERE)
    if int in kinds:
        return check_int(value, f"'{name}'", CONFIG_BOUNDS.get(name, DEFAULT_INT_BOUNDS), where=_WHERE)
    if float in kinds:
        lo, hi, hi_open = CONFIG_FLOAT_BOUNDS[name]
        return check_float(value, f"'{name}'", lo, hi, where=_WHERE, hi_open=hi_open)
    if name == "lora_targets":
        return check_lora_targets(value, where=_WHERE)
    if name == "bnb_version":
        return parse_bnb_version(check_text(value, f"'{name}'", where=_WHERE, max_chars=32))
    if name == "transformers_version":
        return parse_transformers_version(check_text(value, f"'{name}'", where=_WHERE, max_chars=32))
    if name == "reward_model":  # "" (rule rewards), a catalog name or a config.json / model directory
        return check_text(value, f"'{name}'", where=_WHERE)
    raise PlanError(f"{_WHERE}'{name}' cannot be read")  # a new field without a rule here: refuse, do not guess


def _model(value: Any) -> ModelSpec:
    where = "plan model: "
    kinds: tuple[LayerKind, ...] = ()
    if isinstance(value, dict) and "layer_kinds" in value:  # a model read from transformers: its layer records
        value = dict(value)
        kinds = check_layer_kinds(value.pop("layer_kinds"), where=where)
    kwargs = check_fields(ModelSpec, value, where=where, bounds=MODEL_BOUNDS, texts=MODEL_TEXTS)
    try:
        spec = ModelSpec(**kwargs, layer_kinds=kinds)
    except TypeError as exc:  # a required field missing
        raise PlanError(f"{where}{exc}") from None
    return check_model_spec(spec)


def _cluster(value: Any) -> Cluster:
    where = "plan cluster: "
    if not isinstance(value, dict) or set(value) != {"gpu", "nodes", "gpus_per_node"}:
        raise PlanError(f"{where}must be an object with 'gpu', 'nodes' and 'gpus_per_node'")
    gpu = gpu_from_name(check_text(value["gpu"], "'gpu'", where=where, max_chars=64, empty=False))
    check_cluster_size(value["nodes"], value["gpus_per_node"], where=where)
    return Cluster(gpu=gpu, nodes=value["nodes"], gpus_per_node=value["gpus_per_node"])


def config_from_dict(data: Any) -> TrainConfig:
    """plan.json's "config" -> a TrainConfig: every field of its type and within the domain's bounds
    (planner/input_checks.py), unknown fields refused, the model checked as every model is."""
    if not isinstance(data, dict):
        raise PlanError(f"{_WHERE}must be a JSON object")
    unknown = sorted(k for k in data if k not in FLAT_FIELDS and k != "ep")
    if unknown:
        raise PlanError(f"{_WHERE}has no field {one_line(repr(unknown[0]))[:60]}")
    if "model" not in data or "cluster" not in data:
        raise PlanError("plan lacks its 'model' or 'cluster'")
    kwargs: dict[str, Any] = {"model": _model(data["model"]), "cluster": _cluster(data["cluster"])}
    for name in FLAT_FIELDS:
        if name in data and name not in kwargs:
            kwargs[name] = _scalar(name, data[name])
    if "ep" in data:  # expert parallelism, written only above 1 (config_to_dict)
        kwargs["ep"] = check_int(data["ep"], "'ep'", CONFIG_BOUNDS["ep"], where=_WHERE)
    try:
        cfg = TrainConfig(**kwargs)
    except PlanError:
        raise
    except (TypeError, ValueError) as exc:
        raise PlanError(f"not a valid ftplan configuration: {exc}") from None
    return check_config(cfg)
