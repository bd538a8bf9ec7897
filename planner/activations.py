"""Activation memory: the tensors autograd saves for backward.

Two models live here:
- `korthikanti_layer_bytes`: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
  Transformer Models", arXiv 2205.05198), Table 2, for a GPT layer (4h GeLU MLP, dropout, 16-bit).
  Used for validation and as the reference the HF model below is checked against.
- `hf_layer_bytes_per_token`: the same bookkeeping applied to the decoder layers transformers runs
  (RMSNorm upcast to fp32, RoPE, SwiGLU of width i, GQA, SDPA/flash kernels that keep no s x s
  scores, peft LoRA branches), derived by listing the saved tensors of LlamaDecoderLayer.forward
  (transformers/models/llama/modeling_llama.py) and integrations/sdpa_attention.py. The profiler's
  dry run measures the same quantity on the real model (benchmarks/accuracy.py). It serves the hand-written
  families (planner/models.py HAND_FAMILIES).
- `derived_layer_bytes_per_token`: every model read from transformers (ModelSpec.layer_kinds), composed from the
  tensors its real layers save on fake tensors (profiler/spec_activations.py), not from a per-family formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

from planner.choices import Attn, GradCkpt
from planner.model_layers import ONE_ROW_SUFFIX, AttentionShape, LayerKind, Saved
from planner.models import ModelSpec


def korthikanti_layer_bytes(s: int, b: int, h: int, a: int, t: int = 1, sequence_parallel: bool = False,
                            recompute: GradCkpt = GradCkpt.none) -> float:
    """Bytes of activations per transformer layer, Korthikanti et al. 2022, Table 2 (16-bit, dropout)."""
    sbh = s * b * h
    if recompute is GradCkpt.full:
        return 2 * sbh / (t if sequence_parallel else 1)
    if recompute is GradCkpt.selective:
        return 34 * sbh / t if sequence_parallel else sbh * (10 + 24 / t)
    if sequence_parallel:
        return sbh * (34 + 5 * a * s / h) / t
    return sbh * (10 + 24 / t + 5 * a * s / (h * t))


@dataclass(frozen=True, kw_only=True, slots=True)
class LayerTraining:
    """What of one decoder layer trains: its weights (full), LoRA branches, or nothing (frozen)."""

    weights: bool  # every weight of the layer has requires_grad (full fine-tuning)
    lora_targets: frozenset[str] = frozenset()
    lora_dropout: bool = False  # dropout > 0 makes a fresh copy of each LoRA branch's input
    # each LoRA branch casts its input to the adapters' dtype first (peft's Linear.forward `_cast_input_dtype`):
    # fp32 adapters on a 16-bit model under autocast, where the branch then saves its own 16-bit copy
    lora_input_copies: bool = False
    # bytes per element of the residual stream and of the frozen linears' outputs when not the activation dtype:
    # 4 when prepare_model_for_kbit_training made the non-quantized weights fp32 (planner.states.kbit_prepared);
    # 0 = the activation dtype
    stream_bytes: int = 0
    # 16-bit compute under autocast (fp32 masters for full fine-tuning, fp32 adapters for LoRA), as opposed to
    # bf16-true; only the measured tables of a derived model tell the two apart (derived_layer_bytes_per_token)
    mixed: bool = True
    lora_r: int = 8
    # the attention gets packed documents' mask as a materialized tensor (SDPA with --doc-len shorter than the
    # sequence: planner.activations.packed_mask); not what trains, but what every layer saves with it
    packed_mask: bool = False
    # that mask comes from the data collator, one tensor every layer shares (LLaMA-Factory's neat_packing,
    # Switches.collator_mask): no layer converts or saves a mask of its own (planner.memory.collator_mask_bytes
    # counts the shared one once per micro-batch); the repeated keys and values stay per layer
    shared_mask: bool = False
    # the forward holds one sequence (micro-batch 1, one row per sample): a derived model's "*_one_row" tables
    # where it has them (eager attention: planner/model_layers.py ONE_ROW_SUFFIX)
    one_row: bool = False


def _packed_sdpa_bytes_per_token(m: ModelSpec, *, train: LayerTraining, attn: Attn, recompute: GradCkpt,
                                 seq_len: int, act_bytes: int) -> tuple[float, float]:
    """(mask, expanded keys and values) bytes per token of one layer under SDPA with packed documents
    (sdpa_packed_mask_bytes_per_token); nothing without them, or under selective recompute."""
    if not (train.packed_mask and attn is Attn.sdpa and recompute is not GradCkpt.selective):
        return 0.0, 0.0
    e = act_bytes
    shape = AttentionShape(heads=m.num_heads, kv_heads=m.num_kv_heads, qk_head_dim=m.head_dim, v_head_dim=m.head_dim)
    keys_cast = e < 4 and (train.stream_bytes == 4 or (train.mixed and train.weights))
    return sdpa_packed_mask_bytes_per_token(shape, seq_len=seq_len, act_bytes=e, keys_cast=keys_cast,
                                            shared_mask=train.shared_mask)


@cache  # pure in hashable arguments; the search asks for it per candidate
def hf_layer_bytes_per_token(m: ModelSpec, *, act_bytes: int, attn: Attn, train: LayerTraining,
                             seq_len: int, t: int = 1, sequence_parallel: bool = False,
                             recompute: GradCkpt = GradCkpt.none) -> float:
    """Bytes saved for backward by one transformers decoder layer, per token of the micro-batch.

    e = bytes of an activation element (2 for 16-bit compute, 4 for fp32). Per token:
    - RMSNorm: `hidden_states.to(float32)` is saved by pow/mul: 4h; LayerNorm saves its input: e*h.
      Its output (e*h) is saved by the next linear when that linear's weight trains, and by a LoRA branch
      without dropout. When the norm's own weight trains (full fine-tuning), `self.weight *
      hidden_states.to(input_dtype)` also saves its 16-bit right operand, a tensor distinct from the output:
      e*h more (LlamaRMSNorm.forward; seen in benchmarks/measured/compile_saved.txt as the two
      (3, 100, 192) bf16 tensors of the eager full layer). LayerNorm computes its weight's gradient from
      the saved input and statistics: nothing more.
    - Attention: SDPA/flash save q (e*a*d), k and v (e*kv*d: transformers passes enable_gqa when there
      is no padding mask), the output (e*a*d, shared with o_proj's input) and the fp32 log-sum-exp
      (4a). Eager keeps q, k, v, the fp32 softmax output (4*a*s) and its 16-bit copy (e*a*s), and the
      transposed output copy for o_proj.
    - Gated MLP: gate output (SiLU input), SiLU output, up output: 3e*i, and their product (down's
      input, e*i) when down's weight trains or a LoRA branch without dropout reads it.
      GeLU MLP (BLOOM): GeLU input e*4h, and its output (down's input) under the same condition.
      MoE: each token visits k experts, each keeps
      its gathered input (e*h) and the gated-MLP tensors.
    - LoRA branch with dropout: the dropped-out input copy (e*in) and its bool mask (in bytes). Without dropout
      a branch reads the shared input, except when peft casts the input to the adapters' dtype first (fp32
      adapters under 16-bit autocast, `lora_input_copies`): each branch then saves its own e-byte copy, the
      autocast cast of that fp32 copy (peft/tuners/lora/layer.py Linear.forward; seen per target in
      tests/profiler/test_saved_activations.py).
    - A 4-bit model after prepare_model_for_kbit_training (`train.stream_bytes` = 4): the residual stream and
      the frozen linears' outputs are fp32 (bitsandbytes casts each output back to its input's dtype), so the
      MLP's tensors and the checkpointed layer input take 4 bytes; SDPA's autocast still saves 16-bit q, k, v
      and output, and each LoRA branch saves its own 16-bit cast of the fp32 input (`lora_input_copies`). The
      norms save their fp32 input (4h) as before. Measured to the byte: tests/profiler/test_saved_activations.py.
    Tensor parallelism (Megatron-style, Korthikanti Sec. 4.1) splits what lies between the f and g
    operators (attention and MLP internals) by t; sequence parallelism also splits the norms and
    the linears' inputs. Selective recompute drops the attention core (Korthikanti Sec. 4.2);
    full recompute keeps the layer input only (e*h, or the fp32 stream's 4h) and is accounted by the caller.
    """
    if m.layer_kinds:
        return derived_layer_bytes_per_token(m, act_bytes=act_bytes, attn=attn, train=train, seq_len=seq_len, t=t,
                                             sequence_parallel=sequence_parallel, recompute=recompute)
    h, e = m.hidden_size, act_bytes
    q, kv, a = m.q_dim, m.kv_dim, m.num_heads
    s = train.stream_bytes or e
    if recompute is GradCkpt.full:
        return s * h / (t if sequence_parallel else 1)
    lora = train.lora_targets
    linears = {lin.name: lin for lin in m.linears()}

    def consumer_saves(names: tuple[str, ...]) -> bool:
        return train.weights or any(n in lora and reads_shared_input(train) for n in names)

    def lora_copies(names: tuple[str, ...]) -> float:
        if reads_shared_input(train):
            return 0.0
        per_element = e + 1 if train.lora_dropout else e  # the copy, and the dropout's bool mask
        return sum(per_element * linears[n].in_features for n in names if n in lora)

    attn_in, attn_out, mlp_in, mlp_out = linear_groups(m)

    norm_in = norm_saved_bytes_per_token(m, act_bytes=e, weight_trains=train.weights)
    replicated = 0.0  # outside the TP region: split only by sequence parallelism
    for consumers in (attn_in, mlp_in):
        replicated += norm_in
        if consumer_saves(consumers) or train.weights:
            replicated += e * h
        replicated += lora_copies(consumers)

    parallel = _attention_core_bytes(e=e, q=q, kv=kv, a=a, seq_len=seq_len, attn=attn, recompute=recompute,
                                     o_proj_saves=consumer_saves(attn_out))  # inside attention / MLP: split by t
    parallel += lora_copies(attn_out)
    parallel += _mlp_bytes(m, e=s, down_saves=consumer_saves(mlp_out))
    parallel += lora_copies(mlp_out)
    mask, repeated = _packed_sdpa_bytes_per_token(m, train=train, attn=attn, recompute=recompute, seq_len=seq_len,
                                                  act_bytes=e)
    parallel += repeated
    if sequence_parallel:
        return (replicated + parallel) / t + mask
    return replicated + parallel / t + mask


# litgpt's LoRAQKVLinear (lit_gpt/lora.py of lit-gpt 8641822) adapts the fused qkv linear; transformers' names of
# its parts, as ftplan's --lora-targets gives them
LITGPT_QKV = ("q_proj", "k_proj", "v_proj")


@cache  # pure in hashable arguments; the search would ask per candidate
def litgpt_layer_bytes_per_token(m: ModelSpec, *, act_bytes: int, attn: Attn, train: LayerTraining) -> float:
    """Bytes one litgpt Block saves for backward, per token: lit-gpt at 8641822 (the commit litgpt's resource tables
    measured, tutorials/resource-tables.md), a Llama-shaped model with LoRA, frozen base weights, no checkpointing,
    SDPA/flash. Listed from the source and measured op by op on this CPU (saved_tensors_hooks over a 2-layer
    Llama-2-shaped GPT of that commit, CUDA's dropout: 39.24 h per token where this formula gives 39.16 h and
    transformers' layer 38.1 h; the rest is per-layer constants, the zero-pad index and the conv weight):
    - RMSNorm (lit_gpt/rmsnorm.py:19-21) computes in the activation dtype: `x * x` and `x * rsqrt(...)` save x
      (e*h), no fp32 copy; the frozen weight saves nothing more. Two per layer.
    - Attention (lit_gpt/model.py:196-227): one fused linear gives qkv (e(q + 2kv) per token); q, k, v are views of
      it (`view`, `permute`, `split`, and `reshape` at 215 is a view for MHA). RoPE and `torch.cat` (219-220) make
      new q (e*q) and k (e*kv), but v stays a view, so SDPA's saved v keeps the whole fused output alive; SDPA/flash
      also keeps its output (e*q) and the fp32 log-sum-exp (4a). Under GQA (1 < groups < heads) `expand` +
      `reshape` copy k and v to all heads (e*q each) and the fused output is not kept.
    - LoRA on the fused linear (lit_gpt/lora.py:375-385): one dropout of the shared input (its output e*h, saved by
      lora_A's matmul, and CUDA's bool mask, h; without dropout lora_A saves the input itself), then `zero_pad`
      (lora.py:293-294) scatters the adapted outputs with `index_copy`, whose backward keeps `source`: a 16-bit
      tensor of the adapted widths (e(q + kv) for query and value), unless all three are adapted (no padding).
      Other targets (the projection, the MLP) are LoRALinear (lora.py:143-150): each its dropout copy and mask, as
      peft's; without dropout each saves the input it reads (the attention output is SDPA's already).
    - LLaMAMLP (model.py:302-304): SiLU input, SiLU output and the up projection's output, 3e*i, as transformers'.
    The bookkeeping outside these (a trained weight, checkpointing, a 4-bit stream) is transformers' (the caller
    uses this only for a frozen-weight LoRA layer without recompute)."""
    h, e = m.hidden_size, act_bytes
    q, kv, a = m.q_dim, m.kv_dim, m.num_heads
    lora = train.lora_targets
    linears = {lin.name: lin for lin in m.linears()}
    norms = 2.0 * e * h
    groups_copy = 1 < m.num_kv_heads < m.num_heads
    if attn is Attn.eager:  # litgpt 8641822 always calls SDPA (or flash-attn): no eager path
        raise ValueError("litgpt's attention is SDPA or flash-attn, not eager")
    if groups_copy:
        core = e * q + e * q + e * q + e * q + 4.0 * a  # q roped, k and v expanded copies, the output
    else:
        core = e * (q + 2 * kv) + e * q + e * kv + e * q + 4.0 * a  # the fused output kept by v, q and k roped, out
    adapted = [n for n in LITGPT_QKV if n in lora]
    branches = 0.0
    if adapted:
        branches += (e + 1.0) * h if train.lora_dropout else e * h  # the dropout's copy and mask, or n_1 itself
        if len(adapted) < 3:
            branches += e * sum(linears[n].out_features for n in adapted)
    if train.lora_dropout:
        branches += sum((e + 1.0) * linears[n].in_features for n in lora if n not in LITGPT_QKV)
    else:  # a branch saves the input it reads: the attention output is SDPA's already; n_2 once; the MLP product
        branches += (e * h if lora & {"gate_proj", "up_proj"} else 0.0) + (
            e * m.intermediate_size if "down_proj" in lora else 0.0)
    return norms + core + branches + _mlp_bytes(m, e=e, down_saves=False)


def reads_shared_input(train: LayerTraining) -> bool:
    """Whether a LoRA branch saves the very tensor its base linear reads (no dropout, no dtype cast)."""
    return not train.lora_dropout and not train.lora_input_copies


def norm_saved_bytes_per_token(m: ModelSpec, *, act_bytes: int, weight_trains: bool) -> float:
    """Per token, what one norm saves for its own backward (not its output, which its readers save):
    LayerNorm its input (e*h); RMSNorm the fp32 upcast of its input (4h) and, when its weight trains, the
    16-bit normalized tensor the weight multiplies (e*h). See hf_layer_bytes_per_token."""
    if m.layernorm_bias:
        return float(act_bytes * m.hidden_size)
    return rmsnorm_saved_bytes_per_token(m.hidden_size, act_bytes=act_bytes, weight_trains=weight_trains)


def rmsnorm_saved_bytes_per_token(hidden: int, *, act_bytes: int, weight_trains: bool) -> float:
    """transformers' RMSNorm: the fp32 upcast of its input (4h) and, when its weight trains, the 16-bit
    normalized tensor the weight multiplies (e*h)."""
    return 4.0 * hidden + (act_bytes * hidden if weight_trains else 0.0)


def linear_groups(m: ModelSpec) -> tuple[tuple[str, ...], ...]:
    """A layer's linears grouped by the tensor they read: attention input, attention output, MLP input,
    MLP output (transformers' module names)."""
    if m.model_type == "bloom" or m.model_type == "chatglm":
        return ("query_key_value",), ("dense",), ("dense_h_to_4h",), ("dense_4h_to_h",)
    if m.model_type == "baichuan":
        return ("W_pack",), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)
    return ("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)


def kept_quantized_input_bytes_per_token(m: ModelSpec, *, act_bytes: int, attn: Attn, train: LayerTraining,
                                         t: int = 1) -> float:
    """Per token per layer, the inputs of the frozen 4-bit linears that bitsandbytes < 0.43.2 keeps for
    backward (planner.bnb_versions) beyond what hf_layer_bytes_per_token already counts saved: one tensor per
    group of linears reading it, unless a LoRA branch without dropout saves it already; o_proj's input is
    the attention output SDPA/flash keep anyway (eager attention: its transposed copy). MoE experts are left
    out (their gathered inputs are counted there)."""
    if m.is_moe:
        return 0.0
    e, lora = act_bytes, train.lora_targets
    linears = {lin.name: lin for lin in m.linears()}
    kept = 0.0
    for i, group in enumerate(linear_groups(m)):
        if train.weights or any(n in lora and reads_shared_input(train) for n in group):
            continue  # saved already
        if i == 1 and attn is not Attn.eager:
            continue  # the attention output, saved by the SDPA / flash kernel
        width = linears[group[0]].in_features
        kept += e * width / (t if i in (1, 3) else 1)  # attention output and MLP product lie inside the TP split
    return kept


def _attention_core_bytes(*, e: int, q: int, kv: int, a: int, seq_len: int, attn: Attn, recompute: GradCkpt,
                          o_proj_saves: bool) -> float:
    """Per token, what the attention core saves (before the TP split); see hf_layer_bytes_per_token."""
    out = 0.0
    if recompute is not GradCkpt.selective:
        if attn is Attn.eager:
            out += e * (q + 2 * kv) + (4 + e) * a * seq_len + e * q
        else:
            out += e * (q + 2 * kv) + e * q + 4 * a
    else:
        # q, k, v are kept to recompute the core; the scores are not. The core's output stays as
        # o_proj's input when o_proj needs it (Korthikanti et al. 2022, Sec. 4.2: selective recompute
        # keeps the linear projection's 2sbh input, hence sbh(10 + 24/t) in Table 2)
        out += e * (q + 2 * kv)
        if attn is not Attn.eager and o_proj_saves:
            out += e * q
    if attn is Attn.eager and o_proj_saves:
        out += e * q  # transpose(1, 2).contiguous() copy feeding o_proj
    return out


def _mlp_bytes(m: ModelSpec, *, e: int, down_saves: bool) -> float:
    """Per token, what the MLP saves (before the TP split); see hf_layer_bytes_per_token."""
    if m.is_moe:
        k = m.experts_per_token
        return k * (e * m.hidden_size + 4 * e * m.intermediate_size) + 4 * m.num_experts
    i = m.intermediate_size
    if m.gated_mlp:
        # the product act(gate) * up is down_proj's input: saved only when down_proj's weight trains or a
        # LoRA branch without dropout reads it (a frozen linear saves no input; the dry run shows it)
        return 3 * e * i + (e * i if down_saves else 0.0)
    return e * i + (e * i if down_saves else 0.0)


def logits_bytes_per_token(m: ModelSpec, *, act_bytes: int, t: int = 1) -> float:
    """Peak of the LM head and loss, per token: log_softmax's saved fp32 output (4V) and, in the loss
    backward, the fp32 gradients of nll and log_softmax (2 x 4V) before the cast back to 16 bits: 12V.
    The fp32 upcast that ForCausalLMLoss makes (4V) is freed before backward, and so are the 16-bit
    logits (e*V): the Trainer keeps only the loss of the model's outputs (transformers/trainer.py,
    `compute_loss` returns `loss` and drops `outputs` before `backward`); forward's own peak,
    e*V + 4V + 4V, is lower. `act_bytes` is kept for callers; the dry run measures 12V.
    (transformers/loss/loss_utils.py ForCausalLMLoss; vocab-parallel cross-entropy splits V by t.)"""
    v = m.vocab_size / t
    return 12 * v


# trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE and trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE (TRL 1.16)
TRL_TOKEN_TILE = 4096
TRL_VOCAB_TILE = 32768
# fp32 tile-sized tensors live at once in the torch fallback of the backward (`_backward_tile`): y, z, log_p,
# p and grad, plus two transients of `grad += g * (is_target.float() - p)` (CPython frees each operand once
# consumed); and the bool `is_target`. Counted from the code and seen in a traced CPU run (7 x [508, 8192] fp32)
_TRL_FALLBACK_FP32_TILES = 7


def trl_logprob_head_bytes(m: ModelSpec, *, tokens: int, compute_bytes: int, triton: bool, head_trains: bool,
                           t: int = 1) -> float:
    """Peak bytes of the LM head under TRL's DPOTrainer, which never materializes the logits: its fused head
    (trl/trainer/utils.py add_fused_lm_head -> ChunkedLogProbFunction) projects tiles of at most 4096 tokens
    x 32768 vocabulary entries into one buffer allocated at the full [min(N, 4096), 32768] width in the compute
    dtype, folding each tile into per-token fp32 statistics; backward re-projects each tile and accumulates the
    hidden-state gradient (N x h) and, when the head trains, the weight gradient (V x h) in fp32. On CUDA the
    Triton kernels work inside the tile; the torch fallback (the CPU) adds seven fp32 tile-sized tensors and a
    bool mask. N = tokens of the micro-batch (chosen + rejected); bytes, per GPU."""
    rows = min(tokens, TRL_TOKEN_TILE)
    cols = min(m.vocab_size / t, TRL_VOCAB_TILE)
    total = rows * TRL_VOCAB_TILE * compute_bytes + 4.0 * tokens * m.hidden_size
    if head_trains:
        total += 4.0 * m.vocab_size / t * m.hidden_size
    if not triton:
        total += rows * cols * (4 * _TRL_FALLBACK_FP32_TILES + 1)
    return total


# --- models read from transformers: composed from the measured tables (profiler/spec_activations.py) ------------

MEASURED_LORA_R = 8  # the rank profiler/spec_activations.py measures LoRA at


def regime(act_bytes: int, train: LayerTraining) -> str:
    """Which measured table applies: fp32, 16-bit under autocast ("mixed"), or bf16 throughout."""
    if act_bytes >= 4:
        return "fp32"
    return "mixed" if train.mixed else "bf16"


def _sub(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def _add(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _lora_delta(kind: LayerKind, table: dict[str, Saved], train: LayerTraining, act_bytes: int) -> tuple[float, ...]:
    """What LoRA adds to the frozen layer: peft's all-linear selection as measured, or per group of linears that
    read one tensor (the first target of a group saves the shared input and its branch; each further one its
    own branch), plus lora_B's r-wide input beyond the measured rank (e r per adapted linear and token)."""
    zero = (0.0, 0.0, 0.0, 0.0)
    frozen = table["frozen"]
    targets = train.lora_targets
    suffix = ":dropout" if train.lora_dropout else ""
    chosen = [lin for lin in kind.linears if lin.name in targets and (lin.lora_targetable or lin.all_linear)]
    all_linear = {lin.name for lin in kind.linears if lin.all_linear}
    if set(targets) >= all_linear and f"lora_all{suffix}" in table:
        delta = _sub(table[f"lora_all{suffix}"], frozen)
    else:
        delta = zero
        groups: dict[str, int] = {}
        for lin in chosen:
            if lin.group:
                groups[lin.group] = groups.get(lin.group, 0) + 1
        for group, k in groups.items():
            whole = table.get(f"lora:{group}{suffix}")
            if whole is None:
                continue
            size = len(group.split(","))
            d_group = _sub(whole, frozen)
            if k >= size:
                delta = _add(delta, d_group)
                continue
            d_one = _sub(table[f"lora1:{group}{suffix}"], frozen)
            own = tuple(x / (size - 1) for x in _sub(d_group, d_one))
            delta = _add(delta, _add(d_one, tuple((k - 1) * x for x in own)))
    extra_r = (train.lora_r - MEASURED_LORA_R) * act_bytes * len(chosen)
    return _add(delta, (0.0, extra_r, 0.0, 0.0))


def _mode_table(table: dict[str, Saved], name: str, *, attn: Attn, train: LayerTraining) -> Saved:
    """The frozen or full layer's table under the plan's attention, at one row where it has one of its own."""
    mode = f"{name}_eager" if attn is Attn.eager else name
    if train.one_row and mode + ONE_ROW_SUFFIX in table:
        return table[mode + ONE_ROW_SUFFIX]
    return table[mode]


def _kind_saved(kind: LayerKind, *, act_bytes: int, attn: Attn, train: LayerTraining) -> tuple[float, ...]:
    """(replicated, split, per attended position, per layer) bytes one layer of `kind` saves, no recompute."""
    reg = regime(act_bytes, train)
    if train.stream_bytes == 4 and not train.weights:
        # QLoRA after prepare_model_for_kbit_training: an fp32 stream through 4-bit linears that return fp32. The
        # fp32 table's frozen layer stands in for it (it keeps the attention's q, k, v at 4 bytes where autocast
        # keeps 2: an overestimate of 2(2q + 2kv) bytes per token); the branches are the mixed table's
        table = kind.table("fp32")
        base = _mode_table(table, "frozen", attn=attn, train=train)
        lora = kind.table("mixed")
        return _add(base, _lora_delta(kind, lora, train, 2)) if train.lora_targets else base
    table = kind.table(reg)
    base = _mode_table(table, "full" if train.weights else "frozen", attn=attn, train=train)
    if not train.weights and train.lora_targets:
        base = _add(base, _lora_delta(kind, table, train, act_bytes))
    return base


def _kind_stream_bytes(kind: LayerKind, *, act_bytes: int, train: LayerTraining) -> int:
    """Bytes per element of the layer's input, which full recompute keeps: fp32 under mixed precision for full
    fine-tuning (the fp32 embedding starts an fp32 residual stream) and after kbit preparation."""
    if train.stream_bytes:
        return train.stream_bytes
    reg = regime(act_bytes, train)
    key = "mixed_full" if reg == "mixed" and train.weights else reg
    return kind.stream(key) or act_bytes


def derived_layer_bytes_per_token(m: ModelSpec, *, act_bytes: int, attn: Attn, train: LayerTraining, seq_len: int,
                                  t: int = 1, sequence_parallel: bool = False,
                                  recompute: GradCkpt = GradCkpt.none) -> float:
    """Per token, the mean over a derived model's layers of what one saves for backward, composed from the tables
    measured on its real layers (profiler/spec_activations.py): the frozen or fully trained layer of the plan's
    regime, eager attention's per-position scores (the full s x s matrix: transformers' eager path masks a
    sliding window, it does not shorten the rows), LoRA's branches per group of linears, tensor parallelism
    splitting all but the replicated residual-width tensors (sequence parallelism those too; Korthikanti et al.
    2022, Sec. 4.2.2). Full recompute keeps the layer input; selective recompute drops the attention core's output
    and log-sum-exp (e a d_v + 4a: the tensors SDPA saves beyond q, k, v) and eager's scores. Per-layer constants
    (LoRA on fused experts) are `derived_layer_fixed_bytes`."""
    total = 0.0
    for kind in m.layer_kinds:
        if recompute is GradCkpt.full:
            per = _kind_stream_bytes(kind, act_bytes=act_bytes, train=train) * m.hidden_size
            total += kind.count * per / (t if sequence_parallel else 1)
            continue
        repl, par, per_ctx, _ = _kind_saved(kind, act_bytes=act_bytes, attn=attn, train=train)
        par += per_ctx * seq_len
        mask = 0.0
        if train.packed_mask and attn is Attn.sdpa:
            # the documents' mask replaces a window's (one materialized mask per layer, whatever it masks)
            if recompute is not GradCkpt.selective:
                wider = _kind_stream_bytes(kind, act_bytes=act_bytes, train=train) > act_bytes
                mask, repeated = sdpa_packed_mask_bytes_per_token(kind.attention, seq_len=seq_len,
                                                                  act_bytes=act_bytes, keys_cast=wider,
                                                                  shared_mask=train.shared_mask)
                par += repeated
        else:
            repl += sdpa_window_mask_bytes_per_token(kind, attn=attn, seq_len=seq_len, act_bytes=act_bytes,
                                                     train=train)
        if recompute is GradCkpt.selective:
            a = kind.attention
            par -= act_bytes * a.heads * a.v_head_dim + 4 * a.heads + per_ctx * seq_len
        total += kind.count * (repl / (t if sequence_parallel else 1) + par / t + mask)
    return total / m.num_layers


def sdpa_window_mask_bytes_per_token(kind: LayerKind, *, attn: Attn, seq_len: int, act_bytes: int,
                                     train: LayerTraining) -> float:
    """A sliding-window (or chunked) layer under SDPA, past its window, gets a materialized mask: transformers
    builds a boolean (b, 1, s, s) mask (masking_utils.sdpa_mask; it skips the mask while s <= the window,
    `_ignore_causal_mask_sdpa`), and SDPA turns it into an additive mask of the query's dtype on every call
    (aten/src/ATen/native/transformers/attention.cpp, convert_boolean_attn_mask), which the memory-efficient kernel
    keeps for backward: about e s bytes per token and layer, measured past the window ("*_window" tables; a
    small Gemma 3's dry run checks it, tests/profiler/test_dryrun_families.py). FlashAttention-2 takes the window
    as an argument and builds no mask; eager attention adds the mask to scores it keeps anyway."""
    w = kind.attention.window
    if attn is not Attn.sdpa or w <= 0 or seq_len <= w:
        return 0.0
    table = kind.table("fp32" if train.stream_bytes == 4 else regime(act_bytes, train))
    entry = table.get("full_window" if train.weights else "frozen_window")
    return entry[0] + entry[2] * seq_len if entry else float(act_bytes * seq_len)


def packed_mask(attn: Attn, seq_len: int, doc_len: int | None, *, collator: bool = False) -> bool:
    """Whether the attention gets the packed documents' mask as a tensor: SDPA, with documents shorter than the
    sequence. transformers reads packing from position_ids that restart inside a row when no 2-D attention mask
    and no cache are passed (masking_utils._preprocess_mask_arguments -> find_packed_sequence_indices; TRL's
    SFTTrainer passes use_cache=False and its padding-free collator no attention_mask) and then builds the mask
    (create_causal_mask: `packed_sequence_mask` sets allow_is_causal_skip = False, so sdpa_mask never returns None
    for is_causal). Documents as long as the sequence leave one per row, which find_packed_sequence_indices reports
    as no packing (is_causal, no mask). FlashAttention-2 gets no mask (varlen); eager attention adds its float mask
    to scores it keeps anyway. A mask from the data collator (`collator`: LLaMA-Factory's neat_packing, whose
    SFTDataCollatorWith4DAttentionMask builds it under any attention but FlashAttention-2, data/collator.py) reaches
    SDPA whatever the documents' length."""
    return attn is Attn.sdpa and doc_len is not None and (collator or 0 < doc_len < seq_len)


def sdpa_packed_mask_bytes_per_token(a: AttentionShape, *, seq_len: int, act_bytes: int,
                                     keys_cast: bool = False, shared_mask: bool = False) -> tuple[float, float]:
    """(mask, repeated keys and values): bytes per token that one layer under SDPA saves for a packed sequence's
    materialized mask beyond what it saves under is_causal, e = the query's bytes per element.
    - The mask: transformers builds one boolean (b, 1, s, s) tensor per forward (masking_utils.sdpa_mask, the
      `packed_sequence_mask_function` and causal mask broadcast over (batch, 1, q, kv)) and hands it to every layer;
      SDPA converts it on each call into an additive mask of the query's dtype (aten/src/ATen/native/transformers/
      attention.cpp convert_boolean_attn_mask: `where(mask, 0, -inf)`, a new tensor per layer), which the kernel
      keeps for backward: CUDA's memory-efficient kernel (the first in torch 2.13's priority order, flash, efficient,
      math, cuDNN, to take a mask: `aten::_scaled_dot_product_efficient_attention_backward(..., Tensor attn_bias,
      ...)`) and the CPU's flash kernel (`_scaled_dot_product_flash_attention_for_cpu_backward(..., Tensor?
      attn_mask)`): e s per token and layer. The mask is not split by the heads' tensor parallelism. A mask from
      the data collator (`shared_mask`: LayerTraining.shared_mask) is one tensor every layer shares: no layer
      converts or saves one of its own, 0 here (planner.memory.collator_mask_bytes counts it once per micro-batch).
    - Keys and values: with a mask transformers does not pass enable_gqa on CUDA or the CPU
      (integrations/sdpa_attention.py use_gqa_in_sdpa: `attention_mask is None and ...`) and expands them with
      repeat_kv to every query head, a copy the kernel saves in place of the kv-head tensors:
      e (heads - kv_heads)(d_qk + d_v) more, split by tensor parallelism. With one kv head repeat_kv's reshape of the
      expanded tensor is a view (the size-1 dimension merges with the stride-0 one): no copy, unless autocast casts
      the keys to the compute dtype after it (`keys_cast`: an fp32 residual stream under 16-bit autocast, where
      RoPE's fp32 cos / sin leave the keys fp32 and the values come 16-bit from v_proj), which writes the expanded
      keys out: e (heads - 1) d_qk.
    Measured to the byte on the CPU (a transformers Llama under SDPA with packed position_ids,
    tests/planner/test_packed_sdpa_mask.py), and the same sums as the window tables measured on Gemma 3 4B and
    Llama 4 Scout (`sdpa_window_mask_bytes_per_token`: the same mask path for a sliding window)."""
    repeated = 0.0
    if 1 < a.kv_heads < a.heads:
        repeated = float(act_bytes * (a.heads - a.kv_heads) * (a.qk_head_dim + a.v_head_dim))
    elif a.kv_heads == 1 < a.heads and keys_cast:
        repeated = float(act_bytes * (a.heads - 1) * a.qk_head_dim)
    return (0.0 if shared_mask else float(act_bytes * seq_len)), repeated


@lru_cache(maxsize=8192)  # pure in hashable arguments; the search asks for it per candidate
def derived_layer_fixed_bytes(m: ModelSpec, *, act_bytes: int, attn: Attn, train: LayerTraining,
                              recompute: GradCkpt = GradCkpt.none, t: int = 1) -> float:
    """Mean bytes per layer that one layer saves whatever the tokens: LoRA on fused expert tensors, which peft
    applies as a parametrization, makes the merged expert weights W + B A the grouped matmul saves (peft/tuners/
    lora/layer.py _LoraFactorsProxy: a full copy of the layer's experts). 0 for hand-written families and under
    full recompute (the recomputed layer's are counted by the caller's one-layer term)."""
    if not m.layer_kinds or recompute is GradCkpt.full:
        return 0.0
    total = sum(kind.count * _kind_saved(kind, act_bytes=act_bytes, attn=attn, train=train)[3]
                for kind in m.layer_kinds)
    return total / m.num_layers / t
