"""A reward model's head (planner.states.output_params): transformers' AutoModelForSequenceClassification ends in
`score` = nn.Linear(h, num_labels=1, bias=False) and has no LM head (modeling_layers.py
GenericForSequenceClassification), so no V x H is counted after the last decoder layer: in the states, in FSDP1's
root unit (planner.engines.fsdp fsdp1_root_params), its QLoRA units or its init replay (planner.init_allocations).
Measured on 2 CPU ranks in tests/validation/test_memory_sharded_measured.py (fsdp1-rm, fsdp2-rm)."""

from __future__ import annotations

import pytest

from planner.build import build_config
from planner.engines import fsdp
from planner.init_allocations import plan_units
from planner.memory_knobs import fsdp_quantized_units_bytes
from planner.models import from_name, model_names
from planner.params import embedding_params, head_params, norm_params, total_params
from planner.states import head_weight_params, output_params, param_counts, score_params, stage_params
from planner.strategy import FsdpStrategy, Method, Precision, Stage, TrainConfig


def _cfg(model: str, stage: Stage, version: int = 1, method: Method = Method.full) -> TrainConfig:
    return build_config(model=model, gpus="8xA800", method=method, precision=Precision.fp32,
                        fsdp=FsdpStrategy.full_shard, fsdp_version=version, stage=stage, check=False)


@pytest.mark.parametrize("name", model_names())
def test_a_language_models_output_is_its_head(name: str) -> None:
    """One rule: a language model's final norm and head weight are planner.params.head_params, for every model."""
    m = from_name(name)
    assert output_params(m, Stage.sft) == head_params(m)
    assert output_params(m, Stage.rm) == head_params(m) - head_weight_params(m, Stage.sft) + m.hidden_size


@pytest.mark.parametrize("model", ["7b", "qwen3-0.6b"])
def test_a_reward_model_ends_in_the_final_norm_and_its_score(model: str) -> None:
    """Tied or not: a reward model's embedding is the input's alone, and its score is h x 1."""
    m = _cfg(model, Stage.rm).model
    assert score_params(m, Stage.rm) == m.hidden_size and score_params(m, Stage.sft) == 0
    assert output_params(m, Stage.rm) == norm_params(m) + m.hidden_size
    assert output_params(m, Stage.sft) == head_params(m)
    counts = param_counts(m, _cfg(model, Stage.rm).adapter, Stage.rm)
    assert counts.total == total_params(m) - head_params(m) + norm_params(m) + m.hidden_size


@pytest.mark.parametrize("model", ["7b", "qwen3-0.6b"])
@pytest.mark.parametrize("stage", [Stage.sft, Stage.rm])
def test_fsdp1_root_holds_the_embedding_and_the_models_own_head(model: str, stage: Stage) -> None:
    """FSDP1's root FlatParameter holds what no decoder-layer unit holds: the embedding, the final norm and the LM
    head (none of its own when tied) or a reward model's score; kept unsharded into backward, and the head's
    gradient (final norm and LM head or score) held until the root reduces at backward's end."""
    cfg = _cfg(model, stage)
    m = cfg.model
    got = fsdp.buffers(cfg, stage_params(cfg, first=True), 1.0, first=True)
    assert got["FSDP unsharded parameters"] == 4.0 * (embedding_params(m) + output_params(m, stage))
    assert got["FSDP unsharded gradients"] == 4.0 * output_params(m, stage)
    if stage is Stage.rm:
        assert got["FSDP unsharded gradients"] == 4.0 * (norm_params(m) + m.hidden_size)


def test_a_reward_models_fsdp1_root_has_no_lm_head() -> None:
    """7B untied: the reward model's root is the LM model's less the V x H head, plus the h-weight score."""
    sft, rm = _cfg("7b", Stage.sft), _cfg("7b", Stage.rm)
    m = sft.model
    assert fsdp.fsdp1_root_params(sft) - fsdp.fsdp1_root_params(rm) == m.vocab_size * m.hidden_size - m.hidden_size


@pytest.mark.parametrize("version", [1, 2])
def test_qlora_units_of_a_reward_model_leave_the_same_layer_window(version: int) -> None:
    """FSDP's QLoRA units (memory_knobs.fsdp_quantized_units_bytes) count the root by the same rule as buffers, so
    the decoder layers' window is the same for a reward model as for its language model."""
    sft, rm = _cfg("7b", Stage.sft, version, Method.qlora), _cfg("7b", Stage.rm, version, Method.qlora)
    got = {cfg.stage: fsdp.buffers(cfg, stage_params(cfg, first=True), 1.0, first=True) for cfg in (sft, rm)}
    assert got[Stage.rm]["FSDP unsharded layers"] == pytest.approx(got[Stage.sft]["FSDP unsharded layers"])
    m = rm.model
    assert fsdp_quantized_units_bytes(sft, 2.0) - fsdp_quantized_units_bytes(rm, 2.0) == pytest.approx(
        2.0 * (m.vocab_size * m.hidden_size - m.hidden_size))


@pytest.mark.parametrize("model", ["7b", "llama-3.2-1b"])  # untied, tied
def test_fsdp1_init_replays_a_reward_models_root_without_an_lm_head(model: str) -> None:
    """The init replay's root unit (planner.init_allocations.plan_units, LoRA under bf16-true: 2 bytes a weight):
    embedding, final norm and the h-weight score."""
    cfg = build_config(model=model, gpus="8xA800", method=Method.lora, precision=Precision.bf16_true,
                       fsdp=FsdpStrategy.full_shard, fsdp_version=1, stage=Stage.rm, check=False)
    m = cfg.model
    laid_out = plan_units(cfg)
    assert laid_out is not None
    assert laid_out[0][-1] == (2 * embedding_params(m), 2 * norm_params(m), 2 * m.hidden_size)


@pytest.mark.parametrize(("gpus", "stage"), [("2xCPU", Stage.rm), ("8xA800", Stage.rm), ("8xA800", Stage.sft)])
def test_fsdp1_roots_gradient_is_concatenated_at_the_end_of_backward(gpus: str, stage: Stage) -> None:
    """FSDP1's root unit ends backward concatenating its parameters' gradients into the flat one, its unsharded
    parameters still gathered (fsdp1_root_end_items): three root-sized buffers less the root's shard the states hold,
    on any device (gloo's copy comes later, in the reduce-scatter, and less); LoRA's frozen root reduces nothing
    (measured: test_memory_sharded_measured fsdp1-vocab and fsdp1-rm, to 2.6 KB)."""
    cfg = build_config(model="7b", gpus=gpus, method=Method.full, precision=Precision.fp32,
                       fsdp=FsdpStrategy.full_shard, fsdp_version=1, stage=stage, check=False)
    root = 4.0 * (embedding_params(cfg.model) + output_params(cfg.model, stage))
    want = {"FSDP1 root parameters, unsharded": root, "FSDP1 root gradients, per parameter": root,
            "FSDP1 root gradient, flat (beyond its shard)": root - root / cfg.dp}
    assert fsdp.end_items(cfg, stage_params(cfg, first=True)) == want
    lora = _cfg("7b", stage, method=Method.lora)
    assert fsdp.end_items(lora, stage_params(lora, first=True)) == {}


def test_a_trained_tied_embeddings_gradients_cover_fsdp1s_root_reduce() -> None:
    """Tied and trained, the embedding's two gradients and their sum (planner.memory.tied_embedding_items, three
    V x H) peak before the root's concatenation, beside the root's unsharded parameters alone (measured:
    test_memory_sharded_measured fsdp1-tied); a reward model of the same checkpoint ties nothing and concatenates
    its root's gradients."""
    root = {"FSDP1 root parameters, unsharded", "FSDP1 root gradients, per parameter",
            "FSDP1 root gradient, flat (beyond its shard)"}
    for stage, items in ((Stage.sft, {"FSDP1 root parameters, unsharded (beyond its gradient shard)"}),
                         (Stage.rm, root)):
        cfg = _cfg("llama-3.2-1b", stage)
        assert set(fsdp.end_items(cfg, stage_params(cfg, first=True))) == items
