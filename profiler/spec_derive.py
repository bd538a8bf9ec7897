"""Derive a model spec from a config.json by reading the transformers model itself, and write it as JSON.

    python -m profiler.spec_derive --config path/config.json --name NAME --out spec.json
    python -m profiler.spec_derive --catalog [NAME ...]    # rewrite planner/model_specs/*.json

The planner runs the first form in a subprocess the first time it plans a config.json whose family has no
hand-written rule (planner/spec_cache.py); the catalog's specs are written by the second. The structure comes from
profiler/spec_structure.py (meta device), what each layer saves from profiler/spec_activations.py (fake tensors).
Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from planner.errors import PlanError

SPEC_FORMAT = 1


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__}


def reduce_to(model: Any, config: Any, indices: list[int]) -> Any:
    """The model with only the decoder layers at `indices` (their modules, indices and layer types kept)."""
    from torch import nn

    from profiler.spec_structure import decoder_layers

    layers = decoder_layers(model, config)
    parent_name, _, attr = next(n for n, m in model.named_modules() if m is layers).rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, attr, nn.ModuleList([layers[i] for i in indices]))
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in indices]
    config.num_hidden_layers = len(indices)
    return model


def _modes(groups: dict[tuple[str, ...], None], lora_dropout_ok: bool) -> list[Any]:
    from profiler.spec_activations import LORA_DROPOUT, Mode

    modes = [Mode("frozen"), Mode("full", weights=True), Mode("frozen_eager", attn="eager"),
             Mode("full_eager", weights=True, attn="eager"), Mode("lora_all", targets=("all-linear",))]
    if lora_dropout_ok:
        modes.append(Mode("lora_all_dropout", targets=("all-linear",), dropout=LORA_DROPOUT))
    return modes + _group_modes(groups)


def _group_modes(groups: dict[tuple[str, ...], None]) -> list[Any]:
    """LoRA on each group of linears that read one tensor, with and without dropout, and on its first linear alone."""
    from profiler.spec_activations import LORA_DROPOUT, Mode

    modes = []
    for group in groups:
        key = ",".join(group)
        modes.append(Mode(f"lora:{key}", targets=group))
        modes.append(Mode(f"lora:{key}:dropout", targets=group, dropout=LORA_DROPOUT))
        if len(group) > 1:
            modes.append(Mode(f"lora1:{key}", targets=group[:1]))
            modes.append(Mode(f"lora1:{key}:dropout", targets=group[:1], dropout=LORA_DROPOUT))
    return modes


def _without_converted(model_type: str, kinds: list[dict[str, Any]],
                       groups: dict[tuple[str, ...], None]) -> dict[tuple[str, ...], None]:
    """The groups less the nn.Linear whose leaf names peft's MoE conversion moves to the fused expert tensors
    (DeepSeek-V3's dense mlp.gate_proj, its shared experts' gate_proj, up_proj, down_proj): peft cannot adapt them
    by name, and a mode naming them would measure the routed experts under their label. Their `group` goes; each
    other member's becomes the rest."""
    from planner.peft_moe import convertible_names

    names = set(convertible_names(model_type))
    if not names:
        return groups

    def kept(paths: Any) -> tuple[str, ...]:
        return tuple(p for p in paths if p.rsplit(".", 1)[-1] not in names)

    for kind in kinds:
        for lin in kind["linears"]:
            if not lin.get("group"):
                continue
            rest = kept(lin["group"].split(","))
            if lin["path"] in rest:
                lin["group"] = ",".join(rest)
            else:
                del lin["group"]
    return {kept(g): None for g in groups if kept(g)}


def _converted_modes(model_type: str, kinds: list[dict[str, Any]]) -> list[Any]:
    """LoRA on each tensor peft's MoE conversion adapts (the routed experts' gate_up_proj and down_proj, the
    router), through the v4 names a user writes (gate_proj and up_proj, down_proj, gate: planner/peft_moe.py), so
    that peft converts them as it converts the user's, fused rank included; each such linear becomes a group of
    its own (`group` = its path, the table `lora:PATH`). No dropout: peft's ParamWrapper refuses it."""
    from planner.peft_moe import TARGET_MAPPING, parameter_key, parameter_matches, pattern_of
    from profiler.spec_activations import Mode

    pattern = pattern_of(model_type)
    if pattern is None:
        return []
    modes: dict[str, Any] = {}
    for kind in kinds:
        for lin in kind["linears"]:
            key = parameter_key(lin["path"], role=lin["role"])
            names = tuple(old for old, new in TARGET_MAPPING[pattern] if parameter_matches(key, (new,)))
            if not names or not lin.get("lora_param"):
                continue
            lin["group"] = lin["path"]
            modes[lin["path"]] = Mode(f"lora:{lin['path']}", names=names)
    return list(modes.values())


def _lora_dropout_refused(kinds: list[dict[str, Any]]) -> bool:
    """peft adapts fused expert tensors with ParamWrapper, which refuses lora_dropout > 0 (peft/tuners/lora/
    layer.py ParamWrapper.__init__)."""
    return any(lin.get("in_all_linear") and lin.get("lora_param") for k in kinds for lin in k["linears"])


def measure(model: Any, config: Any, kinds: list[dict[str, Any]], *, log: Any = None) -> None:
    """Fill each kind's `saved`, `stream_bytes` and its linears' `group` (the reduced model holds one layer per
    kind, in the order of `kinds`)."""
    from profiler.spec_activations import (
        REGIMES,
        SDPA_SHAPES,
        Mode,
        input_groups,
        prepare,
        run_once,
    )
    from profiler.spec_structure import decoder_layers

    hidden = int(config.hidden_size)
    layers_prefix = next(n for n, m in model.named_modules() if m is decoder_layers(model, config))
    # which nn.Linear reads which tensor: one frozen run records each linear's input
    paths = {i: [lin["path"] for lin in k["linears"] if lin.get("nn_linear")] for i, k in enumerate(kinds)}
    probe_model = prepare(model, "fp32", Mode("frozen"), layers_prefix)
    base = probe_model.get_base_model() if hasattr(probe_model, "get_base_model") else probe_model
    probe = run_once(probe_model, decoder_layers(base, config), "fp32", Mode("frozen"), SDPA_SHAPES[0], hidden,
                     linear_paths=paths)
    groups: dict[tuple[str, ...], None] = {}
    for i, kind in enumerate(kinds):
        for group in input_groups(probe, i, paths[i]):
            groups[group] = None
            for lin in kind["linears"]:
                if lin["path"] in group:
                    lin["group"] = ",".join(group)
    model_type = str(getattr(config, "model_type", ""))
    groups = _without_converted(model_type, kinds, groups)
    modes = _modes(groups, not _lora_dropout_refused(kinds)) + _converted_modes(model_type, kinds)
    for kind in kinds:
        kind["saved"], kind["stream_bytes"] = {r: {} for r in REGIMES}, {}
    failed = _run_modes(model, config, kinds, modes, layers_prefix, hidden, log=log, windows=True)
    if failed:
        _blame(model, config, kinds, failed, layers_prefix, hidden)
        # the linears that share a tensor with a broken one, measured without it: Llama 4's shared-expert gate_proj
        # and up_proj read the router's input, and ftplan's default targets adapt them without the router
        regrouped = _without_broken(kinds)
        if regrouped:
            _run_modes(model, config, kinds, _group_modes(regrouped), layers_prefix, hidden, log=log, windows=False)


def _run_modes(model: Any, config: Any, kinds: list[dict[str, Any]], modes: list[Any], layers_prefix: str,
               hidden: int, *, log: Any, windows: bool) -> dict[str, str]:
    """Each mode in each regime into the kinds' `saved` tables (a group's mode into the kinds that hold the group);
    returns the LoRA modes peft failed on, with why."""
    from planner.model_layers import ONE_ROW_SUFFIX
    from profiler.spec_activations import (
        EAGER_ONE_ROW_SHAPES,
        EAGER_SHAPES,
        REGIMES,
        SDPA_SHAPES,
        fit,
        fit_one_row,
        prepare,
        run_once,
    )
    from profiler.spec_structure import decoder_layers

    failed: dict[str, str] = {}  # mode -> why peft's LoRA failed there
    for regime in REGIMES:
        for mode in modes:
            if mode.name in failed:
                continue
            t0 = time.perf_counter()
            eager = mode.attn == "eager"
            fitted = EAGER_SHAPES if eager else SDPA_SHAPES
            shapes = fitted + EAGER_ONE_ROW_SHAPES if eager else fitted
            runs = {}
            try:
                for shape in shapes:
                    prepared = prepare(model, regime, mode, layers_prefix)
                    inner = prepared.get_base_model() if hasattr(prepared, "get_base_model") else prepared
                    runs[shape] = run_once(prepared, decoder_layers(inner, config), regime, mode, shape, hidden)
            except Exception as exc:  # a layer peft's LoRA cannot run (Llama 4's router returns a tuple)
                if not (mode.targets or mode.names):
                    raise
                failed[mode.name] = _first_line(exc)
                if log:
                    log(f"  {regime} {mode.name}: peft's LoRA failed ({failed[mode.name]})")
                continue
            for i, kind in enumerate(kinds):
                group = mode.name.split(":")[1] if ":" in mode.name else None
                if group is not None and not any(lin.get("group") == group for lin in kind["linears"]):
                    continue
                kind["saved"][regime][mode.name] = list(fit({s: runs[s] for s in fitted}, i))
                if eager:
                    # one row where it differs from two or more (a single key/value head: spec_activations.py
                    # EAGER_SHAPES); the planner reads it at micro-batch 1 (planner/activations.py `_kind_saved`)
                    one_row = list(fit_one_row({s: runs[s] for s in EAGER_ONE_ROW_SHAPES}, i))
                    if one_row != kind["saved"][regime][mode.name]:
                        kind["saved"][regime][mode.name + ONE_ROW_SUFFIX] = one_row
                if mode.name == "frozen" or (mode.name == "full" and regime == "mixed"):
                    key = regime if mode.name == "frozen" else "mixed_full"
                    kind["stream_bytes"][key] = runs[shapes[0]].layers[i].stream_bytes
            if log:
                log(f"  {regime} {mode.name}: {time.perf_counter() - t0:.1f} s")
        if windows:
            _window_masks(model, config, kinds, regime, layers_prefix, hidden)
    return failed


def _without_broken(kinds: list[dict[str, Any]]) -> dict[tuple[str, ...], None]:
    """The groups that hold a linear peft's LoRA fails on (`lora_error`), less it: each other member's `group`
    becomes the rest (the planner composes LoRA from the tables of its linears' groups); the new groups."""
    out: dict[tuple[str, ...], None] = {}
    for kind in kinds:
        broken = {lin["path"] for lin in kind["linears"] if lin.get("lora_error")}
        for lin in kind["linears"]:
            members = tuple(lin.get("group", "").split(",")) if lin.get("group") else ()
            if lin["path"] in broken or not broken & set(members):
                continue
            rest = tuple(p for p in members if p not in broken)
            lin["group"] = ",".join(rest)
            out[rest] = None
    return out


def _window_masks(model: Any, config: Any, kinds: list[dict[str, Any]], regime: str, layers_prefix: str,
                  hidden: int) -> None:
    """What a windowed layer keeps under SDPA past its window, where transformers materializes the mask (below it
    the mask is skipped): SDPA at two lengths beyond the largest window, fitted as bytes per token per position
    beyond what the same layer keeps within its window: ("frozen_window" / "full_window") [a, 0, c, 0] for a + c s
    bytes per token."""
    from profiler.spec_activations import S1, S2, Mode, prepare, run_once
    from profiler.spec_structure import decoder_layers

    window = max(k["attention"]["window"] for k in kinds)
    if window <= 0 or not getattr(type(model), "_supports_sdpa", False):
        return
    for name, weights in (("frozen", False), ("full", True)):
        mode = Mode(name, weights=weights)
        per_token = {}
        for s in (window + S1, window + S2):
            prepared = prepare(model, regime, mode, layers_prefix)
            inner = prepared.get_base_model() if hasattr(prepared, "get_base_model") else prepared
            per_token[s] = run_once(prepared, decoder_layers(inner, config), regime, mode, (1, s), hidden)
        for i, kind in enumerate(kinds):
            if kind["attention"]["window"] <= 0:
                continue
            repl, par, _, k = kind["saved"][regime][name]
            excess = {s: (r.layers[i].repl + r.layers[i].par - k) / s - repl - par for s, r in per_token.items()}
            slope = (excess[window + S2] - excess[window + S1]) / (S2 - S1)
            intercept = excess[window + S1] - slope * (window + S1)
            kind["saved"][regime][f"{name}_window"] = [round(intercept, 3), 0.0, round(slope, 4), 0.0]


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def _blame(model: Any, config: Any, kinds: list[dict[str, Any]], failed: dict[str, str], layers_prefix: str,
           hidden: int) -> None:
    """Which adapted linears make peft's LoRA fail: each target of a failed group (or, where peft's all-linear
    selection failed, each linear it adapts) tried alone, as peft adapts it: an nn.Linear through target_modules, a
    fused expert tensor or router through target_parameters (`_lone_mode`); their linears get `lora_error` (the
    planner refuses LoRA plans that name them). A group that failed only with dropout (peft's ParamWrapper refuses
    it) or only with its first linear alone (peft refuses half of a fused pair) blames no linear: those modes are
    logged and their tables left out."""
    from profiler.spec_activations import ONE_SHAPE, prepare, run_once
    from profiler.spec_structure import decoder_layers

    suspects = {t for name in failed if name.startswith("lora:") and not name.endswith(":dropout")
                for t in name.split(":")[1].split(",")}
    if "lora_all" in failed:  # peft's all-linear selection failed: try each linear it adapts
        suspects |= {lin["path"] for k in kinds for lin in k["linears"] if lin.get("in_all_linear")}
    linears = {lin["path"]: lin for k in kinds for lin in k["linears"]}
    for target in sorted(suspects):
        mode = _lone_mode(target, linears[target])
        try:
            prepared = prepare(model, "fp32", mode, layers_prefix)
            inner = prepared.get_base_model() if hasattr(prepared, "get_base_model") else prepared
            run_once(prepared, decoder_layers(inner, config), "fp32", mode, ONE_SHAPE[0], hidden)
        except Exception as exc:
            for kind in kinds:
                for lin in kind["linears"]:
                    if lin["path"] == target:
                        lin["lora_error"] = _first_line(exc)


def _lone_mode(path: str, lin: dict[str, Any]) -> Any:
    """LoRA on one linear of a layer as peft adapts it: a module regex for an nn.Linear; for a linear peft wraps as a
    parameter (`lora_param`: a fused expert tensor, a router that is not nn.Linear) its tensor by name
    (planner/peft_moe.py `parameter_key`: experts.gate_up_proj itself, DeepSeek-V3's router mlp.gate.weight)."""
    from planner.peft_moe import parameter_key
    from profiler.spec_activations import Mode

    if not lin.get("lora_param"):
        return Mode(f"lora:{path}", targets=(path,))
    return Mode(f"lora:{path}", params=(parameter_key(path, role=lin["role"]),))


def derive(raw: dict[str, Any], *, name: str, log: Any = None, activations: bool = True) -> dict[str, Any]:
    """The spec JSON of a config.json dict: ModelSpec's fields (planner/models.py) under "spec". Without
    `activations` the saved-tensor tables are left empty (the structure and parameter counts alone, for tests)."""
    from profiler.spec_structure import (
        all_linear_lora,
        build_meta_model,
        decoder_layers,
        layer_kinds,
        load_config,
        other_params,
        outside_params,
    )

    t0 = time.perf_counter()
    loaded = load_config(raw, name=name)
    config = loaded.config
    model = build_meta_model(loaded, name=name)
    kinds = layer_kinds(model, config)
    outside = outside_params(model, config)
    firsts = [k["first"] for k in kinds]
    outside["layer_class"] = type(decoder_layers(model, config)[0]).__name__
    reduce_to(model, config, firsts)
    # peft on the reduced model (one layer per kind: position i is kind i); the whole model only costs time
    lora = all_linear_lora(model, list(range(len(kinds))), config)
    for i, kind in enumerate(kinds):
        for lin in kind["linears"]:
            per_rank, as_param = lora.get((i, lin["path"]), (None, False))
            lin["in_all_linear"] = per_rank is not None
            if per_rank:
                lin["lora_per_rank"] = per_rank
            if as_param:
                lin["lora_param"] = True
                lin["lora_targetable"] = lin["lora_targetable"] or lin["role"] == "router"
    if log:
        log(f"{name}: structure read in {time.perf_counter() - t0:.1f} s ({len(kinds)} layer kinds)")
    if activations:
        measure(model, config, kinds, log=log)
    called = called_modules(model, config, len(kinds))
    for i, (kind, layer) in enumerate(zip(kinds, decoder_layers(model, config), strict=True)):
        for lin in kind["linears"]:
            lin.pop("nn_linear", None)
        kind["other_params"] = other_params(layer, kind)
        kind["called_modules"] = called[i]
    return {"format": SPEC_FORMAT, "versions": _versions(), "spec": _spec(loaded, model, kinds, outside, raw)}


def called_modules(model: Any, config: Any, kinds: int) -> list[int]:
    """Modules of each layer kind (the layer itself included) that one training forward calls, on fake tokens: the
    modules whose ZeRO-3 hooks run (deepspeed/runtime/zero/parameter_offload.py `_register_hooks_recursively` hooks
    every submodule; a hook runs only when its module is called, torch/nn/modules/module.py `_call_impl`). Counted
    once per module however often it runs: DeepSeek-V3's MoE layer calls its routed experts' and its shared
    expert's `act_fn`, gpt-oss's experts none (planner.collectives.zero3_modules)."""
    from profiler.spec_activations import ONE_SHAPE, Mode, prepare, run_once
    from profiler.spec_structure import decoder_layers

    layers_prefix = next(n for n, m in model.named_modules() if m is decoder_layers(model, config))
    prepared = prepare(model, "fp32", Mode("frozen"), layers_prefix)
    run = run_once(prepared, decoder_layers(prepared, config), "fp32", Mode("frozen"), ONE_SHAPE[0],
                   int(config.hidden_size))
    return [1 + len(run.called.get(i, ())) for i in range(kinds)]


def _spec(loaded: Any, model: Any, kinds: list[dict[str, Any]], outside: dict[str, Any],
          raw: dict[str, Any]) -> dict[str, Any]:
    """ModelSpec's fields: the uniform ones from the most common layer kind (the MoE kind for the expert fields)."""
    config = loaded.config
    layers = sum(k["count"] for k in kinds)
    main = max(kinds, key=lambda k: k["count"])
    moe = max((k for k in kinds if k["mlp"]["kind"] == "moe"), key=lambda k: k["count"], default=None)
    attn = main["attention"]
    norms_bias = any(n["bias"] for k in kinds for n in k["norms"])
    linears = main["linears"]
    cls = type(model)
    kernels = ["eager"] + (["sdpa"] if getattr(cls, "_supports_sdpa", False) else []) + \
        (["flash"] if getattr(cls, "_supports_flash_attn", False) else [])
    max_pos = getattr(config, "max_position_embeddings", None) or raw.get("max_position_embeddings") or 4096
    layer_class = outside["layer_class"]
    return {
        "model_type": loaded.model_type, "vocab_size": int(config.vocab_size), "hidden_size": int(config.hidden_size),
        "intermediate_size": int((moe or main)["mlp"]["intermediate"]), "num_layers": layers,
        "num_heads": attn["heads"], "num_kv_heads": attn["kv_heads"], "head_dim": attn["qk_head_dim"],
        "tie_embeddings": bool(outside["tied"]),
        "qkv_bias": any(lin["bias"] for lin in linears if lin["name"] in ("q_proj", "k_proj", "v_proj")),
        "linear_bias": any(lin["bias"] for lin in linears if lin["role"] == "" and not lin["path"].startswith(
            ("self_attn", "attention"))),
        "gated_mlp": bool(main["mlp"]["gated"]), "layernorm_bias": norms_bias,
        "num_experts": int(moe["mlp"]["experts"]) if moe else 1,
        "experts_per_token": int(moe["mlp"]["top_k"]) if moe else 1,
        "max_seq_len": int(max_pos), "decoder_layer_class": layer_class, "layer_kinds": kinds,
        "final_norm_params": int(outside["final_norm"]), "extra_params": int(outside["extra"]),
        "attn_kernels": kernels, "causal_lm_class": cls.__name__, "text_config": loaded.text_config,
        "params_total": int(outside["params_total"]),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a spec."""
    from planner.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m profiler.spec_derive", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a config.json")
    parser.add_argument("--name", default="custom")
    parser.add_argument("--out", type=Path, help="where to write the spec JSON")
    parser.add_argument("--catalog", nargs="*", default=None, help="rewrite the catalog's specs (all, or these names)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    log = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        if args.catalog is not None:
            return _catalog(args.catalog, log)
        if args.config is None or args.out is None:
            raise PlanError("give --config FILE --out FILE, or --catalog")
        try:
            raw = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanError(f"cannot read {args.config}: {exc}") from None
        if not isinstance(raw, dict):
            raise PlanError(f"{args.config} does not hold a JSON object")
        write_json(args.out, derive(raw, name=args.name))
        return 0
    except PlanError as exc:
        print(f"ftplan: error: {exc}", file=sys.stderr)
        return 2


def _catalog(names: list[str], log: Any) -> int:
    from planner.model_catalog import HF_CONFIGS
    from planner.models import HAND_FAMILIES
    from planner.spec_cache import catalog_spec_path, config_sha256

    chosen = names or [n for n, c in HF_CONFIGS.items() if str(c.get("model_type")).lower() not in HAND_FAMILIES]
    for name in chosen:
        t0 = time.perf_counter()
        data = derive(dict(HF_CONFIGS[name]), name=name, log=log)
        data["config_sha256"] = config_sha256(HF_CONFIGS[name])
        write_json(catalog_spec_path(name), data)
        if log:
            log(f"{name}: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
