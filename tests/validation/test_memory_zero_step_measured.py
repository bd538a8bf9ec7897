"""DeepSpeed's fp32 gradient partition, measured: it exists only inside step(), one group (ZeRO-2) or sub-group
(ZeRO-3) at a time, next to the flat 16-bit copy it is cast from (stage_1_and_2.py step; stage3.py
_prepare_fp32_grad_for_sub_group / _release_sub_group).

One process per case (zero_step_probe.py, each case forked from one interpreter start: DeepSpeed 0.19.8, CPU
accelerator, bf16, a 3.7M-parameter Llama, plain SGD so the optimizer adds nothing), live tensor bytes
counted by profiler.tracker on the second step. Checked:
- the end of backward holds no fp32 gradient: ZeRO-2 adds the 16-bit gradients (2 bytes per parameter) to what
  lived before forward, ZeRO-3 nothing (its 16-bit gradient partition buffer is allocated at initialization);
- the step's peak over the end of backward equals the planner's step item, 6 bytes x the largest group
  (planner/engines/zero.py, step_items / step_group_elements), for ZeRO-2 and for ZeRO-3 with sub_group_size 1e9
  (one sub-group) and 1e6 (four, cut greedily in parameter order). Tolerance 1%: the planner's sub-groups
  count the weight matrices, not the norms (512 of 1,143,296 elements here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner import deepspeed_sizes
from planner.engines import zero
from planner.gpus import parse_gpus
from planner.models import spec_from_hf_config
from planner.params import total_params
from planner.strategy import Engine, Method, Optimizer, Precision, TrainConfig, ZeroStage

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("zero_step_probe.py")
CASES = {"zero2": (2, 1_000_000_000), "zero3-one-sub-group": (3, 1_000_000_000), "zero3-sub-groups": (3, 1_000_000)}


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Every case from one probe start (the imports paid once; each case in a forked process of its own)."""
    pytest.importorskip("deepspeed")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cases = {f"{stage}:{size}": name for name, (stage, size) in CASES.items()}
    res = subprocess.run([sys.executable, str(PROBE), *cases], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    found = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return {cases[got.pop("case")]: got for got in found}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_step_peak_is_the_largest_group_in_fp32_plus_its_flat_copy(measured: dict[str, dict], case: str,
                                                                    monkeypatch) -> None:
    from zero_step_probe import CONFIG

    stage, sub_group_size = CASES[case]
    got = measured[case]
    assert got["peak_label"] == "step"
    grown = got["after_backward"] - got["before"]
    assert grown == pytest.approx(2 * sum(got["numels"]) if stage == 2 else 0, rel=0.01, abs=1024)
    monkeypatch.setattr(deepspeed_sizes, "SUB_GROUP_SIZE", sub_group_size)
    spec = spec_from_hf_config({"model_type": "llama", **CONFIG}, name="probe-llama")
    p = total_params(spec)
    assert p == sum(got["numels"])
    # the probe steps plain SGD (no temporaries), which the plan names: an AdamW plan would add its step's own
    cfg = TrainConfig(model=spec, cluster=parse_gpus("1xA100-80G"), method=Method.full, engine=Engine.deepspeed,
                      zero=ZeroStage(stage), precision=Precision.bf16_mixed, optimizer=Optimizer.sgd)
    predicted = sum(zero.step_items(cfg, p, 1, 0.0).values())
    measured = got["step_peak"] - got["after_backward"]
    print(f"[measured] DeepSpeed ZeRO-{stage} bf16 step, sub_group_size {sub_group_size:.0e}: measured "
          f"{measured:,} B over the end of backward, planner {predicted:,.0f} B ({predicted / measured - 1:+.2%})")
    assert predicted == pytest.approx(measured, rel=0.01)
