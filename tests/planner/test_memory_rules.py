"""Specific accounting rules of the memory model, each tied to the framework code it follows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner.activations import LayerTraining, hf_layer_bytes_per_token
from planner.build import build_config
from planner.memory import memory_per_gpu
from planner.models import from_name
from planner.params import total_params
from planner.strategy import Attn, GradCkpt, Method, Offload, Precision


def test_deepspeed_bf16_pipeline_zero0_partitions_optimizer_states() -> None:
    """deepspeed/runtime/engine.py `_do_optimizer_sanity_check`: bf16 + pipeline -> BF16_Optimizer,
    which keeps bf16 and fp32 gradients whole but splits master weights and Adam over DP."""
    cfg = build_config(model="llama-3.2-1b", gpus="8xA800", method=Method.full, zero=0, pp=2)
    mem = memory_per_gpu(cfg)
    p_stage = mem.weights / 2  # parameters of the reported stage, held in 16 bits
    assert mem.gradients == pytest.approx(6 * p_stage, rel=1e-9)
    assert mem.optimizer == pytest.approx(12 * p_stage / cfg.dp, rel=1e-9)
    fp16 = memory_per_gpu(replace(cfg, precision=Precision.fp16_mixed))
    assert fp16.optimizer == pytest.approx(12 * p_stage, rel=1e-9)  # FP16_Optimizer keeps them whole


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
