"""What one decoder layer of each kind saves for backward, measured on the real transformers layers with fake tensors.

The model is reduced to one layer of each kind (their own modules, `layer_types` and indices kept) and run forward
on fake tensors under `saved_tensors_hooks` as the dry run runs it (profiler/dryrun.py: the same dtypes per
precision, autocast, peft with fp32 adapters under mixed precision, CUDA's dropout mask, the unpacked-batch mask
path, `enable_input_require_grads` so that a layer's input needs a gradient as in every layer after the first).
Every storage saved while a layer runs is charged to that layer once; parameters and autocast's weight casts are
not activations (the dry run counts them apart), nor are the tensors the model hands every layer (rotary cos/sin,
attention masks), which are charged to the model once.

Each mode is run at two or three (batch, sequence) shapes and fitted as bytes = K + b s A + b s^2 C: A per token
(split into the tensors of the residual width h, which tensor parallelism replicates, and the rest, which it
splits), C per token and attended position (eager attention's scores), K per layer (LoRA on fused experts saves
the merged expert weights, whatever the tokens). Eager attention is fitted at two rows and more, and at one row
apart (EAGER_SHAPES says why). The planner composes these numbers (planner/activations.py
`derived_layer_bytes_per_token`); tests/planner/test_model_derive.py checks the composition against direct runs.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten

from profiler.tracker import StorageTracker

REGIMES = ("fp32", "mixed", "bf16")
# sequence lengths of the fits: short (fake tensors cost no memory, but each op costs time either way)
S1, S2 = 16, 32
ONE_SHAPE = ((1, S1),)
# bytes = K + b s A: K per layer (Gemma's (1 + weight) norm scales, the merged expert weights of LoRA on fused
# experts), A per token
SDPA_SHAPES = ((1, S1), (2, S1))
# bytes = K + b s A + b s^2 C, fitted at two rows or more: eager attention's torch.matmul folds (b, heads) into
# bmm's batch axis (aten/src/ATen/native/LinearAlgebra.cpp `_matmul_impl`: expand, then reshape to 3-D), and bmm
# saves the folded operands for backward. At one row that reshape is a view of whatever the operand views, beyond
# it a copy of the operand's own elements whenever the operand is not laid out (b, h)-contiguous, so one row saves
# other bytes per token than two:
# - one key/value head (Gemma 3 1B): transformers' repeat_kv (models/gemma3/modeling_gemma3.py; the same in every
#   family) expands (b, 1, s, d) to (b, 1, n_rep, s, d) and reshapes to (b, h, s, d), a stride-0 view; one row
#   saves the keys and values once, more rows once per head: 2 (h - 1) d e bytes per token more. Fitted from one
#   row and two, that step went into K and C, negative (-176,128 bytes per layer and -368 per token and position
#   in fp32), and the planned activations fell as the sequence grew.
# - a value sliced out of a wider projection (DeepSeek-V3's MLA: models/deepseek_v3/modeling_deepseek_v3.py splits
#   kv_b_proj's output into k_nope and the value): one row saves the value as a view, which keeps the whole output
#   (k_nope too: a d_nope h e bytes per token more), more rows a copy of the value alone. Fitted from one row and
#   two, that went into K and C, positive (C = 4,608 bytes per position where the scores take 512 in fp32).
# One row (micro-batch 1) is fitted apart from three lengths (bytes = K + s A + s^2 C, `fit_one_row`) and kept as
# its own table where it differs (planner/model_layers.py ONE_ROW_SUFFIX).
EAGER_SHAPES = ((2, S1), (4, S1), (2, S2))
S3 = 48
EAGER_ONE_ROW_SHAPES = ((1, S1), (1, S2), (1, S3))
LORA_R = 8  # the rank measured; the planner adds (r - 8) e per adapted linear for lora_B's saved r-wide input
LORA_DROPOUT = 0.05


@dataclass(frozen=True)
class Mode:
    """What trains in one measurement: nothing, every weight, or LoRA on `targets` (module paths inside a layer;
    ("all-linear",) for peft's own selection) and on `params` (parameter paths inside a layer: fused expert tensors,
    routers that are not nn.Linear, which peft adapts through `target_parameters`), or on `names`: leaf names passed
    to peft as a list, as a user writes them, which peft's MoE conversion maps to fused expert tensors (planner/
    peft_moe.py)."""

    name: str
    weights: bool = False
    targets: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    dropout: float = 0.0
    attn: str = "sdpa"


@dataclass
class LayerRun:
    repl: int = 0
    par: int = 0
    stream_bytes: int = 0


@dataclass
class Run:
    layers: dict[int, LayerRun] = field(default_factory=dict)
    shared_saved: int = 0  # model-level tensors (cos/sin, masks) some layer saved, counted once
    inputs: dict[int, dict[str, int]] = field(default_factory=dict)  # layer -> linear path -> serial of its input
    called: dict[int, set[str]] = field(default_factory=dict)  # layer -> paths of its submodules the forward called


def _dtypes(regime: str, weights: bool) -> tuple[torch.dtype, bool]:
    """(weight dtype, autocast) as the dry run builds the model: fp32 masters under mixed precision for full
    fine-tuning, 16-bit frozen weights otherwise, bf16 throughout under bf16-true."""
    if regime == "fp32":
        return torch.float32, False
    if regime == "bf16":
        return torch.bfloat16, False
    return (torch.float32 if weights else torch.bfloat16), True


def prepare(model: nn.Module, regime: str, mode: Mode, layers_prefix: str) -> nn.Module:
    """The reduced model with the regime's dtypes, what trains, and peft LoRA when the mode adapts anything."""
    from planner.states import fp32_adapters
    from planner.strategy import Precision
    from profiler.dryrun import emulate_cuda_dropout

    dtype, _ = _dtypes(regime, mode.weights)
    model = copy.deepcopy(model).to(dtype)
    model.requires_grad_(mode.weights)
    if mode.targets or mode.params or mode.names:
        from peft import LoraConfig, get_peft_model

        targets: Any = None
        if mode.names:
            targets = list(mode.names)
        elif mode.targets == ("all-linear",):
            targets = "all-linear"
        elif mode.targets:
            # full module paths, so a leaf name shared by other linears (gate_proj of a shared expert) stays out
            alternatives = "|".join(t.replace(".", r"\.") for t in mode.targets)
            targets = rf".*{layers_prefix.replace('.', chr(92) + '.')}\.\d+\.({alternatives})"
        lcfg = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=mode.dropout, target_modules=targets,
                          target_parameters=parameter_targets(model, mode.params, layers_prefix) or None,
                          task_type="CAUSAL_LM")
        precision = {"fp32": Precision.fp32, "mixed": Precision.bf16_mixed, "bf16": Precision.bf16_true}[regime]
        model = get_peft_model(model, lcfg, autocast_adapter_dtype=fp32_adapters(precision))
        if regime == "bf16":
            model.to(torch.bfloat16)
    emulate_cuda_dropout(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if mode.attn == "sdpa" and not getattr(type(base), "_supports_sdpa", False):
        # no SDPA path (gpt-oss's attention sinks): its FlashAttention path saves what SDPA's flash kernel saves
        # (q, k, v, the output and the log-sum-exp), so SDPA stands in for it here (the sinks do not change what
        # is saved per token: one scalar per head)
        base.config._attn_implementation_internal = "sdpa"
    else:
        base.set_attn_implementation(mode.attn)
    base.config.use_cache = False
    base.enable_input_require_grads()
    model.train()
    return model


def parameter_targets(model: nn.Module, params: tuple[str, ...], layers_prefix: str) -> list[str]:
    """peft `target_parameters` for parameter paths inside a layer: the full name of each in every layer that holds
    it, as peft's own all-linear conversion adapts fused experts and routers (peft/utils/
    transformers_weight_conversion.py _convert_peft_config_moe moves them to target_parameters; peft/tuners/
    tuners_utils.py _inject_parameters matches a name exactly or as a dotted suffix). A regex in target_modules
    cannot name them: it matches modules, and a fused tensor is a parameter."""
    if not params:
        return []
    prefix = layers_prefix + "."
    out = []
    for name, _ in model.named_parameters():
        if not name.startswith(prefix):
            continue
        index, _, inner = name[len(prefix):].partition(".")
        if index.isdigit() and inner in params:
            out.append(name)
    return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def fake_patches() -> contextlib.ExitStack:
    """What the dry run patches to run transformers on fake tensors (profiler.dryrun.fake_tensor_patches)."""
    from profiler.dryrun import fake_tensor_patches

    return fake_tensor_patches()


def run_once(model: nn.Module, layers: nn.ModuleList, regime: str, mode: Mode, shape: tuple[int, int],
             hidden: int, linear_paths: dict[int, list[str]] | None = None) -> Run:
    """One forward of the prepared model on fake tokens of `shape`; what each layer saved."""
    from profiler.dryrun import retie_embeddings

    _, autocast_on = _dtypes(regime, mode.weights)
    tracker = StorageTracker()
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    run = Run()
    seen: set[int] = set()
    shared: set[int] = set()
    current: list[int | None] = [None]
    handles = []

    stack: list[tuple[str, nn.Module]] = []
    norm_outputs: set[int] = set()  # what the layer-level norms return: the residual-width, TP-replicated inputs
    module_inputs: dict[int, int] = {}  # id(module) -> serial of its first input

    def push(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            stack.append((path, module))
            if current[0] is not None:
                run.called.setdefault(current[0], set()).add(path)
            first = _tensors((args, kwargs))
            if first:
                module_inputs[id(module)] = tracker.serial_of(first[0]) or -1
        return hook

    def pop(path: str, layer_norm: bool):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if stack and stack[-1][1] is module:
                stack.pop()
            if layer_norm:
                for t in _tensors(output):
                    serial = tracker.serial_of(t)
                    if serial is not None:
                        norm_outputs.add(serial)
        return hook

    def replicated() -> bool:
        """Saved by a layer-level norm, or by a linear (with its LoRA branch) that reads a layer-level norm's output:
        the tensors outside Megatron's f/g operators, which tensor parallelism replicates (Korthikanti et al.
        2022, Sec. 4.2.2)."""
        for path, module in reversed(stack):
            if "." not in path and _is_layer_norm(module):
                return True
            if _is_lora_layer(module):  # its branch's copies belong with the input the wrapped linear reads
                return module_inputs.get(id(module), -1) in norm_outputs
        linear = next((m for _, m in reversed(stack) if isinstance(m, nn.Linear)), None)
        return linear is not None and module_inputs.get(id(linear), -1) in norm_outputs

    def pre(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            current[0] = index
            hidden_states = args[0] if args else kwargs.get("hidden_states")
            for t in _tensors((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})):
                serial = tracker.serial_of(t)
                if serial is not None:
                    shared.add(serial)
            run.layers[index] = LayerRun(stream_bytes=hidden_states.element_size())
        return hook

    def post(*_: Any) -> None:
        current[0] = None

    def input_hook(index: int, path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            first = args[0] if args else next(iter(kwargs.values()))
            run.inputs.setdefault(index, {})[path] = tracker.serial_of(first) or -1
        return hook

    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(post))
        for path, module in layer.named_modules():
            if path:
                handles.append(module.register_forward_pre_hook(push(path), with_kwargs=True))
                handles.append(module.register_forward_hook(pop(path, "." not in path and _is_layer_norm(module)),
                                                            with_kwargs=True))
        for path in (linear_paths or {}).get(index, []):
            handles.append(layer.get_submodule(path).register_forward_pre_hook(input_hook(index, path),
                                                                              with_kwargs=True))

    def pack(t: torch.Tensor) -> torch.Tensor:
        serial = tracker.serial_of(t)
        if serial is None or serial in seen or serial in tracker.weight_serials or serial in tracker.weight_copies:
            return t
        seen.add(serial)
        nbytes = t.untyped_storage().nbytes()
        if serial in shared:
            run.shared_saved += nbytes
        elif current[0] is not None:
            record = run.layers[current[0]]
            if replicated():
                record.repl += nbytes
            else:
                record.par += nbytes
        return t

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_on else contextlib.nullcontext()
    try:
        with fake, tracker, fake_patches():
            model.to_empty(device="cpu")
            retie_embeddings(model)
            tracker.weight_serials = {s for p in model.parameters() if (s := tracker.serial_of(p)) is not None}
            tokens = torch.zeros(*shape, dtype=torch.long)
            with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(input_ids=tokens)
    finally:
        for h in handles:
            h.remove()
    return run


def _is_layer_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _is_lora_layer(module: nn.Module) -> bool:
    """A peft LoRA wrapper around an nn.Linear (not a ParamWrapper around fused experts or a router)."""
    try:
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:
        return False
    return isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), nn.Linear)


def fit(runs: dict[tuple[int, int], Run], index: int) -> tuple[float, float, float, float]:
    """(replicated per token, split per token, per token per attended position, per layer) of layer `index` from
    runs at ONE_SHAPE (bytes = s A), SDPA_SHAPES (K + b s A) or EAGER_SHAPES (K + b s A + b s^2 C): shapes
    (b, s1), (2 b, s1) and optionally (b, s2), in that order."""
    shapes = list(runs)
    (b, s1) = shapes[0]

    def coef(kind: str) -> tuple[float, float, float]:
        b1 = getattr(runs[shapes[0]].layers[index], kind)
        if len(shapes) == 1:
            return b1 / (b * s1), 0.0, 0.0
        if shapes[1] != (2 * b, s1):
            raise ValueError(f"fit needs (b, s) then (2b, s), got {shapes}")
        b2 = getattr(runs[shapes[1]].layers[index], kind)
        at_s1 = (b2 - b1) / (b * s1)  # A + s1 C
        k = b1 - (b2 - b1)
        if len(shapes) == 2:
            return at_s1, 0.0, k
        (b3_batch, s2) = shapes[2]
        if b3_batch != b:
            raise ValueError(f"fit needs (b, s1), (2b, s1), (b, s2), got {shapes}")
        b3 = getattr(runs[shapes[2]].layers[index], kind)
        c = ((b3 - k) / (b * s2) - at_s1) / (s2 - s1)
        return at_s1 - s1 * c, c, k

    repl, c_repl, k_repl = coef("repl")
    par, c_par, k_par = coef("par")
    return (round(repl, 3), round(par, 3), round(c_repl + c_par, 4), round(k_repl + k_par, 1))


def fit_one_row(runs: dict[tuple[int, int], Run], index: int) -> tuple[float, float, float, float]:
    """`fit`'s four numbers of layer `index` from one-row runs at three lengths (s1, s2, s3): bytes = K + s A + s^2 C
    solved exactly (the per-layer K in the split part, as `fit` sums it)."""
    (b, s1), (_, s2), (_, s3) = list(runs)[:3]
    if b != 1 or any(shape[0] != 1 for shape in list(runs)[:3]):
        raise ValueError(f"fit_one_row needs three shapes of one row, got {list(runs)}")

    def coef(kind: str) -> tuple[float, float, float]:
        y1, y2, y3 = (getattr(runs[(1, s)].layers[index], kind) for s in (s1, s2, s3))
        # divided differences of y(s) = K + A s + C s^2
        d12, d23 = (y2 - y1) / (s2 - s1), (y3 - y2) / (s3 - s2)
        c = (d23 - d12) / (s3 - s1)
        a = d12 - c * (s1 + s2)
        return a, c, y1 - a * s1 - c * s1 * s1

    repl, c_repl, k_repl = coef("repl")
    par, c_par, k_par = coef("par")
    return (round(repl, 3), round(par, 3), round(c_repl + c_par, 4), round(k_repl + k_par, 1))


def input_groups(run: Run, index: int, paths: list[str]) -> list[tuple[str, ...]]:
    """Linears of layer `index` grouped by the tensor they read (q, k and v read the attention norm's output)."""
    groups: dict[int, list[str]] = {}
    for path in paths:
        serial = run.inputs.get(index, {}).get(path, -1)
        groups.setdefault(serial if serial >= 0 else -len(groups) - 10, []).append(path)
    return [tuple(g) for g in groups.values()]
