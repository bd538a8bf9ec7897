"""FSDP2's all-gathers and reduce-scatters per micro-batch in accelerate's units, with their sizes.

accelerate 1.16 (utils/fsdp_utils.py `fsdp2_prepare_model`) calls `fully_shard` on each decoder layer (the plugin's
reshard_after_forward: True for FULL_SHARD and HYBRID_SHARD, False for SHARD_GRAD_OP), then on the input embedding
alone unless it is the head's weight (`is_weights_tied`: `input_weight is output_weight`), then on the tail, [final
norm, head] or, tied, [final norm, embedding, head], as one group with reshard_after_forward=False, then on the root,
which keeps what no unit took (a reward model's `score`, which is no output embedding; BLOOM's embedding norm; the
parameters a model read from transformers holds outside its layers) and which torch never reshards after forward
(profiler/worker.py `fsdp2_units` wraps the same way). The root owns no parameter otherwise and gathers nothing.

What torch 2.13 does with these units (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py):
- forward: each unit's `pre_forward` all-gathers it (`unshard`), the tied tail at the embedding's use;
- backward: a unit's `pre_backward` fires from a hook on its outputs that require grad (_fsdp_state.py
  `_register_pre_backward_hook`) and all-gathers it unless it is still unsharded: the tail and the root never were
  resharded, so they are not gathered again; it then prefetches the unit before it in forward's order
  (`_backward_prefetch`: `post_forward_order[curr_index - 1]`), so the first unit backward reaches whose outputs need a
  gradient also gathers its predecessor: the embedding (layer 0's predecessor, untied) or, with --freeze-layers k, the
  frozen layer k - 1, whose gather nothing uses;
- a frozen unit whose inputs need no gradient gets no pre_backward: not gathered again (the frozen embedding, the
  first k frozen layers);
- `post_backward` reduce-scatters the unit's gradients (`foreach_reduce`) once per micro-batch, or nothing when none
  of its parameters has a gradient (`if len(fsdp_params_with_grad) == 0: return`); a unit whose inputs need no
  gradient (the embedding, the tied tail, the first trained layer after frozen ones) reduces in the root's final
  callback at backward's end (_fsdp_state.py `_root_post_backward_final_callback`).
Counted on 2 CPU ranks for untied and tied heads, everything trained, --freeze-layers 1, only the layers trained (as
LoRA), FULL_SHARD and SHARD_GRAD_OP (tests/validation/test_fsdp2_calls_measured.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from planner.choices import FsdpStrategy, Method, Stage
from planner.params import embedding_params
from planner.states import compute_copy_bytes, final_norm_params, score_params, stage_layers

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

Calls = tuple[tuple[float, int], ...]  # (bytes per call, calls), in the order FSDP2 issues them


@dataclass(frozen=True, kw_only=True)
class Fsdp2Traffic:
    """One micro-batch of FSDP2's collectives: unsharded bytes per call and calls."""

    forward_gathers: Calls
    backward_gathers: Calls
    reduce_scatters: Calls

    @property
    def gather_calls(self) -> int:
        return sum(n for _, n in self.forward_gathers + self.backward_gathers)

    @property
    def reduce_scatter_calls(self) -> int:
        return sum(n for _, n in self.reduce_scatters)


@dataclass(frozen=True, kw_only=True)
class OutsideUnits:
    """Elements (per tensor-parallel rank) FSDP2 gathers and reduces in the units outside the decoder layers."""

    embedding: float  # the input embedding's own unit (0 when tied: it is in the tail)
    tail: float
    root: float
    embedding_trained: float
    tail_trained: float
    root_trained: float


def is_weights_tied(cfg: TrainConfig) -> bool:
    """accelerate's `is_weights_tied` (`input_weight is output_weight`). A reward model's `score` is no output
    embedding: AutoModelForSequenceClassification (transformers 5.25 modeling_layers.py
    `GenericForSequenceClassification`) has no `lm_head`, so `get_output_embeddings` (modeling_utils.py
    `EmbeddingAccessMixin.get_output_embeddings`) returns None and nothing is tied, whatever the config says."""
    return cfg.model.tie_embeddings and cfg.stage is not Stage.rm


def outside_units(cfg: TrainConfig) -> OutsideUnits:
    """The embedding, tail and root units' elements and trained elements (module docstring). Trained as
    planner.states counts it: full fine-tuning trains them all, --freeze-layers freezes the embedding (runner/model.py
    `_freeze_first_layers`: the embedding and the first k layers; tied, that is the head's weight too) and what
    embedding_params counts with it; LoRA trains none of them."""
    m = cfg.model
    vh = float(m.vocab_size * m.hidden_size)
    norm = float(final_norm_params(m))
    extras = float(embedding_params(m)) - vh
    rm, tied = cfg.stage is Stage.rm, is_weights_tied(cfg)
    score = float(score_params(m, cfg.stage))
    embedding = 0.0 if tied else vh
    tail = norm + (vh if tied or not rm else 0.0)
    root = extras + score
    full, unfrozen = cfg.method is Method.full, cfg.freeze_layers <= 0
    t = cfg.tp
    return OutsideUnits(
        embedding=embedding / t, tail=tail / t, root=root / t,
        embedding_trained=embedding / t if full and unfrozen else 0.0,
        tail_trained=(norm + (vh if (not tied and not rm) or (tied and unfrozen) else 0.0)) / t if full else 0.0,
        root_trained=(score + (extras if unfrozen else 0.0)) / t if full else 0.0)


def fsdp2_traffic(cfg: TrainConfig, param_bytes_gpu: float, grad_bytes: float) -> Fsdp2Traffic:
    """FSDP2's all-gathers and reduce-scatters of one micro-batch (module docstring). `param_bytes_gpu`: the unsharded
    parameter bytes (quantized layers at their storage size), `grad_bytes`: the gradient bytes reduced; what the
    embedding, tail and root do not hold is the layers', split evenly over them."""
    # bytes per gathered element (MixedPrecision's param dtype) and per reduced gradient element (its reduce dtype)
    w = compute_copy_bytes(cfg.precision)
    out = outside_units(cfg)
    layers = stage_layers(cfg.model.num_layers, cfg.pp)
    full = cfg.method is Method.full
    frozen = min(max(cfg.freeze_layers, 0), layers) if full else 0
    trained_layers = layers - frozen
    outside_bytes = w * (out.embedding + out.tail + out.root)
    layer = max(0.0, param_bytes_gpu - outside_bytes) / max(1, layers)
    outside_grad = w * (out.embedding_trained + out.tail_trained + out.root_trained)
    layer_grad = max(0.0, grad_bytes - outside_grad) / trained_layers if trained_layers else 0.0
    embedding, tail, root = w * out.embedding, w * out.tail, w * out.root
    tied = out.embedding == 0

    forward = ((root, 1), (tail if tied else embedding, 1), (layer, layers), (0.0 if tied else tail, 1))
    if cfg.fsdp is FsdpStrategy.shard_grad_op:
        backward: Calls = ()
    elif frozen:
        # the trained layers, then the frozen layer k - 1 the first of them prefetches (the tail prefetches the last
        # layer when every layer is frozen)
        backward = ((layer, trained_layers + 1),)
    else:
        # every layer; the embedding (its own pre_backward when it trains, else layer 0's prefetch)
        backward = ((layer, layers), (embedding, 1))
    embedding_rs = w * out.embedding_trained
    tail_rs, root_rs = w * out.tail_trained, w * out.root_trained
    # the untied tail reduces once its backward is over; the rest after the layers, the last in the final callback
    reduces = ((0.0 if tied else tail_rs, 1), (layer_grad, trained_layers), (embedding_rs, 1),
               (tail_rs if tied else 0.0, 1), (root_rs, 1))
    return Fsdp2Traffic(forward_gathers=_nonzero(forward), backward_gathers=_nonzero(backward),
                        reduce_scatters=_nonzero(reduces))


def _nonzero(calls: Calls) -> Calls:
    return tuple((b, n) for b, n in calls if b > 0 and n > 0)


def fsdp2_units(cfg: TrainConfig) -> int:
    """Units holding parameters, each running FSDP2's hooks with a gather per micro-batch: the decoder layers, the
    embedding unless tied, the tail, and the root when it keeps parameters (module docstring)."""
    out = outside_units(cfg)
    return (stage_layers(cfg.model.num_layers, cfg.pp) + (1 if out.embedding > 0 else 0) + (1 if out.tail > 0 else 0)
            + (1 if out.root > 0 else 0))
