"""FSDP2's all-gathers and reduce-scatters per micro-batch (planner.engines.fsdp2_traffic) against the calls FSDP2
makes on 2 CPU processes over gloo in accelerate's units (fsdp2_calls_probe.py: the calls it records under
`FSDP::all_gather` and `FSDP::post_backward_reduce`, and the process group's own all-gathers and reduce-scatters).
Cases: the head untied and tied to the embedding; everything trained, --freeze-layers 1, and only the decoder layers
trained (where LoRA's adapters are: the planner's LoRA on q_proj); FULL_SHARD, and SHARD_GRAD_OP with everything
trained. The counts are exact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from torchrun_cases import run_cases

from planner.build import build_config
from planner.engines.fsdp2_traffic import fsdp2_traffic, fsdp2_units
from planner.models import spec_from_hf_config
from planner.states import param_counts
from planner.strategy import FsdpStrategy, Method, Precision, TrainConfig

PROBE = Path(__file__).with_name("fsdp2_calls_probe.py")
CASES = [(tied, train, True) for tied in (False, True) for train in ("full", "freeze", "layers")] + \
    [(False, "full", False), (True, "full", False)]


def _name(tied: bool, train: str, reshard: bool) -> str:
    return f"{'tied' if tied else 'untied'}-{train}-{'full_shard' if reshard else 'shard_grad_op'}"


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Every case from one torchrun (each rank imports the libraries once and forks a process per case)."""
    cases = {f"{int(tied)}:{train}:{int(reshard)}": _name(tied, train, reshard) for tied, train, reshard in CASES}
    return run_cases(PROBE, cases, {}, timeout_s=600)


def planned(tied: bool, train: str, reshard: bool) -> TrainConfig:
    from fsdp2_calls_probe import CONFIG, MICRO_BATCH, SEQ

    kw: dict = dict(model="llama-2-7b", gpus="2xCPU", method=Method.full, precision=Precision.fp32,
                    micro_batch=MICRO_BATCH, seq_len=SEQ, check=False, fsdp_version=2,
                    fsdp=FsdpStrategy.full_shard if reshard else FsdpStrategy.shard_grad_op)
    if train == "freeze":
        kw.update(freeze_layers=1)
    elif train == "layers":
        kw.update(method=Method.lora, lora_r=8, lora_alpha=16, lora_targets="q_proj")
    cfg = build_config(**kw)
    spec = spec_from_hf_config({"model_type": "llama", **CONFIG, "tie_word_embeddings": tied}, name="probe")
    return dataclasses.replace(cfg, model=spec)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[_name(*c) for c in CASES])
def test_fsdp2_gathers_and_reduce_scatters_per_micro_batch(measured: dict[str, dict], case: tuple) -> None:
    got = measured[_name(*case)]
    cfg = planned(*case)
    counts = param_counts(cfg.model, cfg.adapter, cfg.stage)  # fp32: 4 bytes a parameter and a gradient
    t = fsdp2_traffic(cfg, param_bytes_gpu=4.0 * counts.total, grad_bytes=4.0 * counts.trainable)
    assert sum(n for _, n in t.forward_gathers) == got["forward_gathers"]
    assert sum(n for _, n in t.backward_gathers) == got["backward_gathers"]
    assert t.reduce_scatter_calls == got["reduce_scatters"]
    # the process group's calls: one per FSDP2 all-gather and reduce-scatter, none of its own
    assert (t.gather_calls, t.reduce_scatter_calls) == (got["c10d_all_gather"], got["c10d_reduce_scatter"])
    assert fsdp2_units(cfg) == got["forward_gathers"]  # every unit holding parameters gathers once in forward
