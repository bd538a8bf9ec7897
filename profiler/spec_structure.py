"""The structure of a causal LM as transformers builds it from a config.json: built on the meta device (no bytes, no
download, never remote code unless asked) and read module by module.

What is read, per decoder layer: every parameter (the exact count), every nn.Linear (shape, bias), the fused expert
tensors of a mixture-of-experts layer (transformers >= 5 stores experts as 3-D parameters, see
transformers/integrations/moe.py `use_experts_implementation`) and its router, the norms and where they sit
(pre/post, sandwich, q/k norms), the attention (heads, key/value heads, head sizes, multi-head latent attention,
the window of sliding or chunked layers from `config.layer_types`, sinks, soft-capping); layers with the same
parameters and attention form one kind. Outside the layers: the embedding, the final norm, the LM head (tied or
not) and whatever else holds parameters. peft 0.21 decides which modules `target_modules="all-linear"` adapts and
how many parameters each adapter has (its MoE conversion adapts fused experts as parameters with the rank doubled
for gate_up: peft/utils/transformers_weight_conversion.py); both are read by applying peft on the meta device.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from planner.errors import PlanError


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text.split(". ")[0] if ". " in text else text)[:240]


@dataclass
class LoadedConfig:
    config: Any  # the transformers config of the causal LM (the text model of a multimodal config)
    model_type: str
    text_config: bool  # taken from a multimodal config's text_config


def load_config(raw: dict[str, Any], *, name: str) -> LoadedConfig:
    """The transformers config a config.json stands for; a multimodal config (Gemma 3 4B+, Llama 4) gives its
    text model, which is what a text fine-tune trains (the vision tower is not counted)."""
    from transformers import AutoConfig

    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        raise PlanError(f"model '{name}': config.json lacks 'model_type'")
    # a checkpoint's quantization (DeepSeek-V3's fp8, gpt-oss's MXFP4 experts) is how its weights are stored, not
    # what a fine-tune trains (ftplan's QLoRA is its own choice); auto_map names remote code, which is never run
    raw = {k: v for k, v in raw.items() if k not in ("quantization_config", "auto_map")}
    try:
        hf = AutoConfig.for_model(**raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PlanError(f"model '{name}': model_type {model_type!r} is not supported: transformers cannot build it "
                        f"from its config ({_first_sentence(exc)}); ftplan reads structures from transformers' own "
                        "classes and never runs remote code") from None
    text = hf.get_text_config(decoder=True)
    return LoadedConfig(config=text, model_type=str(getattr(text, "model_type", model_type)),
                        text_config=text is not hf)


def build_meta_model(loaded: LoadedConfig, *, name: str, dtype: Any = None) -> nn.Module:
    """AutoModelForCausalLM on the meta device: shapes only."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(loaded.config, **kwargs)
    except Exception as exc:  # transformers raises many types for configs it cannot build
        raise PlanError(f"model '{name}': model_type {loaded.model_type!r} is not supported: transformers has no "
                        f"causal-LM class for it ({_first_sentence(exc)}); ftplan plans decoder-only causal LMs"
                        ) from None


def decoder_layers(model: nn.Module, config: Any) -> nn.ModuleList:
    """The ModuleList of decoder layers: `model.model.layers` in every family read so far, else the list whose
    length is num_hidden_layers."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) == config.num_hidden_layers:
        return layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == config.num_hidden_layers:
            return module
    raise PlanError(f"cannot find the {config.num_hidden_layers} decoder layers of {type(model).__name__}")


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None), nn.Parameter)


def _experts_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """Modules holding fused expert tensors (3-D parameters)."""
    return {path: mod for path, mod in layer.named_modules()
            if any(p.dim() == 3 for p in mod.parameters(recurse=False))}


def _window(config: Any, index: int, attn: nn.Module) -> tuple[int, str]:
    """(window, kind) of layer `index`: config.layer_types names each layer's attention in transformers >= 4.54."""
    kinds = getattr(config, "layer_types", None)
    if kinds:
        kind = kinds[index]
        if kind == "sliding_attention" and getattr(config, "sliding_window", None):
            return int(config.sliding_window), "sliding"
        if kind == "chunked_attention" and getattr(config, "attention_chunk_size", None):
            return int(config.attention_chunk_size), "chunked"
        return 0, ""
    window = getattr(attn, "sliding_window", None)
    return (int(window), "sliding") if isinstance(window, int) and window > 0 else (0, "")


def _attention_module(layer: nn.Module) -> tuple[str, nn.Module]:
    for path, mod in layer.named_children():
        if "attention" in type(mod).__name__.lower():
            return path, mod
    raise PlanError(f"{type(layer).__name__} has no attention module ftplan recognizes")


def _attention(config: Any, index: int, layer: nn.Module) -> dict[str, Any]:
    path, attn = _attention_module(layer)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
                   or config.hidden_size // heads)
    qk = int(getattr(attn, "qk_head_dim", None) or head_dim)
    v = int(getattr(attn, "v_head_dim", None) or head_dim)
    mla = any(n.endswith("kv_b_proj") for n, _ in attn.named_modules())
    window, window_kind = _window(config, index, attn)
    norms = [n for n, m in attn.named_modules() if _is_norm(m)]
    return {"kind": "mla" if mla else "gqa", "heads": heads, "kv_heads": heads if mla else kv_heads,
            "qk_head_dim": qk, "v_head_dim": v, "window": window, "window_kind": window_kind,
            "sinks": isinstance(getattr(attn, "sinks", None), nn.Parameter),
            "softcap": float(getattr(config, "attn_logit_softcapping", None) or 0.0),
            "qk_norm": any(n.split(".")[-1] in ("q_norm", "k_norm") for n in norms)}


def _expert_shape(module: nn.Module, pname: str, shape: tuple[int, ...], hidden: int) -> tuple[int, int]:
    """(in, out) of one fused expert tensor (E, a, b): modules under `use_experts_implementation` say whether they
    store (E, in, out) (`is_transposed`, gpt-oss); others are read from which side the hidden size is on (the
    up projection reads it, the down projection writes it: Llama 4 stores (E, h, 2i) and (E, i, h))."""
    _, a, b = shape
    if hasattr(module, "is_transposed"):
        return (a, b) if module.is_transposed else (b, a)
    if "down" in pname:
        return (a, b) if b == hidden else (b, a)
    return (a, b) if a == hidden else (b, a)


def _linears(layer: nn.Module, hidden: int) -> list[dict[str, Any]]:
    """Every linear map of a layer: nn.Linear modules, fused expert tensors, and routers that are not nn.Linear."""
    experts = _experts_modules(layer)
    out: list[dict[str, Any]] = []
    expert_counts = {path: next(p.shape[0] for p in mod.parameters(recurse=False) if p.dim() == 3)
                     for path, mod in experts.items()}
    for path, mod in layer.named_modules():
        if path in experts:
            for pname, p in mod.named_parameters(recurse=False):
                if p.dim() != 3:
                    continue
                e = p.shape[0]
                in_f, out_f = _expert_shape(mod, pname, tuple(p.shape), hidden)
                bias = isinstance(getattr(mod, f"{pname}_bias", None), nn.Parameter)
                out.append({"name": f"{path.split('.')[-1]}.{pname}", "path": f"{path}.{pname}", "in_features": in_f,
                            "out_features": out_f, "bias": bias, "copies": int(e), "lora_targetable": False,
                            "role": "expert"})
            continue
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        sibling_experts = [ep for ep in experts if (ep.rsplit(".", 1)[0] if "." in ep else "") == parent]
        weight = getattr(mod, "weight", None)
        is_router = (bool(sibling_experts) and isinstance(weight, nn.Parameter) and weight.dim() == 2
                     and weight.shape[0] == expert_counts[sibling_experts[0]])
        if isinstance(mod, nn.Linear) or is_router:
            role = "router" if is_router else "shared_expert" if "shared_expert" in path else ""
            out.append({"name": path.split(".")[-1], "path": path, "in_features": int(weight.shape[1]),
                        "out_features": int(weight.shape[0]),
                        "bias": isinstance(getattr(mod, "bias", None), nn.Parameter),
                        "lora_targetable": isinstance(mod, nn.Linear), "role": role,
                        "nn_linear": isinstance(mod, nn.Linear)})
    return out


def _mlp(config: Any, linears: list[dict[str, Any]], hidden: int, layer: nn.Module) -> dict[str, Any]:
    experts = [lin for lin in linears if lin["role"] == "expert"]
    if experts:
        down = next(lin for lin in experts if lin["out_features"] == hidden)
        shared = [lin for lin in linears if lin["role"] == "shared_expert" and lin["out_features"] == hidden]
        modules = list(_experts_modules(layer).values())
        has_gate = any(getattr(m, "has_gate", True) for m in modules)
        # `use_experts_implementation` modules run each token through its top-k experts only (grouped_mm by
        # default); Llama 4's experts multiply every token by every expert (torch.bmm over all of them)
        routed = all(hasattr(m, "has_gate") for m in modules)
        return {"kind": "moe", "intermediate": down["in_features"], "gated": has_gate, "experts": down["copies"],
                "top_k": int(config.num_experts_per_tok), "dispatch": "routed" if routed else "all_experts",
                "shared_intermediate": sum(lin["in_features"] for lin in shared)}
    attn_path, _ = _attention_module(layer)
    mlp = [lin for lin in linears if not lin["path"].startswith(attn_path + ".")]
    if not mlp:
        raise PlanError(f"{type(layer).__name__}: no MLP linears found")
    down = next((lin for lin in mlp if lin["out_features"] == hidden), mlp[-1])
    readers = [lin for lin in mlp if lin["in_features"] == hidden]
    gated = len(readers) >= 2 or any(lin["out_features"] == 2 * down["in_features"] for lin in readers)
    return {"kind": "dense", "intermediate": down["in_features"], "gated": gated}


def layer_record(config: Any, index: int, layer: nn.Module) -> dict[str, Any]:
    linears = _linears(layer, int(config.hidden_size))
    mlp = _mlp(config, linears, int(config.hidden_size), layer)
    for lin in linears:
        if lin["role"] == "expert":
            lin["active"] = float(mlp["top_k"] if mlp["dispatch"] == "routed" else mlp["experts"])
    norms = [{"path": p, "width": int(m.weight.numel()), "bias": isinstance(getattr(m, "bias", None), nn.Parameter)}
             for p, m in layer.named_modules() if _is_norm(m)]
    return {"params": sum(p.numel() for p in layer.parameters()), "linears": linears, "norms": norms,
            "attention": _attention(config, index, layer), "mlp": mlp}


def other_params(layer: nn.Module, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The layer's parameters held by none of its linears (their weights and biases, a fused expert tensor and its
    `<name>_bias`) and norms: gpt-oss's per-head attention sinks (`self_attn.sinks`,
    transformers/models/gpt_oss/modeling_gpt_oss.py GptOssAttention), each with its path and elements."""
    covered = {f"{n['path']}.{t}" for n in record["norms"] for t in ("weight", "bias")}
    for lin in record["linears"]:
        covered |= {lin["path"], f"{lin['path']}_bias"} if lin["role"] == "expert" else \
            {f"{lin['path']}.weight", f"{lin['path']}.bias"}
    return [{"path": n, "elements": int(p.numel())} for n, p in layer.named_parameters() if n not in covered]


def _signature(layer: nn.Module, record: dict[str, Any]) -> tuple:
    params = tuple((n, tuple(p.shape)) for n, p in layer.named_parameters())
    attn = record["attention"]
    return params, attn["window"], attn["window_kind"]


def layer_kinds(model: nn.Module, config: Any) -> list[dict[str, Any]]:
    """One record per distinct layer (same parameters and attention), with its count and first index."""
    kinds: dict[tuple, dict[str, Any]] = {}
    for index, layer in enumerate(decoder_layers(model, config)):
        record = layer_record(config, index, layer)
        key = _signature(layer, record)
        if key in kinds:
            kinds[key]["count"] += 1
        else:
            kinds[key] = {"count": 1, "first": index, **record}
    return list(kinds.values())


def outside_params(model: nn.Module, config: Any) -> dict[str, Any]:
    """Parameters outside the decoder layers: embedding, final norm, LM head (tied or not), and the rest."""
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    layers = decoder_layers(model, config)
    layer_ids = {id(p) for p in layers.parameters()}
    norm = getattr(getattr(model, "model", None), "norm", None)
    norm_params = sum(p.numel() for p in norm.parameters()) if isinstance(norm, nn.Module) else 0
    total = sum(p.numel() for p in model.parameters())
    known = {id(p) for p in embedding.parameters()} | layer_ids
    if isinstance(norm, nn.Module):
        known |= {id(p) for p in norm.parameters()}
    if head is not None:
        known |= {id(p) for p in head.parameters()}
    extra = sum(p.numel() for p in model.parameters() if id(p) not in known)
    return {"params_total": total, "embedding": embedding.weight.numel(), "tied": tied,
            "head": 0 if (tied or head is None) else sum(p.numel() for p in head.parameters()),
            "final_norm": norm_params, "extra": extra, "final_norm_module": "model.norm" if norm is not None else ""}


def _tuner_targets(peft_model: nn.Module, layers_prefix: str) -> dict[tuple[int, str], tuple[int, bool]]:
    """(layer index, linear path) -> (trainable LoRA parameters, adapted as a parameter) of each adapted linear."""
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    out: dict[tuple[int, str], tuple[int, bool]] = {}
    for name, mod in peft_model.named_modules():
        if not isinstance(mod, LoraLayer) or f"{layers_prefix}." not in name:
            continue
        rest = name.split(f"{layers_prefix}.", 1)[1]
        index_text, _, path = rest.partition(".")
        while path.endswith(".base_layer"):
            path = path.removesuffix(".base_layer")
        if isinstance(mod, ParamWrapper) and not (mod.parameter_name == "weight" and path):
            path = f"{path}.{mod.parameter_name}"  # a fused expert tensor; a router's own weight keeps its path
        own = sum(p.numel() for n, p in mod.named_parameters() if n.startswith(("lora_A.", "lora_B.")))
        before = out.get((int(index_text), path), (0, False))
        out[(int(index_text), path)] = (before[0] + own, before[1] or isinstance(mod, ParamWrapper))
    return out


def all_linear_lora(model: nn.Module, layer_indices: list[int], config: Any
                    ) -> dict[tuple[int, str], tuple[int, bool]]:
    """peft's `target_modules="all-linear"` on the meta model: which linears of the given layers it adapts and the
    LoRA parameters per unit rank of each (measured at r = 1 and 2; peft doubles the rank of fused gate_up)."""
    from peft import LoraConfig, get_peft_model

    layers = decoder_layers(model, config)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    counts = []
    for r in (1, 2):
        clone = copy.deepcopy(model)
        peft_model = get_peft_model(clone, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                                      target_modules="all-linear", task_type="CAUSAL_LM"))
        counts.append({k: v for k, v in _tuner_targets(peft_model, "base_model.model." + prefix).items()
                       if k[0] in layer_indices})
    return {k: (counts[1][k][0] - counts[0].get(k, (0, False))[0], counts[1][k][1]) for k in counts[1]}
