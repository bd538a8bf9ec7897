"""Every emitted ds_config is accepted by DeepSpeed's own parser at the plan's data-parallel size.

The world size is simulated the way DeepSpeed itself takes it from a model-parallel unit: `DeepSpeedConfig`
asks `mpu.get_data_parallel_world_size()` (deepspeed/runtime/config.py, `DeepSpeedConfig.__init__`), after
`dist.get_rank()`, which is patched to rank 0 so no process group is needed.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from functools import cache
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.build import build_config
from planner.configs.ds_config import AUTO, build_ds_config
from planner.search import candidates
from planner.strategy import Engine, Offload, OffloadDevice, Optimizer, Precision, TrainConfig, ZeroStage
from planner.validity import problems

deepspeed = pytest.importorskip("deepspeed")
from deepspeed.runtime import lr_schedules  # noqa: E402
from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS, DeepSpeedConfig  # noqa: E402

# (model, gpus, precision): single and multi-node, bf16 / fp16 (V100 and T4 lack bf16) / fp32, dense and MoE,
# GQA and MHA, tied and untied embeddings
BASES: tuple[tuple[str, str, Precision], ...] = (
    ("7b", "8xA800", Precision.bf16_mixed),
    ("13b", "2x8xA800", Precision.bf16_mixed),
    ("70b", "4x8xH100", Precision.bf16_mixed),
    ("llama-3-8b", "8xH100", Precision.fp32),
    ("llama-3.2-1b", "4xA10G", Precision.bf16_mixed),
    ("mixtral-8x7b", "2x8xH800", Precision.bf16_mixed),
    ("qwen2.5-7b", "8xV100-32G", Precision.fp16_mixed),
    ("chatglm3-6b", "2x4xT4", Precision.fp16_mixed),
    ("bloom-7b1", "16xA100-80G", Precision.bf16_mixed),
    ("baichuan2-13b", "8xA100-40G", Precision.fp16_mixed),
    ("qwen3-30b-a3b", "2x8xH100", Precision.bf16_mixed),
    ("gemma-3-12b", "8xA100-80G", Precision.bf16_mixed),
)
N_PLANS = 500


@cache
def pool(i: int) -> tuple[TrainConfig, ...]:
    """The valid DeepSpeed plans of one base, in the search's own order."""
    model, gpus, precision = BASES[i]
    base = build_config(model=model, gpus=gpus, precision=precision, check=False)
    return tuple(c for c in candidates(base) if c.engine is Engine.deepspeed and not problems(c))


class DataParallelUnit:
    """The one method of DeepSpeed's model-parallel unit that DeepSpeedConfig reads."""

    def __init__(self, dp: int) -> None:
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp


def parse(ds: dict, dp: int) -> DeepSpeedConfig:
    with mock.patch("deepspeed.comm.get_rank", return_value=0):
        return DeepSpeedConfig(ds, mpu=DataParallelUnit(dp))


def autos(obj: Any, path: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in autos(v, f"{path}.{k}" if path else k)]
    return [path] if obj == AUTO else []


def trainer_filled(cfg: TrainConfig, trainer_ds: dict, plain: dict) -> dict:
    """The Trainer variant after transformers fills its "auto" values from TrainingArguments set to the plan."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    opt = plain.get("optimizer", {}).get("params", {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8,
                                                    "weight_decay": 0.0})
    args = SimpleNamespace(
        world_size=cfg.dp, per_device_train_batch_size=cfg.micro_batch, gradient_accumulation_steps=cfg.grad_accum,
        max_grad_norm=plain["gradient_clipping"], learning_rate=opt["lr"], adam_beta1=opt["betas"][0],
        adam_beta2=opt["betas"][1], adam_epsilon=opt["eps"], weight_decay=opt["weight_decay"],
        save_on_each_node=False, fp16=cfg.precision is Precision.fp16_mixed, fp16_full_eval=False,
        bf16=cfg.precision is Precision.bf16_mixed, bf16_full_eval=False, get_warmup_steps=lambda n: n // 10)
    hf = HfTrainerDeepSpeedConfig(trainer_ds)
    try:
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=cfg.model.hidden_size)),
                                   num_training_steps=1000)
        return hf.config
    finally:
        unset_hf_deepspeed_config()


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def check_plan(cfg: TrainConfig) -> None:
    ds = build_ds_config(cfg)
    assert not autos(ds), f"{cfg}: 'auto' left at {autos(ds)}"
    parsed = parse(ds, cfg.dp)
    assert parsed.world_size == cfg.dp
    assert parsed.train_batch_size == cfg.global_batch == cfg.micro_batch * cfg.grad_accum * cfg.dp
    assert parsed.train_micro_batch_size_per_gpu == cfg.micro_batch
    assert parsed.gradient_accumulation_steps == cfg.grad_accum
    assert parsed.zero_optimization_stage == int(cfg.zero)
    assert parsed.bfloat16_config.enabled == (cfg.precision is Precision.bf16_mixed)
    assert parsed.float16_config.enabled == (cfg.precision is Precision.fp16_mixed)
    zc = parsed.zero_config
    if cfg.zero > ZeroStage.DISABLED:
        assert zc.reduce_bucket_size == cfg.model.hidden_size ** 2
        assert zc.overlap_comm and zc.contiguous_gradients
    if cfg.offload is not Offload.none:
        assert _value(zc.offload_optimizer.device) == cfg.offload_device.value
        assert zc.offload_optimizer.pin_memory
        if cfg.offload_device is OffloadDevice.nvme:
            assert zc.offload_optimizer.nvme_path is not None
        # DeepSpeed's own optimizer and a scheduler it knows, with parameters its class takes
        assert parsed.optimizer_name in DEEPSPEED_OPTIMIZERS
        assert parsed.scheduler_name in lr_schedules.VALID_LR_SCHEDULES
        accepted = inspect.signature(getattr(lr_schedules, parsed.scheduler_name).__init__).parameters
        assert set(parsed.scheduler_params) <= set(accepted)
    else:
        assert "optimizer" not in ds
    if cfg.offload is Offload.all:
        assert _value(zc.offload_param.device) == cfg.offload_device.value
        largest = cfg.model.vocab_size * cfg.model.hidden_size
        assert cfg.offload_device is OffloadDevice.cpu or zc.offload_param.buffer_size >= largest
    if cfg.zero > ZeroStage.DISABLED and cfg.optimizer is not Optimizer.adamw:
        assert parsed.zero_allow_untested_optimizer
    if cfg.tp > 1:
        assert parsed.tensor_parallel_config.autotp_size == cfg.tp
    # the world size is live: one more data-parallel rank and the batch no longer multiplies out
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        parse(ds, cfg.dp + 1)
    # the Trainer variant: "auto" where transformers fills it, and filled it is the plain config
    trainer = build_ds_config(cfg, for_trainer=True)
    assert {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
            "gradient_clipping", "bf16.enabled", "fp16.enabled"} <= set(autos(trainer))
    filled = trainer_filled(cfg, trainer, ds)
    assert {k: v for k, v in filled.items() if k != "scheduler"} == {k: v for k, v in ds.items() if k != "scheduler"}
    parse(filled, cfg.dp)


def test_pools_hold_every_zero_stage_and_offload():
    plans = [c for i in range(len(BASES)) for c in pool(i)]
    assert len(plans) > 10 * N_PLANS
    assert {c.zero for c in plans} == set(ZeroStage)
    assert {(c.offload, c.offload_device) for c in plans} >= {(Offload.optimizer, OffloadDevice.cpu),
                                                              (Offload.all, OffloadDevice.nvme)}
    assert {c.tp for c in plans} >= {1, 2, 8} and {c.pp for c in plans} >= {1, 2}


def test_random_plans_parse_in_deepspeed():
    seen: set[str] = set()

    @settings(max_examples=int(N_PLANS * 1.2), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(base=st.integers(0, len(BASES) - 1), index=st.integers(0, 10**9), opt=st.sampled_from(Optimizer))
    def prop(base: int, index: int, opt: Optimizer) -> None:
        plans = pool(base)
        cfg = plans[index % len(plans)]
        varied = replace(cfg, optimizer=opt)
        if not problems(varied):  # also the optimizers the search leaves out (SGD, paged)
            cfg = varied
        seen.add(f"{BASES[base][0]} {BASES[base][1]} {cfg.method.value} {cfg.optimizer.value} {cfg}")
        check_plan(cfg)

    prop()
    print(f"{len(seen)} distinct random plans accepted by DeepSpeedConfig")
    assert len(seen) >= N_PLANS


def test_batch_identity_is_checked_by_deepspeed():
    cfg = build_config(model="7b", gpus="8xA800", zero=2, micro_batch=2, grad_accum=4)
    ds = build_ds_config(cfg)
    assert ds["train_batch_size"] == 64
    ds["gradient_accumulation_steps"] = 3
    with pytest.raises(AssertionError, match="64 != 2 \\* 3 \\* 8"):
        parse(ds, cfg.dp)


def test_fp16_has_dynamic_loss_scaling():
    cfg = build_config(model="7b", gpus="8xV100-32G", zero=2, precision=Precision.fp16_mixed)
    parsed = parse(build_ds_config(cfg), cfg.dp)
    assert parsed.float16_config.enabled and parsed.float16_config.loss_scale == 0  # 0 = dynamic
    assert parsed.float16_config.initial_scale_power == 16


def test_bucket_sizes_come_from_the_shared_functions():
    from planner import deepspeed_sizes as sizes

    cfg = build_config(model="70b", gpus="2x8xA800", zero=3, offload=Offload.all, offload_device=OffloadDevice.nvme)
    z = build_ds_config(cfg)["zero_optimization"]
    assert z["reduce_bucket_size"] == sizes.reduce_bucket_elements(cfg.model) == 8192 * 8192
    assert z["stage3_prefetch_bucket_size"] == sizes.prefetch_bucket_elements(cfg.model)
    assert z["stage3_param_persistence_threshold"] == sizes.param_persistence_threshold(cfg.model) == 81920
    assert z["offload_param"]["buffer_size"] == sizes.nvme_param_buffer_elements(cfg.model) == 32000 * 8192
