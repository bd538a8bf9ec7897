"""Specific accounting rules of the memory model, each tied to the framework code it follows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.activations import LayerTraining, hf_layer_bytes_per_token
from planner.build import build_config
from planner.gpus import parse_gpus
from planner.memory import memory_per_gpu
from planner.models import from_name, spec_from_hf_config
from planner.params import total_params
from planner.strategy import Attn, Engine, GradCkpt, Method, Offload, Precision, TrainConfig, ZeroStage


def test_deepspeed_bf16_pipeline_zero0_partitions_optimizer_states() -> None:
    """deepspeed/runtime/engine.py `_do_optimizer_sanity_check`: bf16 + pipeline -> BF16_Optimizer,
    which keeps the bf16 gradients and its accumulators whole, in bf16 under ftplan's ds_config (no grad_accum_dtype:
    zero.BF16_ACCUMULATOR_BYTES), but splits master weights and Adam over DP."""
    cfg = build_config(model="llama-3.2-1b", gpus="8xA800", method=Method.full, zero=0, pp=2)
    mem = memory_per_gpu(cfg)
    p_stage = mem.weights / 2  # parameters of the reported stage, held in 16 bits
    assert mem.gradients == pytest.approx(4 * p_stage, rel=1e-9)
    assert mem.optimizer == pytest.approx(12 * p_stage / cfg.dp, rel=1e-9)
    fp16 = memory_per_gpu(replace(cfg, precision=Precision.fp16_mixed))
    assert fp16.optimizer == pytest.approx(12 * p_stage, rel=1e-9)  # FP16_Optimizer keeps them whole


def test_deepspeed_pipeline_zero0_reduction_and_step() -> None:
    """The pipeline engine at ZeRO-0 (planner/engines/zero.py, measured in tests/validation/
    test_memory_pipeline_step_measured.py): its gradient all-reduce flattens the Trainer's two groups' bf16
    accumulators into one copy (a LoRA stage's one group is only viewed), or the parameters' gradients in fp32/fp16;
    BF16_Optimizer's step makes the fp32 gradient partition beside the client's temporaries; in fp16 the step is
    FP16_UnfusedOptimizer's, as without a pipeline."""
    from planner.engines import zero
    from planner.states import stage_params

    cfg = build_config(model="qwen3-0.6b", gpus="8xA800", method=Method.full, zero=0, pp=2)
    sp = stage_params(cfg, first=True)
    trained, n = sp.trainable, cfg.dp
    assert zero.end_items(cfg, sp) == {"ZeRO-0 gradient all-reduce flat copy": 2 * trained}
    assert zero.step_items(cfg, trained, n, 0.0, sp) == {
        "BF16_Optimizer fp32 gradients + torch AdamW foreach temporaries": 8 * trained / n}
    lora = replace(cfg, method=Method.lora)
    assert zero.end_items(lora, stage_params(lora, first=True)) == {}
    fp16 = replace(cfg, precision=Precision.fp16_mixed)
    assert zero.end_items(fp16, sp) == {"ZeRO-0 gradient all-reduce flat copy": 2 * trained}
    assert zero.step_items(fp16, trained, n, 0.0, sp) == {
        "ZeRO-0 FP16_UnfusedOptimizer fp32 gradients + torch AdamW foreach temporaries": 8 * trained}
    # a stage whose weight-decay group passes the bucket size: each group is a bucket of its own, only viewed
    big = build_config(model="llama-3.2-1b", gpus="8xA800", method=Method.full, zero=0, pp=2)
    big_sp = stage_params(big, first=True)
    assert big_sp.trainable > zero.ALLREDUCE_BUCKET_ELEMENTS and zero.end_items(big, big_sp) == {}


def test_deepspeed_zero0_reduction_without_a_pipeline() -> None:
    """ZeRO-0 at pp 1 reduces the parameters' own gradients at the end of the boundary's backward through the same
    buckets (planner/engines/zero.py zero0_reduce_copy_bytes; measured in tests/validation/
    test_memory_zero_adamw_step_measured.py): a bucket under the size (a LoRA model's adapters) is copied whole, in
    the compute dtype; a 7B's largest bucket is its last, closed by the LM head (zero0_stage_gradient_elements walked
    as `allreduce_no_retain`); ZeRO-1+ have no such copy."""
    from planner.engines import zero
    from planner.states import stage_params

    lora = build_config(model="qwen3-0.6b", gpus="8xA800", method=Method.lora, zero=0)
    sp = stage_params(lora, first=True)
    assert sp.trainable < zero.ALLREDUCE_BUCKET_ELEMENTS  # the adapters' gradients: one bucket, copied whole
    assert zero.end_items(lora, sp) == {"ZeRO-0 gradient all-reduce flat copy": 2 * sp.trainable}
    fp32 = replace(lora, precision=Precision.fp32)
    assert zero.end_items(fp32, sp) == {"ZeRO-0 gradient all-reduce flat copy": 4 * sp.trainable}
    big = build_config(model="llama-2-7b", gpus="8xA800", method=Method.full, zero=0)
    big_sp = stage_params(big, first=True)
    # up_proj and down_proj of layer 29 with its norms, layers 30 and 31, the final norm and the 131M head: 24 tensors
    # (the size plus the largest tensor, 631,072,000, bounded it before)
    last_bucket = 2 * 45_088_768 + 2 * 4096 + 2 * 202_383_360 + 4096 + 32_000 * 4096
    assert last_bucket == 626_028_544
    assert zero.end_items(big, big_sp) == {"ZeRO-0 gradient all-reduce flat copy": 2 * last_bucket}
    assert zero.end_items(replace(big, zero=ZeroStage.OPTIMIZER_STATES), big_sp) == {}
    # a tied embedding's accumulation ends autograd; ZeRO-0's all-reduce follows it: the larger moment counts
    from planner.memory import end_of_backward_items, tied_embedding_items

    tied = build_config(model="qwen3-0.6b", gpus="8xA800", method=Method.full, zero=0)
    tied_sp = stage_params(tied, first=True)
    copy, tied_items = zero.end_items(tied, tied_sp), tied_embedding_items(tied, tied_sp)
    assert tied_items and sum(copy.values()) > sum(tied_items.values())
    assert end_of_backward_items(tied, tied_sp) == copy
    z2 = replace(tied, zero=ZeroStage.GRADIENTS)
    assert end_of_backward_items(z2, tied_sp) == tied_embedding_items(z2, tied_sp)


@pytest.mark.parametrize("attn", [Attn.sdpa, Attn.flash])
def test_selective_recompute_keeps_o_proj_input(attn: Attn) -> None:
    """Korthikanti et al. 2022, Sec. 4.2: selective recompute drops the attention core's s^2 work but
    the output projection's input (the core's output) stays saved while o_proj trains."""
    m = from_name("llama-2-7b")
    kw = dict(act_bytes=2, attn=attn, seq_len=2048)
    full = hf_layer_bytes_per_token(m, train=LayerTraining(weights=True), recompute=GradCkpt.none, **kw)
    sel = hf_layer_bytes_per_token(m, train=LayerTraining(weights=True), recompute=GradCkpt.selective, **kw)
    assert full - sel == pytest.approx(4 * m.num_heads)  # only the fp32 log-sum-exp goes
    frozen_o = hf_layer_bytes_per_token(m, train=LayerTraining(weights=False, lora_targets=frozenset({"q_proj"})),
                                        recompute=GradCkpt.selective, **kw)
    assert frozen_o < sel


def test_full_parameter_count_reaches_the_estimate() -> None:
    cfg = build_config(model="7b", gpus="1xA800", method=Method.full, precision=Precision.bf16_true)
    assert memory_per_gpu(cfg).weights == 2 * total_params(cfg.model)


@pytest.mark.parametrize(("zero", "grad_accum", "host_bytes_per_param"), [(2, 1, 16), (2, 4, 18), (3, 1, 18)])
def test_zero_offload_host_gradients(zero: int, grad_accum: int, host_bytes_per_param: int) -> None:
    """ZeRO-Offload keeps fp32 master, Adam moments and the fp32 gradient partition on the host (16 bytes);
    ZeRO-1/2 add 16-bit CPU accumulation buffers only with accumulation (stage_1_and_2.py
    copy_grads_in_partition), ZeRO-3 keeps its 16-bit gradient partition there always (stage3.py)."""
    cfg = build_config(model="llama-3.2-1b", gpus="8xA800", method=Method.full, zero=zero,
                       offload=Offload.optimizer, grad_accum=grad_accum)
    host_per_param = memory_per_gpu(cfg).host_bytes / total_params(cfg.model)
    assert host_per_param == pytest.approx(host_bytes_per_param, rel=1e-9)


def test_zero3_fp32_clones_master_partition() -> None:
    """stage3.py `_create_fp32_partitions` compares a torch.device with the accelerator's device name (a str),
    so even fp32 weights get a cloned fp32 partition, as ZeRO-1/2 do (measured on 2 CPU ranks)."""
    z3 = memory_per_gpu(build_config(model="llama-3.2-1b", gpus="8xA800", method=Method.full, zero=3,
                                     precision=Precision.fp32))
    assert z3.optimizer == pytest.approx(3 * z3.weights, rel=1e-9)  # fp32 master + exp_avg + exp_avg_sq


def test_zero3_keeps_parameters_within_reuse_distance() -> None:
    """partitioned_param_coordinator.py `__params_to_release`: a module used again within
    stage3_max_reuse_distance (1e9) parameters stays gathered from forward into backward, so a model
    under 5e8 parameters stays whole; Llama-3-8B's 525M-parameter head is already past the distance."""
    spec = spec_from_hf_config({"model_type": "llama", "vocab_size": 32000, "hidden_size": 768,
                                "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
                                "max_position_embeddings": 2048}, name="llama-134m")
    small = TrainConfig(model=spec, cluster=parse_gpus("2xCPU"), method=Method.full, engine=Engine.deepspeed,
                        zero=ZeroStage.WEIGHTS, precision=Precision.fp32, seq_len=256)
    mem = memory_per_gpu(small)
    gathered = mem.other_items["ZeRO-3 gathered parameters"] + mem.other_items["ZeRO-3 parameters kept for backward"]
    assert gathered >= 4 * total_params(small.model) * 0.99
    assert "ZeRO-3 parameters kept for backward" not in memory_per_gpu(
        build_config(model="llama-3-8b", gpus="8xA800", method=Method.full, zero=3)).other_items


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_zero_fp32_gradient_partition_lives_in_the_step(zero: int) -> None:
    """DeepSpeed makes the fp32 gradient partition inside step(), one group (ZeRO-1/2, stage_1_and_2.py step) or
    sub-group (ZeRO-3, stage3.py _prepare_fp32_grad_for_sub_group / _release_sub_group) at a time: the
    gradients held are 16-bit (whole at ZeRO-1), and the step adds 6 bytes (the flat 16-bit copy and the fp32
    cast) per element of the largest group; then the client's foreach AdamW (the Trainer's `adamw_torch` on a GPU)
    holds the fp32 gradient and `exp_avg_sq_sqrt`, 8 bytes, the larger moment; with --fused-adamw the 6 remain.
    Measured: tests/validation/test_memory_zero_step_measured.py, test_memory_zero_adamw_step_measured.py."""
    from planner import deepspeed_sizes
    from planner.engines import zero as zero_engine

    # with accumulation: ZeRO-1 holds whole gradients then (zero.zero1_holds_whole_grads), a partition with one
    # micro-batch, as ZeRO-2 does
    cfg = build_config(model="llama-2-7b", gpus="8xA800", method=Method.full, zero=zero, grad_accum=2)
    p, n = total_params(cfg.model), cfg.dp
    assert memory_per_gpu(cfg).gradients == pytest.approx(2 * p / (1 if zero == 1 else n), rel=1e-9)
    one = build_config(model="llama-2-7b", gpus="8xA800", method=Method.full, zero=zero, grad_accum=1)
    assert memory_per_gpu(one).gradients == pytest.approx(2 * p / n, rel=1e-9)
    group = zero_engine.step_group_elements(cfg, p, n)
    assert group == pytest.approx(p / n, rel=1e-9)  # 842M per rank: under sub_group_size, one (sub-)group
    items = zero_engine.step_items(cfg, p, n, 4.0)
    if zero == 1:  # the gradients outside the partition are freed first: the fp64 norm copy is the larger moment
        assert list(items) == ["ZeRO fp64 gradient-norm copy"]
    else:
        assert items == {"ZeRO fp32 gradients + torch AdamW foreach temporaries, one group": pytest.approx(8 * group)}
        fused = replace(cfg, switches=replace(cfg.switches, fused_adamw=True))
        assert sum(zero_engine.step_items(fused, p, n, 4.0).values()) == pytest.approx(6 * group, rel=1e-9)
    one_gpu = replace(cfg, cluster=parse_gpus("1xA800"))
    sub = zero_engine.step_group_elements(one_gpu, p, 1)
    if zero == 3:  # sub-groups close once they reach sub_group_size, overshooting by less than one tensor
        largest = cfg.model.vocab_size * cfg.model.hidden_size
        assert deepspeed_sizes.SUB_GROUP_SIZE <= sub < deepspeed_sizes.SUB_GROUP_SIZE + largest
    else:
        assert sub == p
