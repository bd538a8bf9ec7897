"""The structure of a decoder layer as transformers builds it: linears, norms, attention, MLP, and what one layer
saves for backward, measured on fake tensors.

A model read from the transformers model itself (profiler/spec_derive.py builds it on the meta device, walks its
modules and runs its layers on fake tensors) has one `LayerKind` per distinct layer: Gemma 3's sliding-window and
global layers, DeepSeek-V3's dense-first and mixture-of-experts layers, gpt-oss's alternating attention. The
planner reads these frozen records only (no torch); they travel as JSON (planner/model_specs/*.json for the
catalog, the spec cache for users' config.json files, plan.json), and `from_dict` turns the JSON back into them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class LinearShape:
    """One linear map of a decoder layer. `name` is what peft matches (the module's leaf name, `q_proj`); fused
    expert tensors (transformers >= 5 stores a MoE layer's experts as 3-D parameters) are named after the
    parameter (`experts.gate_up_proj`) and hold `copies` experts, of which each token meets `active`."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False
    copies: int = 1  # experts of an MoE layer hold `copies` of it
    lora_targetable: bool = True  # an nn.Linear peft can adapt when named in target_modules
    path: str = ""  # the module path inside the layer (self_attn.q_proj); "" for hand-written specs
    active: float = 0.0  # copies one token meets (top-k of the routed experts); 0 = all `copies`
    role: str = ""  # "router", "expert", "shared_expert" or "" (attention / dense MLP)
    in_all_linear: bool | None = None  # adapted by peft's target_modules="all-linear"; None = lora_targetable
    lora_per_rank: int = 0  # trainable LoRA parameters per unit of rank, as peft builds them; 0 = copies*(in+out)
    # peft adapts it as a parameter (ParamWrapper: fused experts, routers that are not nn.Linear), which refuses
    # lora_dropout > 0 (peft/tuners/lora/layer.py ParamWrapper.__init__)
    lora_param: bool = False
    lora_error: str = ""  # why peft's LoRA fails on it (measured: profiler/spec_derive.py); "" = it runs
    group: str = ""  # linears reading the same input tensor share a group (q, k, v: the attention input)
    layer_share: float = 1.0  # fraction of the decoder layers holding this linear (1 unless layers differ)

    @property
    def active_copies(self) -> float:
        return self.active or float(self.copies)

    @property
    def all_linear(self) -> bool:
        return self.lora_targetable if self.in_all_linear is None else self.in_all_linear

    def lora_params_per_rank(self) -> int:
        return self.lora_per_rank or self.copies * (self.in_features + self.out_features)


@dataclass(frozen=True, kw_only=True)
class AttentionShape:
    """Attention of one layer: `kind` "gqa" covers multi-head, grouped-query and multi-query attention (kv_heads
    1..heads); "mla" is DeepSeek's multi-head latent attention (queries and keys of qk_head_dim, values of
    v_head_dim). `window` > 0 limits each query to the `window` tokens before it (sliding, or chunked:
    Llama 4's local layers attend within chunks of that size)."""

    kind: str = "gqa"
    heads: int
    kv_heads: int
    qk_head_dim: int
    v_head_dim: int
    window: int = 0
    window_kind: str = ""  # "sliding" or "chunked" when window > 0
    sinks: bool = False  # learned per-head attention sinks (gpt-oss): no SDPA kernel takes them
    softcap: float = 0.0  # attention-logit soft-capping (Gemma 2)
    qk_norm: bool = False  # RMSNorm on each query and key head (Qwen3, Gemma 3, OLMo 2 on whole q and k)

    def context(self, s: int) -> float:
        """Mean number of keys a query of an s-token causal sequence attends to: (s + 1) / 2 without a window;
        with a sliding window w, min(i, w) averaged over positions; chunked attention averages (c + 1) / 2 within
        each chunk of c. FLOP counts in planner/compute.py use s (no causal halving, as Narayanan et al. 2021);
        this ratio scales them."""
        w = self.window
        if w <= 0 or w >= s:
            return (s + 1) / 2
        if self.window_kind == "chunked":
            full, rest = divmod(s, w)
            return (full * w * (w + 1) / 2 + rest * (rest + 1) / 2) / s
        return (w * (w + 1) / 2 + (s - w) * w) / s


@dataclass(frozen=True, kw_only=True)
class MlpShape:
    kind: str = "dense"  # "dense" or "moe"
    intermediate: int = 0  # width of the dense MLP, or of one expert
    gated: bool = True  # SwiGLU-style (gate, up, down)
    experts: int = 0
    top_k: int = 0
    shared_intermediate: int = 0  # width of the shared expert(s) that every token runs (0 = none)
    # "routed": each token runs its top-k experts (transformers' experts implementations, grouped_mm by default);
    # "all_experts": every token runs through every expert, weighted by its router score (Llama 4's torch.bmm)
    dispatch: str = "routed"


@dataclass(frozen=True, kw_only=True)
class NormShape:
    path: str
    width: int
    bias: bool = False


@dataclass(frozen=True, kw_only=True)
class ParamShape:
    """A parameter of a decoder layer held by none of its linears and norms (gpt-oss's attention sinks,
    `self_attn.sinks`): its path inside the layer and its elements."""

    path: str
    elements: int


# What one decoder layer saves for backward in one training regime, per token of the micro-batch (see
# planner/activations.py `derived_layer_bytes_per_token`): (replicated bytes, TP-split bytes, bytes per attended
# position, bytes per layer independent of the tokens).
Saved = tuple[float, float, float, float]
# a mode's table at one row (micro-batch 1) where it differs from two rows and more: eager attention's torch.matmul
# saves views at one row where it saves copies beyond (a single key/value head's keys and values once rather than
# per head, MLA's value with k_nope beside it: profiler/spec_activations.py EAGER_SHAPES)
ONE_ROW_SUFFIX = "_one_row"


@dataclass(frozen=True, kw_only=True)
class LayerKind:
    """A group of decoder layers with the same parameters and attention."""

    count: int
    first: int  # index of the first layer of this kind
    params: int  # parameters of one layer of this kind, exactly as transformers builds it
    linears: tuple[LinearShape, ...]
    norms: tuple[NormShape, ...] = ()
    attention: AttentionShape
    mlp: MlpShape
    # regime ("fp32", "mixed", "bf16") -> mode -> Saved, as pairs so the record stays hashable
    saved: tuple[tuple[str, tuple[tuple[str, Saved], ...]], ...] = ()
    stream_bytes: tuple[tuple[str, int], ...] = ()  # regime -> bytes per element of the layer's input
    other_params: tuple[ParamShape, ...] = ()  # parameters held by none of its linears and norms
    # modules of one such layer a forward calls, the layer included (profiler/spec_derive.py `called_modules`);
    # 0 = not measured (specs derived before DERIVE_REVISION 5: planner.collectives.zero3_modules' rule)
    called_modules: int = 0

    def __post_init__(self) -> None:
        _coerce(self, "linears", LinearShape)
        _coerce(self, "norms", NormShape)
        _coerce(self, "other_params", ParamShape)
        if isinstance(self.attention, dict):
            object.__setattr__(self, "attention", AttentionShape(**self.attention))
        if isinstance(self.mlp, dict):
            object.__setattr__(self, "mlp", MlpShape(**self.mlp))
        if isinstance(self.saved, dict):
            object.__setattr__(self, "saved", tuple(
                (regime, tuple((mode, tuple(float(x) for x in v)) for mode, v in sorted(modes.items())))
                for regime, modes in sorted(self.saved.items())))
        elif self.saved and not isinstance(self.saved, tuple):
            object.__setattr__(self, "saved", tuple(
                (regime, tuple((mode, tuple(float(x) for x in v)) for mode, v in modes))
                for regime, modes in self.saved))
        if isinstance(self.stream_bytes, dict):
            object.__setattr__(self, "stream_bytes", tuple(sorted(self.stream_bytes.items())))
        elif self.stream_bytes and not isinstance(self.stream_bytes, tuple):
            object.__setattr__(self, "stream_bytes", tuple((k, int(v)) for k, v in self.stream_bytes))

    def table(self, regime: str) -> dict[str, Saved]:
        for name, modes in self.saved:
            if name == regime:
                return dict(modes)
        return {}

    def stream(self, regime: str) -> int:
        return dict(self.stream_bytes).get(regime, 0)


def _coerce(obj: Any, name: str, cls: type) -> None:
    value = getattr(obj, name)
    if any(isinstance(v, dict) for v in value) or not isinstance(value, tuple):
        object.__setattr__(obj, name, tuple(v if isinstance(v, cls) else cls(**v) for v in value))


def layer_kind_to_dict(kind: LayerKind) -> dict[str, Any]:
    """JSON form: the saved-bytes table as {regime: {mode: [4 numbers]}}."""
    out = dataclasses.asdict(kind)
    out["saved"] = {regime: {mode: list(v) for mode, v in modes} for regime, modes in kind.saved}
    out["stream_bytes"] = dict(kind.stream_bytes)
    return out
