"""What a value from outside may be before ftplan uses it: types, ranges, finiteness, safe names.

The bounds are the domain's, kept as data (`MODEL_BOUNDS`, `CONFIG_BOUNDS`): far beyond any real fine-tuning
job, tight enough that no arithmetic overflows and no plan allocates without end. For scale: the largest
open models have 126 layers (Llama-3.1-405B), hidden size 16,384, 128 attention heads, a 262,144-token
vocabulary (Gemma 3), 256 routed experts (DeepSeek-V3) and 10M positions (Llama 4 Scout); the largest
published training runs use on the order of 10^5 GPUs.

`check_model_spec` is the check every model reader ends with (the catalog, a config.json, a model built on
the meta device, a plan.json's model); `check_config` the one every TrainConfig passes, from the CLI,
the server or a plan.json. Both raise PlanError with one line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from planner.errors import PlanError
from planner.rope_text import parse_rope_scaling

# model shapes: (lowest, highest) allowed, inclusive
MODEL_BOUNDS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 2**24),
    "hidden_size": (1, 2**20),
    "intermediate_size": (1, 2**22),
    "num_layers": (1, 4096),  # 1,000-layer research models exist (DeepNet, Wang et al. 2022)
    "num_heads": (1, 2**14),
    "num_kv_heads": (1, 2**14),
    "head_dim": (1, 2**14),
    "num_experts": (1, 2**14),
    "experts_per_token": (1, 2**14),
    "max_seq_len": (1, 2**30),  # positions, after a RoPE factor
    "final_norm_params": (-1, 2**40),  # -1: one norm of width h (a model read from transformers gives its count)
}
# a layer record of a model read from transformers (planner/model_layers.py): shapes within the model's bounds
LAYER_BOUNDS: dict[str, tuple[int, int]] = {
    "count": (1, MODEL_BOUNDS["num_layers"][1]), "first": (0, MODEL_BOUNDS["num_layers"][1] - 1),
    "in_features": (1, 2**24), "out_features": (1, 2**24), "copies": (1, MODEL_BOUNDS["num_experts"][1]),
    "width": (1, 2**24), "heads": (1, 2**14), "kv_heads": (1, 2**14), "qk_head_dim": (1, 2**14),
    "v_head_dim": (1, 2**14), "window": (0, 2**30), "intermediate": (0, 2**22), "experts": (0, 2**14),
    "top_k": (0, 2**14), "shared_intermediate": (0, 2**22), "elements": (1, 2**40), "called_modules": (0, 2**16),
}
ATTN_KERNELS = ("eager", "sdpa", "flash")
# an integer field of a spec this table does not name (a reader may add fields): non-negative, bounded
DEFAULT_INT_BOUNDS = (0, 2**40)

# a TrainConfig's integer fields, flat names as in plan.json
CONFIG_BOUNDS: dict[str, tuple[int, int]] = {
    "lora_r": (1, 2**16),
    "ep": (1, MODEL_BOUNDS["num_experts"][1]),  # expert parallelism: ranks sharing a MoE layer's experts
    "lora_alpha": (0, 2**20),
    "freeze_layers": (0, MODEL_BOUNDS["num_layers"][1]),
    "tp": (1, 2**14),
    "pp": (1, MODEL_BOUNDS["num_layers"][1]),
    "virtual_stages": (1, MODEL_BOUNDS["num_layers"][1]),
    "micro_batch": (1, 2**20),
    "grad_accum": (1, 2**24),
    "seq_len": (1, MODEL_BOUNDS["max_seq_len"][1]),
    # online RL's rollout (planner.rl.settings.Rollout)
    "num_generations": (1, 2**16),
    "completion_len": (1, MODEL_BOUNDS["max_seq_len"][1]),
    "completion_len_mean": (1, MODEL_BOUNDS["max_seq_len"][1]),
    "vllm_server_gpus": (0, 2**20),
    "vllm_tp": (1, 2**14),
    "generation_steps": (1, 2**16),
    "num_iterations": (1, 2**16),
}
# a TrainConfig's float fields: (lowest, highest, highest excluded)
CONFIG_FLOAT_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "lora_dropout": (0.0, 1.0, True),  # a dropout probability
    "kl_beta": (0.0, 1e6, False),
    "vllm_memory": (0.0, 1.0, False),  # vllm_gpu_memory_utilization, a share of the GPU
}
MAX_GPUS = 2**20  # GPUs in one cluster (nodes x GPUs per node)
MAX_GPUS_PER_NODE = 2**10

MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 4096
# a name that becomes part of a file name, a path or a line of a script: no control characters, no path
# separators, not `.` or `..`
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODEL_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def one_line(text: str) -> str:
    """`text` with control characters (newlines included) written as escapes: safe on one line of a terminal,
    a log or an HTTP answer."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def slug(name: str) -> str:
    """A file- and path-safe form of a name: runs of characters other than letters, digits, `.`, `_` and `-`
    become `-`, leading dots and dashes go (so never `.`, `..` or an option), at most 100 characters."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip(".-")[:100]
    return out or "model"


# ---------------------------------------------------------------- values

def check_int(value: Any, name: str, bounds: tuple[int, int], *, where: str = "") -> int:
    lo, hi = bounds
    if not isinstance(value, int) or isinstance(value, bool):
        raise PlanError(f"{where}{name} must be an integer, got {_show(value)}")
    if not lo <= value <= hi:
        raise PlanError(f"{where}{name} must lie in {lo:,}..{hi:,}, got {_show(value)}")
    return value


def check_float(value: Any, name: str, lo: float, hi: float, *, where: str = "", hi_open: bool = False) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise PlanError(f"{where}{name} must be a number, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value) or value < lo or value > hi or (hi_open and value == hi):
        raise PlanError(f"{where}{name} must lie in [{lo:g}, {hi:g}{')' if hi_open else ']'}, got {_show(value)}")
    return value


def check_bool(value: Any, name: str, *, where: str = "") -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{where}{name} must be true or false, got {_show(value)}")
    return value


def check_text(value: Any, name: str, *, where: str = "", max_chars: int = MAX_TEXT_CHARS,
               pattern: re.Pattern[str] | None = None, empty: bool = True) -> str:
    """A string without control characters (and matching `pattern` when given)."""
    if not isinstance(value, str):
        raise PlanError(f"{where}{name} must be a string, got {_show(value)}")
    if len(value) > max_chars:
        raise PlanError(f"{where}{name} is longer than {max_chars:,} characters")
    if _CONTROL.search(value):
        raise PlanError(f"{where}{name} holds a control character: {_show(value)}")
    if not value and not empty:
        raise PlanError(f"{where}{name} is empty")
    if pattern is not None and value and not pattern.fullmatch(value):
        raise PlanError(f"{where}{name} {_show(value)} has characters other than letters, digits, '_', '.', '-'")
    return value


def check_name(value: Any, name: str, *, where: str = "") -> str:
    """A name that may become a file name or a path component: one component, printable."""
    text = check_text(value, name, where=where, max_chars=MAX_NAME_CHARS, empty=False)
    if "/" in text or "\\" in text or text in (".", ".."):
        raise PlanError(f"{where}{name} {_show(text)} must be a plain name, not a path")
    return text


def _show(value: Any) -> str:
    text = repr(value)
    return one_line(text if len(text) <= 60 else text[:57] + "...")


def check_finite_tree(value: Any, *, where: str, depth: int = 0) -> None:
    """No NaN or infinity anywhere in a parsed JSON value (lists and objects walked, 64 levels at most)."""
    if depth > 64:
        raise PlanError(f"{where} nests deeper than 64 levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise PlanError(f"{where} holds {value}, not a finite number")
    if isinstance(value, Mapping):
        for item in value.values():
            check_finite_tree(item, where=where, depth=depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            check_finite_tree(item, where=where, depth=depth + 1)


# ---------------------------------------------------------------- a dataclass from a JSON object

def _kinds(annotation: Any) -> tuple[type, ...]:
    """The runtime types a field's annotation allows (`int`, `str | None` -> (str, NoneType), ...)."""
    if isinstance(annotation, str):  # postponed annotations: `from __future__ import annotations`
        return ()
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(k for arg in typing.get_args(annotation) for k in _kinds(arg))
    if origin is not None:
        return (origin,)
    return (annotation,)


@lru_cache(maxsize=64)
def field_kinds(cls: type) -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(cls)
    return {f.name: _kinds(hints[f.name]) for f in dataclasses.fields(cls)}


def check_fields(cls: type, data: Any, *, where: str, bounds: Mapping[str, tuple[int, int]],
                 texts: Mapping[str, Any] = {}) -> dict[str, Any]:
    """A JSON object as keyword arguments of dataclass `cls`: unknown keys refused, every value of its field's
    type (int, float, bool, str, None, tuple of those), integers within `bounds` (DEFAULT_INT_BOUNDS for those
    it does not name), floats finite, strings through `texts[field]` (a checker) or `check_text`."""
    if not isinstance(data, Mapping):
        raise PlanError(f"{where} must be a JSON object, got {_show(data)}")
    kinds = field_kinds(cls)
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        raise PlanError(f"{where} has no field {_show(unknown[0])}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        allowed = kinds[key]
        label = f"'{key}'"
        if value is None and type(None) in allowed:
            out[key] = None
        elif bool in allowed:
            out[key] = check_bool(value, label, where=where)
        elif int in allowed:
            out[key] = check_int(value, label, bounds.get(key, DEFAULT_INT_BOUNDS), where=where)
        elif float in allowed:
            out[key] = check_float(value, label, -1e18, 1e18, where=where)
        elif str in allowed:
            checker = texts.get(key)
            out[key] = checker(value, label, where=where) if checker else check_text(value, label, where=where)
        elif tuple in allowed:
            if not isinstance(value, list | tuple) or len(value) > 4096:
                raise PlanError(f"{where}{label} must be a list, got {_show(value)}")
            check_finite_tree(value, where=f"{where}{label}")
            if any(not isinstance(v, int | float | str | bool | list) for v in value):
                raise PlanError(f"{where}{label} holds a value of the wrong type")
            out[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            raise PlanError(f"{where}{label} cannot be read from JSON")
    return out


# ---------------------------------------------------------------- models and configurations

def _check_rope(value: Any, name: str, *, where: str = "") -> str:
    text = check_text(value, name, where=where, max_chars=64)
    try:
        parse_rope_scaling(text)
    except PlanError as exc:
        raise PlanError(f"{where}{name}: {exc}") from None
    return text


def _check_kernels(value: Any, name: str, *, where: str = "") -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or any(v not in ATTN_KERNELS for v in value):
        raise PlanError(f"{where}{name} must list attention kernels among {', '.join(ATTN_KERNELS)}, "
                        f"got {_show(value)}")
    return tuple(value)


_HEX = re.compile(r"[0-9a-f]{1,64}")
MODEL_TEXTS: dict[str, Any] = {
    "name": check_name,
    "causal_lm_class": lambda v, n, where="": check_text(v, n, where=where, max_chars=128, pattern=_IDENTIFIER),
    "config_sha256": lambda v, n, where="": check_text(v, n, where=where, max_chars=64, pattern=_HEX),
    "model_type": lambda v, n, where="": check_text(v, n, where=where, max_chars=64, pattern=_MODEL_TYPE, empty=False),
    "decoder_layer_class": lambda v, n, where="": check_text(v, n, where=where, max_chars=128, pattern=_IDENTIFIER,
                                                             empty=False),
    "rope_scaling": _check_rope,
}


def check_model_spec(spec: Any) -> Any:
    """A finished ModelSpec (from any reader) checked field by field and for the shapes to add up; returned."""
    where = f"model '{one_line(str(getattr(spec, 'name', '?')))[:MAX_NAME_CHARS]}': "
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    head_dim = values.get("head_dim")
    if isinstance(head_dim, int) and head_dim < 1:  # hidden_size // num_attention_heads when the config has none
        raise PlanError(f"{where}head_dim is {head_dim}: hidden_size {values.get('hidden_size')} is smaller than "
                        f"its {values.get('num_heads')} attention heads")
    kinds = values.pop("layer_kinds", ())
    kernels = values.pop("attn_kernels", ATTN_KERNELS)
    check_fields(type(spec), values, where=where, bounds=MODEL_BOUNDS, texts=MODEL_TEXTS)
    _check_kernels(kernels, "'attn_kernels'", where=where)
    if kinds:
        _checked_kinds(spec)
        if sum(k.count for k in kinds) != spec.num_layers:
            raise PlanError(f"{where}its layer kinds hold {sum(k.count for k in kinds)} layers, not {spec.num_layers}")
    if spec.num_kv_heads > spec.num_heads or spec.num_heads % spec.num_kv_heads:
        raise PlanError(f"{where}{spec.num_kv_heads} key/value heads do not divide {spec.num_heads} attention heads")
    if spec.experts_per_token > spec.num_experts:
        raise PlanError(f"{where}{spec.experts_per_token} experts per token exceed the {spec.num_experts} experts")
    return spec


@lru_cache(maxsize=256)  # a spec's hash is computed once (planner.models); the search checks the same model often
def _checked_kinds(spec: Any) -> None:
    from planner.model_layers import layer_kind_to_dict

    check_layer_kinds([layer_kind_to_dict(k) for k in spec.layer_kinds],
                      where=f"model '{one_line(str(spec.name))[:MAX_NAME_CHARS]}': ")


def check_layer_kinds(value: Any, *, where: str) -> tuple[Any, ...]:
    """A model's layer records from JSON (plan.json, the spec cache, the catalog's specs; planner/model_layers.py):
    every record and nested shape of its type and within the model's bounds, the saved-bytes tables finite."""
    from planner.model_layers import AttentionShape, LayerKind, LinearShape, MlpShape, NormShape, ParamShape

    if not isinstance(value, list | tuple) or not value or len(value) > MODEL_BOUNDS["num_layers"][1]:
        raise PlanError(f"{where}'layer_kinds' must be a non-empty list of layer records, got {_show(value)}")
    out = []
    for i, raw in enumerate(value):
        at = f"{where}layer kind {i}: "
        if not isinstance(raw, Mapping):
            raise PlanError(f"{at}must be a JSON object, got {_show(raw)}")
        raw = dict(raw)
        nested = {key: raw.pop(key, None) for key in ("linears", "norms", "other_params", "attention", "mlp", "saved",
                                                      "stream_bytes")}
        for key in ("linears", "norms", "other_params"):
            if not isinstance(nested[key] or [], list | tuple) or len(nested[key] or []) > 4096:
                raise PlanError(f"{at}'{key}' must be a list, got {_show(nested[key])}")
        linears = tuple(LinearShape(**check_fields(LinearShape, lin, where=at, bounds=LAYER_BOUNDS))
                        for lin in nested["linears"] or ())
        if any(not 0.0 < lin.layer_share <= 1.0 or not 0.0 <= lin.active <= lin.copies for lin in linears):
            raise PlanError(f"{at}a linear's layer share or active experts lie outside their range")
        if not linears:
            raise PlanError(f"{at}has no linears")
        norms = tuple(NormShape(**check_fields(NormShape, n, where=at, bounds=LAYER_BOUNDS))
                      for n in nested["norms"] or ())
        others = tuple(ParamShape(**check_fields(ParamShape, p, where=at, bounds=LAYER_BOUNDS))
                       for p in nested["other_params"] or ())
        attention = AttentionShape(**check_fields(AttentionShape, nested["attention"], where=at, bounds=LAYER_BOUNDS))
        mlp = MlpShape(**check_fields(MlpShape, nested["mlp"], where=at, bounds=LAYER_BOUNDS))
        if attention.kv_heads > attention.heads or attention.heads % attention.kv_heads:
            raise PlanError(f"{at}{attention.kv_heads} key/value heads do not divide {attention.heads} heads")
        saved = _saved_table(nested["saved"] or {}, where=at)
        stream = nested["stream_bytes"] or {}
        if not isinstance(stream, Mapping) or len(stream) > 16:
            raise PlanError(f"{at}'stream_bytes' must be an object, got {_show(stream)}")
        stream = {check_text(k, "a regime", where=at, max_chars=16, pattern=_IDENTIFIER, empty=False):
                  check_int(v, "'stream_bytes'", (0, 64), where=at) for k, v in stream.items()}
        rest = check_fields(LayerKind, raw, where=at, bounds=LAYER_BOUNDS)
        try:
            out.append(LayerKind(**rest, linears=linears, norms=norms, other_params=others, attention=attention,
                                 mlp=mlp, saved=saved, stream_bytes=stream))
        except TypeError as exc:  # a required field missing
            raise PlanError(f"{at}{exc}") from None
    return tuple(out)


def _saved_table(value: Any, *, where: str) -> dict[str, dict[str, list[float]]]:
    """regime -> mode -> the four saved-bytes coefficients (planner/model_layers.py Saved), finite."""
    if not isinstance(value, Mapping) or len(value) > 16:
        raise PlanError(f"{where}'saved' must be an object, got {_show(value)}")
    out: dict[str, dict[str, list[float]]] = {}
    for regime, modes in value.items():
        check_text(regime, "a regime", where=where, max_chars=16, pattern=_IDENTIFIER, empty=False)
        if not isinstance(modes, Mapping) or len(modes) > 4096:
            raise PlanError(f"{where}'saved' of {_show(regime)} must be an object")
        out[regime] = {}
        for mode, coeffs in modes.items():
            check_text(mode, "a saved-bytes mode", where=where, max_chars=MAX_TEXT_CHARS)
            if not isinstance(coeffs, list | tuple) or len(coeffs) != 4:
                raise PlanError(f"{where}saved bytes of {_show(mode)} must be 4 numbers, got {_show(coeffs)}")
            out[regime][mode] = [check_float(c, "a saved-bytes coefficient", -1e18, 1e18, where=where)
                                 for c in coeffs]
    return out


def check_lora_targets(targets: Any, *, where: str = "") -> tuple[str, ...]:
    if not isinstance(targets, list | tuple) or not targets or len(targets) > 256:
        raise PlanError(f"{where}'lora_targets' must be a list of module names, got {_show(targets)}")
    for t in targets:
        check_text(t, "a LoRA target", where=where, max_chars=128, pattern=_MODULE_NAME, empty=False)
    return tuple(targets)


def check_cluster_size(nodes: int, gpus_per_node: int, *, where: str = "") -> None:
    check_int(nodes, "nodes", (1, MAX_GPUS), where=where)
    check_int(gpus_per_node, "GPUs per node", (1, MAX_GPUS_PER_NODE), where=where)
    if nodes * gpus_per_node > MAX_GPUS:
        raise PlanError(f"{where}{nodes} x {gpus_per_node} GPUs exceed the {MAX_GPUS:,} a plan may span")


def check_config(cfg: Any) -> Any:
    """A TrainConfig's values within the domain's bounds (types are the dataclasses'); returned."""
    check_model_spec(cfg.model)
    check_cluster_size(cfg.cluster.nodes, cfg.cluster.gpus_per_node)
    for name, bounds in CONFIG_BOUNDS.items():
        if getattr(cfg, name, None) is not None:
            check_int(getattr(cfg, name), f"--{name.replace('_', '-')}", bounds)
    for name, (lo, hi, hi_open) in CONFIG_FLOAT_BOUNDS.items():
        if getattr(cfg, name, None) is not None:
            check_float(getattr(cfg, name), f"--{name.replace('_', '-')}", lo, hi, hi_open=hi_open)
    check_lora_targets(cfg.lora_targets)
    if getattr(cfg, "reward_model", None):
        check_text(cfg.reward_model, "--reward-model", empty=False)
    return cfg
