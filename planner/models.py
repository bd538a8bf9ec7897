"""Model specs: the shapes that decide memory and time, parsed from config.json dicts.

`from_name` reads the catalog (`planner.model_catalog`); `from_path` reads a user's config.json or
model directory as plain JSON (never imports transformers, never runs remote code).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from planner.errors import PlanError, unknown_name_error
from planner.input_checks import check_model_spec
from planner.input_files import read_json_file
from planner.model_catalog import ALIASES, HF_CONFIGS
from planner.model_layers import LayerKind, LinearShape, layer_kind_to_dict

__all__ = ["LayerKind", "LinearShape", "ModelSpec", "from_name", "from_path", "model_names", "resolve",
           "spec_from_hf_config"]


@dataclass(frozen=True, kw_only=True, eq=False)
class ModelSpec:
    """The shapes that decide memory and time. Hand-written families (llama, mistral, mixtral, qwen2, and the
    remote-code baichuan, chatglm and bloom) fill the uniform fields from config.json; a model read from
    transformers itself (profiler/spec_derive.py) also carries `layer_kinds`, one record per distinct decoder
    layer, from which the uniform fields are filled with the most common layer's values (the MoE layer's for
    `num_experts`, `experts_per_token` and `intermediate_size`)."""

    name: str
    model_type: str  # the config.json `model_type` (the text model's, for a multimodal config)
    vocab_size: int
    hidden_size: int  # h
    intermediate_size: int  # MLP width per expert
    num_layers: int  # L
    num_heads: int  # a
    num_kv_heads: int
    head_dim: int
    tie_embeddings: bool
    qkv_bias: bool = False
    linear_bias: bool = False  # BLOOM: every linear has a bias
    gated_mlp: bool = True  # SwiGLU (gate, up, down) vs GeLU (up, down)
    layernorm_bias: bool = False  # LayerNorm (weight + bias) vs RMSNorm (weight)
    embedding_norm: bool = False  # BLOOM's word_embeddings_layernorm
    num_experts: int = 1
    experts_per_token: int = 1
    max_seq_len: int = 4096  # positions, x the RoPE factor when `rope_scaling` is set (planner/rope.py)
    rope_scaling: str | None = None  # "linear:2.0" as given to --rope-scaling
    decoder_layer_class: str = "LlamaDecoderLayer"  # FSDP auto-wrap and ZeRO-3 leaf class
    source: str = ""
    # --- read from the transformers model (empty for the hand-written families) ---
    layer_kinds: tuple[LayerKind, ...] = ()
    final_norm_params: int = -1  # parameters of the final norm; -1: one norm of width h (norm_params)
    extra_params: int = 0  # parameters outside the layers, embedding, final norm and head
    attn_kernels: tuple[str, ...] = ("eager", "sdpa", "flash")  # attention implementations the class accepts
    causal_lm_class: str = ""  # e.g. Qwen3ForCausalLM
    text_config: bool = False  # the config.json is multimodal; its text_config is the model planned
    config_sha256: str = ""  # key of the config.json content the structure was read from

    def __post_init__(self) -> None:
        # plan.json and the spec JSON carry the records as dicts and lists
        if self.layer_kinds and not all(isinstance(k, LayerKind) for k in self.layer_kinds) \
                or not isinstance(self.layer_kinds, tuple):
            object.__setattr__(self, "layer_kinds", tuple(k if isinstance(k, LayerKind) else LayerKind(**k)
                                                          for k in self.layer_kinds))
        if not isinstance(self.attn_kernels, tuple):
            object.__setattr__(self, "attn_kernels", tuple(self.attn_kernels))

    # Hashing a spec with its layer records on every cached call would cost more than the cached work: the
    # hash is computed once per object.
    def _key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __hash__(self) -> int:
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(self._key())
            object.__setattr__(self, "_hash", cached)
        return cached

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ModelSpec):
            return NotImplemented
        return hash(self) == hash(other) and self._key() == other._key()

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def derived(self) -> bool:
        """The structure was read from the transformers model (profiler/spec_derive.py)."""
        return bool(self.layer_kinds)

    def linears(self) -> tuple[LinearShape, ...]:
        """The linear maps of one decoder layer, named as the family's modeling code names them. Where layers
        differ (DeepSeek-V3's dense-first layers) every distinct linear appears once, with `layer_share` the
        fraction of layers that hold it: per-layer sums weight each linear by it."""
        return _linears(self)


@lru_cache(maxsize=4096)  # pure in the (frozen) spec; the search asks for it per candidate
def _linears(m: ModelSpec) -> tuple[LinearShape, ...]:
    if m.layer_kinds:
        return _union_of_kinds(m)
    h, i, q, kv = m.hidden_size, m.intermediate_size, m.q_dim, m.kv_dim
    b = m.linear_bias
    if m.model_type == "bloom":
        return (LinearShape(name="query_key_value", in_features=h, out_features=3 * h, bias=True),
                LinearShape(name="dense", in_features=h, out_features=h, bias=True),
                LinearShape(name="dense_h_to_4h", in_features=h, out_features=i, bias=True),
                LinearShape(name="dense_4h_to_h", in_features=i, out_features=h, bias=True))
    if m.model_type == "chatglm":
        return (LinearShape(name="query_key_value", in_features=h, out_features=q + 2 * kv, bias=m.qkv_bias),
                LinearShape(name="dense", in_features=q, out_features=h),
                LinearShape(name="dense_h_to_4h", in_features=h, out_features=2 * i),
                LinearShape(name="dense_4h_to_h", in_features=i, out_features=h))
    if m.model_type == "baichuan":
        attn = (LinearShape(name="W_pack", in_features=h, out_features=3 * h),
                LinearShape(name="o_proj", in_features=h, out_features=h))
    else:
        attn = (LinearShape(name="q_proj", in_features=h, out_features=q, bias=m.qkv_bias or b),
                LinearShape(name="k_proj", in_features=h, out_features=kv, bias=m.qkv_bias or b),
                LinearShape(name="v_proj", in_features=h, out_features=kv, bias=m.qkv_bias or b),
                LinearShape(name="o_proj", in_features=q, out_features=h, bias=b))
    if m.is_moe:
        # transformers >= 5 stores experts as fused 3-D parameters (gate_up_proj, down_proj) and the router as
        # `gate` (MixtralTopKRouter, not an nn.Linear); see modeling_mixtral.py. peft 0.21 adapts the router and,
        # under "all-linear", both expert tensors as parameters, doubling the rank of the fused gate_up
        # (peft/utils/transformers_weight_conversion.py _convert_peft_config_moe)
        e, k = m.num_experts, float(m.experts_per_token)
        mlp = (LinearShape(name="gate", in_features=h, out_features=e, role="router", lora_param=True),
               LinearShape(name="experts.gate_up_proj", in_features=h, out_features=2 * i, copies=e,
                           lora_targetable=False, in_all_linear=True, lora_param=True, active=k, role="expert",
                           lora_per_rank=2 * e * (h + 2 * i)),
               LinearShape(name="experts.down_proj", in_features=i, out_features=h, copies=e,
                           lora_targetable=False, in_all_linear=True, lora_param=True, active=k, role="expert"))
    else:
        mlp = (LinearShape(name="gate_proj", in_features=h, out_features=i, bias=b),
               LinearShape(name="up_proj", in_features=h, out_features=i, bias=b),
               LinearShape(name="down_proj", in_features=i, out_features=h, bias=b))
    return attn + mlp


def _union_of_kinds(m: ModelSpec) -> tuple[LinearShape, ...]:
    """Every distinct linear of the layer kinds once, with the share of the layers that hold it."""
    shares: dict[LinearShape, float] = {}
    for kind in m.layer_kinds:
        for lin in kind.linears:
            key = dataclasses.replace(lin, layer_share=1.0)
            shares[key] = shares.get(key, 0.0) + kind.count / m.num_layers
    return tuple(lin if abs(share - 1.0) < 1e-12 else dataclasses.replace(lin, layer_share=share)
                 for lin, share in shares.items())


def _need(cfg: dict, *keys: str, where: str) -> int:
    for key in keys:
        if key in cfg and cfg[key] is not None:
            value = cfg[key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise PlanError(f"{where}: '{key}' must be a positive integer, got {value!r}")
            return value
    raise PlanError(f"{where}: config.json lacks '{keys[0]}'")


def _optional(cfg: dict, key: str, default: int, *, where: str) -> int:
    """An optional positive integer field: absent or null means `default`; anything else must be one."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PlanError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def _check_heads(heads: int, kv_heads: int, *, where: str) -> None:
    # grouped-query attention shares each K/V head among heads / kv_heads query heads
    if kv_heads > heads or heads % kv_heads:
        raise PlanError(f"{where}: {kv_heads} key/value heads do not divide {heads} attention heads")


_LAYER_CLASS = {"llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer",
                "mixtral": "MixtralDecoderLayer", "qwen2": "Qwen2DecoderLayer",
                "baichuan": "DecoderLayer", "chatglm": "GLMBlock", "bloom": "BloomBlock"}


# The families with a hand-written rule: the remote-code models (baichuan, chatglm; transformers cannot build
# them without running their code) and the Llama-shaped families whose rule tests/planner/test_model_derive.py
# checks against the structure and saved tensors transformers gives. Every other model_type is read from the
# transformers model (spec_from_config).
HAND_FAMILIES = frozenset(_LAYER_CLASS)


def spec_from_hf_config(cfg: dict, *, name: str, source: str = "") -> ModelSpec:
    """Parse a config.json dict (llama, mistral, mixtral, qwen2, baichuan, chatglm, bloom) into a ModelSpec."""
    model_type = str(cfg.get("model_type", "llama")).lower()
    where = f"model '{name}'"
    if model_type not in _LAYER_CLASS:
        raise PlanError(f"{where}: model_type '{model_type}' has no hand-written rule "
                        f"(those exist for {', '.join(sorted(_LAYER_CLASS))}); read it with spec_from_config")
    if model_type == "bloom":
        h = _need(cfg, "hidden_size", "n_embed", where=where)
        heads = _need(cfg, "n_head", "num_attention_heads", where=where)
        return ModelSpec(
            name=name, model_type="bloom", vocab_size=_need(cfg, "vocab_size", where=where), hidden_size=h,
            intermediate_size=4 * h, num_layers=_need(cfg, "n_layer", "num_hidden_layers", where=where),
            num_heads=heads, num_kv_heads=heads, head_dim=h // heads, tie_embeddings=True,
            qkv_bias=True, linear_bias=True, gated_mlp=False, layernorm_bias=True, embedding_norm=True,
            max_seq_len=_optional(cfg, "seq_length", 2048, where=where), decoder_layer_class="BloomBlock",
            source=source)
    if model_type == "chatglm":
        h = _need(cfg, "hidden_size", where=where)
        heads = _need(cfg, "num_attention_heads", where=where)
        kv_heads = _optional(cfg, "multi_query_group_num", heads, where=where) if cfg.get("multi_query_attention") \
            else heads
        _check_heads(heads, kv_heads, where=where)
        return ModelSpec(
            name=name, model_type="chatglm", vocab_size=_need(cfg, "padded_vocab_size", "vocab_size", where=where),
            hidden_size=h, intermediate_size=_need(cfg, "ffn_hidden_size", where=where),
            num_layers=_need(cfg, "num_layers", "num_hidden_layers", where=where), num_heads=heads,
            num_kv_heads=kv_heads, head_dim=_optional(cfg, "kv_channels", h // heads, where=where),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=bool(cfg.get("add_qkv_bias")),
            layernorm_bias=not cfg.get("rmsnorm", True), max_seq_len=_optional(cfg, "seq_length", 8192, where=where),
            decoder_layer_class="GLMBlock", source=source)
    h = _need(cfg, "hidden_size", where=where)
    heads = _need(cfg, "num_attention_heads", where=where)
    kv_heads = _optional(cfg, "num_key_value_heads", heads, where=where)
    _check_heads(heads, kv_heads, where=where)
    head_dim = _optional(cfg, "head_dim", h // heads, where=where)
    experts = _optional(cfg, "num_local_experts", 1, where=where)
    if experts > 1 and _optional(cfg, "num_experts_per_tok", 1, where=where) > experts:
        raise PlanError(f"{where}: num_experts_per_tok exceeds the {experts} experts")
    return ModelSpec(
        name=name, model_type=model_type, vocab_size=_need(cfg, "vocab_size", where=where), hidden_size=h,
        intermediate_size=_need(cfg, "intermediate_size", where=where),
        num_layers=_need(cfg, "num_hidden_layers", where=where), num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
        linear_bias=bool(cfg.get("mlp_bias", False)), num_experts=experts,
        experts_per_token=_optional(cfg, "num_experts_per_tok", 1, where=where) if experts > 1 else 1,
        max_seq_len=_optional(cfg, "max_position_embeddings", _optional(cfg, "model_max_length", 4096, where=where),
                              where=where),
        decoder_layer_class=_LAYER_CLASS[model_type], source=source)


# Fields of a model read from transformers, left out of plan.json while they hold their defaults (plans of the
# hand-written families read exactly as before they existed)
_DERIVED_FIELDS = ("layer_kinds", "final_norm_params", "extra_params", "attn_kernels", "causal_lm_class",
                   "text_config", "config_sha256")


def model_to_dict(m: ModelSpec) -> dict:
    """The spec as plan.json carries it: its fields, without the defaults a hand-written family leaves unset."""
    out = dataclasses.asdict(m)
    defaults = {f.name: f.default for f in fields(ModelSpec)}
    for name in (*_DERIVED_FIELDS, "rope_scaling"):
        if out[name] == defaults[name] or (name == "attn_kernels" and tuple(out[name]) == defaults[name]):
            del out[name]
    out["layer_kinds"] = [layer_kind_to_dict(k) for k in m.layer_kinds] if m.layer_kinds else out.pop("layer_kinds",
                                                                                                      None)
    if out["layer_kinds"] is None:
        del out["layer_kinds"]
    return out


def spec_from_config(cfg: dict, *, name: str, source: str = "") -> ModelSpec:
    """A config.json dict as a ModelSpec: the hand-written rule of its family, or the structure read from the
    transformers model (planner/spec_cache.py; derived once per config content, then read from the cache)."""
    model_type = str(cfg.get("model_type", "llama")).lower()
    if model_type in _LAYER_CLASS:
        return spec_from_hf_config(cfg, name=name, source=source)
    from planner.spec_cache import config_sha256, derived_spec_dict

    return spec_from_dict(derived_spec_dict(cfg, name=name), name=name, source=source,
                          config_sha256=config_sha256(cfg))


def spec_from_dict(data: dict, *, name: str, source: str, config_sha256: str = "") -> ModelSpec:
    """A ModelSpec from the JSON written by profiler.spec_derive, under the name and source given here."""
    known = {f.name for f in fields(ModelSpec)}
    values = {k: v for k, v in data.items() if k in known}
    values.update(name=name, source=source)
    if config_sha256:
        values["config_sha256"] = config_sha256
    try:
        return ModelSpec(**values)
    except (TypeError, ValueError) as exc:
        raise PlanError(f"model '{name}': its derived spec does not load ({exc}); remove the spec cache entry"
                        ) from None


def model_names() -> list[str]:
    return list(HF_CONFIGS)


@lru_cache(maxsize=4096)
def from_name(name: str) -> ModelSpec:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in HF_CONFIGS:
        raise unknown_name_error("model", name, [*HF_CONFIGS, *ALIASES])
    model_type = str(HF_CONFIGS[key].get("model_type", "llama")).lower()
    if model_type in _LAYER_CLASS:
        return check_model_spec(spec_from_hf_config(HF_CONFIGS[key], name=key, source=f"catalog:{key}"))
    from planner.spec_cache import catalog_spec_path, config_sha256, load_spec_json

    path = catalog_spec_path(key)
    if not path.exists():
        raise PlanError(f"model '{key}': its catalog spec {path.name} is missing "
                        "(python -m profiler.spec_derive --catalog writes it)")
    data = load_spec_json(path)
    return check_model_spec(spec_from_dict(data["spec"], name=key, source=f"catalog:{key}",
                                           config_sha256=config_sha256(HF_CONFIGS[key])))


def from_path(path: Path) -> ModelSpec:
    """Read a local config.json, or the config.json inside a model directory, as plain JSON."""
    file = path / "config.json" if path.is_dir() else path
    # a regular file of bounded size, strict JSON (planner/input_files.py): a FIFO or /dev/zero cannot hang it
    cfg = read_json_file(file, what=f"model '{path}': config")
    if not isinstance(cfg, dict):
        raise PlanError(f"model '{path}': {file} does not hold a JSON object")
    name = (path if path.is_dir() else path.parent).name or "custom"
    # absolute: the source is read again by processes that start elsewhere (profiler workers, emitted files)
    return check_model_spec(spec_from_config(cfg, name=name, source=str(file.resolve())))


def resolve(model: str) -> ModelSpec:
    """A catalog name or alias, or a path to a config.json or model directory."""
    path = Path(model)
    try:
        is_file = model.endswith(".json") or path.is_dir() or path.exists()
    except OSError:  # a name too long to be a path (ENAMETOOLONG) names no file
        is_file = False
    if is_file:
        return from_path(path)
    return from_name(model)
