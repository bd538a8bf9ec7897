"""The typed config: parts that check themselves, flat keywords and reads kept, plan.json unchanged."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from planner import compute, engines
from planner.errors import PlanError
from planner.gpus import parse_gpus
from planner.models import from_name
from planner.search import _ENGINES
from planner.serialize import OMITTED_AT_DEFAULT, config_from_dict, config_to_dict
from planner.strategy import (
    FLAT_FIELDS,
    ROLLOUT_FIELDS,
    Engine,
    EngineChoice,
    FsdpStrategy,
    Generation,
    Method,
    Offload,
    OffloadDevice,
    ParallelLayout,
    Stage,
    TrainConfig,
    ZeroStage,
)

GOLDEN = Path(__file__).resolve().parents[1] / "runner" / "golden"


def seven_b(**kw) -> TrainConfig:
    return TrainConfig(model=from_name("7b"), cluster=parse_gpus("8xA800"), **kw)


@pytest.mark.parametrize(("kw", "message"), [
    ({"engine": Engine.ddp, "zero": ZeroStage.WEIGHTS}, "--zero needs DeepSpeed"),
    ({"engine": Engine.fsdp, "zero": ZeroStage.GRADIENTS}, "FSDP and ZeRO are exclusive"),
    ({"engine": Engine.ddp, "offload": Offload.optimizer}, "offload needs DeepSpeed ZeRO or FSDP"),
    ({"engine": Engine.deepspeed, "offload": Offload.optimizer}, "offload needs ZeRO stage 1, 2 or 3"),
    ({"engine": Engine.deepspeed, "zero": ZeroStage.GRADIENTS, "offload": Offload.all}, "parameter offload needs"),
    ({"engine": Engine.deepspeed, "zero": ZeroStage.GRADIENTS, "offload": Offload.optimizer,
      "offload_device": OffloadDevice.nvme}, "NVMe offload (ZeRO-Infinity) needs ZeRO-3"),
    ({"engine": Engine.fsdp, "offload": Offload.optimizer}, "FSDP offloads parameters, gradients and optimizer"),
    ({"engine": Engine.fsdp, "offload": Offload.all, "offload_device": OffloadDevice.nvme}, "FSDP offloads to CPU"),
    ({"engine": Engine.deepspeed, "zero": ZeroStage.WEIGHTS, "offload_device": OffloadDevice.nvme},
     "--offload-device nvme needs"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_an_illegal_engine_combination_cannot_be_built(kw: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EngineChoice(**kw)
    with pytest.raises(PlanError):
        seven_b(**kw)  # nor through the flat keywords


def test_every_search_row_is_legal_and_named_once() -> None:
    names = {str(seven_b(engine=e, zero=z, fsdp=f, offload=o, offload_device=d)).split("-TP")[0]
             for e, z, f, o, d in _ENGINES}
    assert len(names) == len(_ENGINES) == len(engines.ROWS)


def test_fsdp_strategy_means_nothing_outside_fsdp() -> None:
    assert EngineChoice(engine=Engine.deepspeed, zero=ZeroStage.WEIGHTS,
                        fsdp=FsdpStrategy.no_shard).fsdp is FsdpStrategy.full_shard


def test_layout_spells_out_its_arithmetic() -> None:
    layout = ParallelLayout(tp=2, pp=2)
    assert layout.problems(12) == []
    assert layout.problems(12, dp=2) == ["TP(2) * PP(2) * DP(2) = 8 != 12 GPUs"]
    assert layout.problems(10) == ["TP(2) * PP(2) = 4 does not divide 10 GPUs"]
    assert layout.dp(12) == 3


def test_flat_keywords_and_reads_still_work() -> None:
    cfg = seven_b(engine=Engine.deepspeed, zero=ZeroStage.WEIGHTS, micro_batch=4, grad_accum=2)
    assert str(cfg) == "Z3-TP1-PP1-DP8-mb4-ga2"
    assert (cfg.zero, cfg.engine_choice.zero, cfg.micro_batch, cfg.batch.micro_batch) == (3, 3, 4, 4)
    moved = replace(cfg, zero=ZeroStage.GRADIENTS, tp=2)
    assert (moved.zero, moved.tp, moved.micro_batch, str(moved)) == (2, 2, 4, "Z2-TP2-PP1-DP4-mb4-ga2")
    with pytest.raises(TypeError, match="no_such_field"):
        seven_b(no_such_field=1)


def test_plan_json_keeps_its_flat_keys_in_order() -> None:
    cfg = seven_b(engine=Engine.fsdp, fsdp=FsdpStrategy.shard_grad_op, tp=1)
    data = config_to_dict(cfg)
    # the online RL settings travel only with those stages (plan.json of the others reads as before them)
    assert tuple(data) == tuple(f for f in FLAT_FIELDS if f not in ROLLOUT_FIELDS and f not in OMITTED_AT_DEFAULT)
    assert config_from_dict(json.loads(json.dumps(data))) == cfg
    grpo = replace(cfg, stage=Stage.grpo, generation=Generation.vllm_colocate, vllm_memory=0.45)
    data = config_to_dict(grpo)
    assert tuple(data) == tuple(f for f in FLAT_FIELDS if f not in OMITTED_AT_DEFAULT)
    assert data["generation"] == "vllm-colocate"
    switched = replace(cfg, fused_adamw=True, transformers_version="4.46.1", keeps_output=True, sync_each_batch=True,
                       doc_len=300, collator_mask=True, litgpt=True)
    assert tuple(config_to_dict(switched)) == tuple(f for f in FLAT_FIELDS if f not in ROLLOUT_FIELDS)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(switched)))) == switched
    assert config_from_dict(json.loads(json.dumps(data))) == grpo


@pytest.mark.parametrize("plan", sorted(GOLDEN.glob("*/plan.json")), ids=lambda p: p.parent.name)
def test_old_plan_files_still_load(plan: Path) -> None:
    data = json.loads(plan.read_text())["config"]
    cfg = config_from_dict(data)
    assert config_to_dict(cfg) == data


def test_mfu_is_one_quantity() -> None:
    """The planner's MFU and the one runner/profiler compute from a measured rate agree."""
    from planner.timing import step_time

    cfg = seven_b(micro_batch=4, grad_accum=2)
    t = step_time(cfg)
    measured = compute.mfu(t.tokens_per_s, compute.model_flops_per_token(cfg), cfg.world_size,
                           compute.peak_flops_per_s(cfg.cluster.gpu, cfg.precision))
    assert measured == pytest.approx(t.mfu, rel=1e-12)


def test_fit_failures_are_data() -> None:
    from planner.build import build_config
    from planner.estimate import FitKind, Limits, estimate

    est = estimate(build_config(model="70b", gpus="1xA800", method=Method.full))
    (failure,) = est.fit_failures
    assert failure.kind is FitKind.gpu_memory and not est.fits
    assert failure.needed_bytes == est.memory.fit_bytes > failure.available_bytes == est.gpu_memory_bytes
    offloaded = estimate(build_config(model="70b", gpus="1xA800", method=Method.full, zero=3, offload=Offload.all),
                         Limits(host_bytes_per_node=2**30))
    assert [f.kind for f in offloaded.fit_failures] == [FitKind.host_memory]
    assert offloaded.fit_failures[0].available_bytes == 2**30
