"""DeepSpeed's rules that read a stage's own tensors (planner/engines/zero.py, planner/torch_adamw.py,
planner/allocator.py): a reward model's output is its h x 1 `score`, not a V x H LM head (transformers'
GenericForSequenceClassification; planner.states.output_params), a pipeline stage steps only its own tensors, and
ZeRO-0's all-reduce buckets are the stage's tensors walked as DeepSpeed's `allreduce_no_retain` walks them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner import allocator, deepspeed_sizes
from planner.build import build_config
from planner.engines import zero
from planner.gpus import parse_gpus
from planner.memory import BACKWARD_ONLY_ITEMS
from planner.params import embedding_params, head_params, layer_params, norm_params
from planner.states import output_params, stage_params
from planner.strategy import Method, Precision, Stage, TrainConfig


def _z3(model: str, stage: Stage, method: Method = Method.full, **kw: object) -> TrainConfig:
    return build_config(model=model, gpus="8xA800", method=method, zero=3, stage=stage, check=False, **kw)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "qwen3-0.6b"])
def test_zero3_gathers_a_reward_models_embedding_and_no_lm_head(model: str) -> None:
    """The largest module ZeRO-3 gathers: the V x H input embedding, which a reward model keeps (tied or not) beside
    its h x 1 score; a tied language model gathers the same table again as its head, an untied one its own head."""
    rm, lm = _z3(model, Stage.rm), _z3(model, Stage.sft)
    m = rm.model
    table = m.vocab_size * m.hidden_size
    assert table > layer_params(m)
    assert zero.zero3_largest_gathered_elements(rm, stage_params(rm, first=True)) == table
    lm_head = table + norm_params(m)  # the final norm and the head (the table itself when tied)
    assert zero.zero3_largest_gathered_elements(lm, stage_params(lm, first=True)) == lm_head


def test_zero3_keeps_a_reward_models_score_not_an_lm_head_for_backward() -> None:
    """Forward's modules, last first, stay gathered while twice what follows them is under stage3_max_reuse_distance:
    after a reward model's last layer come the final norm and the score (output_params), not Llama-3-8B's 525M head,
    so one more decoder layer lies within the distance."""
    rm, lm = _z3("llama-3.1-8b", Stage.rm), _z3("llama-3.1-8b", Stage.sft)
    m = rm.model
    distance, layer = deepspeed_sizes.STAGE3_MAX_REUSE_DISTANCE, layer_params(m)

    def kept(output: float) -> float:
        modules = [embedding_params(m)] + [layer] * m.num_layers + [output]
        total, after = 0.0, 0.0
        for numel in reversed(modules):
            total += numel if 2 * after < distance else 0.0
            after += numel
        return total

    rm_kept = zero.zero3_kept_for_backward_elements(rm, stage_params(rm, first=True))
    assert rm_kept == kept(output_params(m, Stage.rm)) == output_params(m, Stage.rm) + 3 * layer
    lm_kept = zero.zero3_kept_for_backward_elements(lm, stage_params(lm, first=True))
    assert lm_kept == kept(head_params(m)) == head_params(m)  # the head alone is past half the distance


@pytest.mark.parametrize("freeze", [0, 1])
def test_zero3_reduces_a_reward_models_embedding_gradient_alone(freeze: int) -> None:
    """A gradient larger than reduce_bucket_size is reduced from autograd's full tensor beside the bucket: a reward
    model's has no LM head's in backward (the h x 1 score fits the bucket), only its V x H embedding's at the end of
    backward, with the table gathered for that backward (and gloo's copy on the CPU); none when --freeze-layers
    freezes it. A language model's untied head reduces alone in backward, a backward-only item."""
    rm = _z3("7b", Stage.rm, freeze_layers=freeze)
    m, bucket = rm.model, deepspeed_sizes.reduce_bucket_elements(rm.model)
    sp = stage_params(rm, first=True)
    items = zero.buffers(rm, sp, 1.0, first=True)
    assert items["ZeRO-3 reduce bucket"] == 2 * bucket and zero.ZERO3_HEAD_GRADIENT not in items
    table = 2.0 * m.vocab_size * m.hidden_size
    assert zero.end_items(rm, sp) == ({} if freeze else {"ZeRO-3 embedding gradient, reduced alone": table,
                                                          "ZeRO-3 embedding gathered for its backward": table})
    on_cpu = replace(rm, cluster=parse_gpus("2xCPU"), precision=Precision.fp32)
    assert sum(zero.end_items(on_cpu, sp).values()) == (0 if freeze else 3 * 2 * table)
    lora = _z3("7b", Stage.rm, Method.lora)
    assert zero.end_items(lora, stage_params(lora, first=True)) == {}
    lm = _z3("7b", Stage.sft)
    lm_items = zero.buffers(lm, stage_params(lm, first=True), 1.0, first=True)
    assert lm_items[zero.ZERO3_HEAD_GRADIENT] == 2.0 * head_params(m)
    assert zero.ZERO3_HEAD_GRADIENT in BACKWARD_ONLY_ITEMS


def test_zero3_persists_a_reward_models_score() -> None:
    """The h x 1 score lies under stage3_param_persistence_threshold (10 h), so ZeRO-3 keeps it whole; under LoRA
    peft's trained copy (modules_to_save) as well."""
    for method, copies in ((Method.full, 1), (Method.lora, 2)):
        rm, lm = _z3("7b", Stage.rm, method), _z3("7b", Stage.sft, method)
        sp = stage_params(rm, first=True)
        assert zero.zero3_persistent_elements(rm, sp) - zero.zero3_persistent_elements(lm, sp) == \
            copies * rm.model.hidden_size


def test_a_reward_models_zero3_sub_groups_end_in_its_score() -> None:
    """ZeRO-3's weight-decay group ends in the score, not a second V x H table; the init replay's largest partition
    is the embedding's, the largest tensor a reward model has."""
    rm = _z3("7b", Stage.rm)
    m = rm.model
    tensors = zero._decay_group_tensor_elements(rm)
    assert tensors[0] == m.vocab_size * m.hidden_size and tensors[-1] == m.hidden_size
    lm = _z3("7b", Stage.sft)
    assert zero._decay_group_tensor_elements(lm)[-1] == m.vocab_size * m.hidden_size
    n = rm.dp
    assert allocator.zero3_largest_partition_elements(rm, n) == embedding_params(m) / n
    assert allocator.zero3_largest_partition_elements(lm, n) == head_params(m) / n
    assert allocator.zero3_largest_partition_elements(replace(rm, method=Method.lora), n) == 0.0


def _pipeline(model: str, precision: Precision, gpus: str) -> TrainConfig:
    return build_config(model=model, gpus=gpus, method=Method.full, zero=0, pp=2, precision=precision, check=False)


def test_single_tensor_adamw_steps_each_pipeline_stages_own_tensors() -> None:
    """torch's `_single_tensor_adam` (torch/optim/adam.py) makes its sqrt and quotient per parameter, beside the
    previous parameter's denom: the stage's own largest. Llama-2-7B at pp 2: the first stage's embedding (2 x 131M),
    the last stage's head after the last down_proj (2 x 131M + 45M); the model-wide pair, the head's, on both before."""
    cfg = _pipeline("7b", Precision.fp32, "8xCPU")
    m = cfg.model
    table, down = m.vocab_size * m.hidden_size, m.hidden_size * m.intermediate_size
    first, last = stage_params(cfg, first=True), stage_params(cfg, first=False)
    got_first = zero.step_items(cfg, first.trainable, cfg.dp, 0.0, first)
    got_last = zero.step_items(cfg, last.trainable, cfg.dp, 0.0, last)
    assert got_first == {"ZeRO-0 torch AdamW single-tensor temporaries": 4.0 * 2 * table}
    assert got_last == {"ZeRO-0 torch AdamW single-tensor temporaries": 4.0 * (2 * table + down)}
    with pytest.raises(ValueError, match="StageParams"):
        zero.step_items(cfg, first.trainable, cfg.dp, 0.0)


def test_bf16_pipeline_norm_copy_is_the_stages_largest_tensor() -> None:
    """BF16_Optimizer's norm takes each accumulator view to fp32 one at a time: a middle-less 2-stage pipeline's
    first stage has the embedding, its last the head; a stage with neither has only its layers' largest linear."""
    cfg = _pipeline("7b", Precision.bf16_mixed, "8xA800")
    m = cfg.model
    table, down = m.vocab_size * m.hidden_size, m.hidden_size * m.intermediate_size
    n = cfg.dp
    for first in (True, False):
        sp = stage_params(cfg, first=first)
        assert zero.bf16_optimizer_step_items(cfg, sp.trainable, n, sp) == {
            "BF16_Optimizer fp32 gradients + torch AdamW foreach temporaries": 8.0 * sp.trainable / n}
    inner = replace(stage_params(cfg, first=True), has_embedding=False)  # a stage between the ends
    tiny = 1.0  # trained elements small enough that the norm copy is the larger moment
    assert zero.bf16_optimizer_step_items(cfg, tiny, n, inner) == {"BF16_Optimizer fp32 gradient-norm copy": 4.0 * down}
    outer = stage_params(cfg, first=True)
    assert zero.bf16_optimizer_step_items(cfg, tiny, n, outer) == {
        "BF16_Optimizer fp32 gradient-norm copy": 4.0 * table}


def test_allreduce_no_retain_closes_a_bucket_once_it_passes_the_size() -> None:
    """runtime/engine.py `allreduce_no_retain`: append, then close once the elements pass the size; `allreduce_bucket`
    flattens each bucket, a copy unless it holds one tensor (torch's flatten_dense_tensors views a single tensor)."""
    walk = zero.largest_flat_copy_elements
    assert walk([3.0, 4.0, 5.0], 10.0) == 12.0  # one bucket, at the end
    assert walk([6.0, 5.0, 1.0, 1.0], 10.0) == 11.0  # closed at 11 (> 10), then 2 left
    assert walk([6.0, 4.0, 1.0], 10.0) == 11.0  # 10 does not pass the size: the next tensor closes it
    assert walk([20.0, 1.0], 10.0) == 0.0  # a bucket of one tensor, only viewed; then one tensor left
    assert walk([20.0, 1.0, 1.0], 10.0) == 2.0
    assert walk([], 10.0) == 0.0


def test_zero0_buckets_walk_the_stages_tensors_in_parameter_order() -> None:
    """Llama-2-7B at ZeRO-0: the first bucket closes inside the second layer at 535,830,528 elements (the embedding,
    layer 0, layer 1's attention, gate, up and the down_proj that passes 500M); at pp 2 it is the first stage's largest.
    Llama-3.1-8B's 525M embedding passes the size alone: a view, no copy. Every stage's walk holds its trained
    elements."""
    cfg = build_config(model="7b", gpus="8xA800", method=Method.full, zero=0, pp=2, precision=Precision.fp32,
                       check=False)
    m = cfg.model
    layer = layer_params(m)
    attention, mlp = 4 * m.hidden_size ** 2, m.hidden_size * m.intermediate_size
    first_bucket = m.vocab_size * m.hidden_size + layer + attention + 3 * mlp
    assert first_bucket == 535_830_528
    sp = stage_params(cfg, first=True)
    tensors = zero.zero0_stage_gradient_elements(cfg, sp)
    assert sum(tensors) == sp.trainable
    assert zero.end_items(cfg, sp) == {"ZeRO-0 gradient all-reduce flat copy": 4.0 * first_bucket}
    for name, pp in (("llama-3.1-8b", 1), ("qwen3-0.6b", 1), ("mixtral-8x7b", 4), ("gpt-oss-20b", 1)):
        for method in (Method.full, Method.lora):
            for stage in (Stage.sft, Stage.rm):
                big = build_config(model=name, gpus="8xA800", method=method, zero=0, pp=pp, stage=stage,
                                   check=False)
                for first in (True, False):
                    sp = stage_params(big, first=first)
                    assert sum(zero.zero0_stage_gradient_elements(big, sp)) == pytest.approx(sp.trainable, rel=1e-9)
    big = build_config(model="llama-3.1-8b", gpus="8xA800", method=Method.full, zero=0, check=False)
    tensors = zero.zero0_stage_gradient_elements(big, stage_params(big, first=True))
    assert tensors[0] > zero.ALLREDUCE_BUCKET_ELEMENTS
    assert zero.largest_flat_copy_elements(tensors[:1], zero.ALLREDUCE_BUCKET_ELEMENTS) == 0.0
