"""Dry runs on fake tensors against the planner (targets of issue 5: weights, gradients, optimizer within 2%,
peak within 10%)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_LLAMA

from planner.build import build_config
from planner.errors import PlanError
from planner.memory import memory_per_gpu
from planner.params import total_params
from planner.strategy import GradCkpt, Method, Precision
from profiler.dryrun import dry_run

CASES = {
    "full": {"method": Method.full},
    "lora": {"method": Method.lora},
    "lora-no-dropout": {"method": Method.lora, "lora_dropout": 0.0},  # --lora-dropout 0: no dropped-out copies
    "lora-ckpt": {"method": Method.lora, "grad_ckpt": GradCkpt.full},
    "full-fp32": {"method": Method.full, "precision": Precision.fp32},
}


def _check(cfg, *, states_tol: float, total_tol: float) -> None:
    result = dry_run(cfg)
    pred = memory_per_gpu(cfg).as_dict()
    for cat in ("weights", "gradients", "optimizer"):
        assert pred[cat] == pytest.approx(result.peak_bytes[cat], rel=states_tol, abs=1024), cat
    assert pred["total"] == pytest.approx(result.peak_bytes["total"], rel=total_tol)
    assert result.peak_bytes["total"] == sum(result.peak_bytes[c] for c in
                                             ("weights", "gradients", "optimizer", "activations", "other"))


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_tiny_llama_matches_planner(tiny_model: Path, case: str) -> None:
    # a 2-layer, 64-wide model: the LoRA adapters are a large share of it, and the planner's per-layer
    # bookkeeping must still hold
    cfg = build_config(model=str(tiny_model), gpus="1xCPU", seq_len=256, **CASES[case])
    _check(cfg, states_tol=0.02, total_tol=0.10)


def test_llama_2_7b_full() -> None:
    cfg = build_config(model="llama-2-7b", gpus="1xCPU", method=Method.full, seq_len=512)
    _check(cfg, states_tol=0.02, total_tol=0.10)


def test_tied_embeddings_stay_tied(tmp_path: Path) -> None:
    # to_empty gives the shared embedding/LM-head Parameter two storages unless the dry run ties them again:
    # Llama 3.2 1B full fine-tuning measured 1.50B parameters and weights +21% before (1.24B is right)
    (tmp_path / "config.json").write_text(json.dumps({**TINY_LLAMA, "vocab_size": 4096, "tie_word_embeddings": True}))
    cfg = build_config(model=str(tmp_path), gpus="1xCPU", method=Method.full, seq_len=64)
    result = dry_run(cfg)
    assert result.params_total == result.params_trainable == total_params(cfg.model)
    _check(cfg, states_tol=0.02, total_tol=0.10)


def test_step_peaks_and_phase(tiny_model: Path) -> None:
    cfg = build_config(model=str(tiny_model), gpus="1xCPU", method=Method.full, seq_len=64)
    result = dry_run(cfg)
    assert len(result.step_peaks_bytes) == 2
    assert result.peak_phase in ("forward", "backward", "optimizer")
    assert result.params_trainable == result.params_total


@pytest.mark.parametrize(("gpus", "item"), [("1xCPU", "AdamW single-tensor temporaries"),
                                            ("1xH100", "AdamW foreach temporaries")])
def test_optimizer_step_peak_follows_the_devices_adamw(tiny_model: Path, gpus: str, item: str) -> None:
    """A CPU plan's dry run steps torch's CPU default (the single-tensor loop), a GPU plan's foreach: at one micro-batch
    of 16 tokens the step is the peak, and the planner's (planner/torch_adamw.py) is the dry run's within 0.1%
    (measured: the rank-order model, 292,831,460 B against 292,829,184 on the CPU, 335,317,220 against 335,316,480
    on the H100)."""
    cfg = build_config(model=str(tiny_model), gpus=gpus, method=Method.full, precision=Precision.fp32, micro_batch=1,
                       seq_len=16)
    result, mem = dry_run(cfg), memory_per_gpu(cfg)
    assert result.peak_phase == mem.phase == "optimizer"
    assert item in mem.other_items
    assert mem.allocated == pytest.approx(result.peak_bytes["total"], rel=1e-3)


@pytest.mark.parametrize(("model", "kw", "needle"), [
    ("chatglm3-6b", {}, "cannot build model chatglm3-6b"),
    ("llama-2-7b", {"gpus": "2xA100"}, "emulates one process"),
    ("llama-2-7b", {"zero": 2, "gpus": "1xA100"}, "emulates one process"),
    ("llama-2-7b", {"method": Method.qlora}, "quantized"),
    ("llama-2-7b", {"grad_ckpt": GradCkpt.selective}, "selective"),
])
def test_unsupported_configs_raise_plan_error(model: str, kw: dict, needle: str) -> None:
    kw = {"gpus": "1xCPU", **kw}
    cfg = build_config(model=model, **kw)
    with pytest.raises(PlanError, match=needle):
        dry_run(cfg)
