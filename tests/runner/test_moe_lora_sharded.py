"""LoRA on a MoE model's fused experts (peft's ParamWrapper: transformers 5's 3-D experts.gate_up_proj /
experts.down_proj and the router, adapted through target_parameters) under the sharding engines, on 2 CPU processes
over gloo, a tiny Qwen3-MoE with all-linear LoRA (which peft converts to the fused experts).

A ParamWrapper reads lora_A / lora_B's weights without calling those modules (peft/tuners/lora/layer.py
ParamWrapper._activate_lora), so an engine that gathers a module's weights in that module's own pre-forward hook
would hand it a shard:
- DeepSpeed ZeRO-3 covers it: while the engine's forward runs, every module's `_parameters` is a ZeROOrderedDict
  whose __getitem__ all-gathers a partitioned parameter on access and registers it as an external parameter of the
  module then running (deepspeed/runtime/zero/parameter_offload.py ZeROOrderedDict.__getitem__, switched on by
  deepspeed/runtime/engine.py DeepSpeedEngine._forward_prologue; DeepSpeed's "automatic external parameter
  detection"). `ftplan run` trains it to DDP's adapter within fp32 rounding; ZeRO-2 bit-exactly.
- FSDP2 with the decoder layers as units unshards every weight inside a layer at the layer's pre-forward: it trains
  to the unsharded weights exactly (fsdp_param_wrapper.py; `ftplan run` cannot show FSDP on the CPU, see there).
- FSDP1 cannot: planner/engines/fsdp.py fsdp1_wrapped_lora_problem refuses the plan, and the last test keeps the
  engine's failure in view (it fails once peft or torch lift it, the sign to lift the rule)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from toy_model import word_tokenizer

from planner.build import build_config
from planner.engines.fsdp import fsdp1_wrapped_lora_problem
from planner.strategy import FsdpStrategy, FsdpVersion, Method, Precision, TrainConfig
from profiler.launcher import free_port
from runner.metrics import METRICS_FILE, read_metrics
from runner.train import write_plan

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]
REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("fsdp_param_wrapper.py")
TEMPLATE = "Q: {q} A: {a}"
N_WORDS = 24
STEPS = 8
ADAPTER = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3-MoE of 2 layers, 4 experts of width 32 (top 2), and 96 rows of a learnable question/answer task."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("moe-lora")
    rng = random.Random(0)
    rows = [{"q": f"w{rng.randrange(N_WORDS)}", "a": "w1 w2 w3 w4 w5"} for _ in range(96)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fast = word_tokenizer(N_WORDS)
    torch.manual_seed(0)
    cfg = transformers.Qwen3MoeConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        num_hidden_layers=2, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
    path = root / "qwen3_moe"
    transformers.Qwen3MoeForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def _plan(model: Path, **engine: object) -> TrainConfig:
    # lora_dropout 0: a ParamWrapper takes none (planner.params.lora_dropout_problem)
    return build_config(model=str(model), gpus="2xCPU", method=Method.lora, micro_batch=2, seq_len=32,
                        precision=Precision.fp32, lora_dropout=0.0, **engine)


def _ftplan_run(model: Path, out: Path, **engine: object) -> list[float]:
    """`ftplan run` for 8 steps, an adapter saved at step 4 and at the end; returns the losses."""
    plan = out.parent / f"{out.name}.plan.json"
    write_plan(_plan(model, **engine), plan)
    proc = subprocess.run([sys.executable, "-m", "ftplan", "run", str(plan), "--model-path", str(model),
                           "--data", str(model.parent / "data.jsonl"), "--output", str(out), "--template", TEMPLATE,
                           "--max-steps", str(STEPS), "--save-steps", "4", "--learning-rate", "1e-2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [row["loss"] for row in read_metrics(out / METRICS_FILE)]


def _experts(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if ".experts." in k}


@pytest.fixture(scope="module")
def ddp(moe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same plan under DDP (every rank holds every weight)."""
    out = tmp_path_factory.mktemp("ddp") / "out"
    _ftplan_run(moe, out)
    return out


@pytest.mark.parametrize("zero", [2, 3], ids=["zero2", "zero3"])
def test_deepspeed_trains_the_expert_lora_as_ddp(moe: Path, ddp: Path, tmp_path: Path, zero: int) -> None:
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "out"
    losses = _ftplan_run(moe, out, zero=zero)
    assert len(losses) == STEPS and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    final, mid, reference = _experts(out / ADAPTER), _experts(out / "checkpoint-4" / ADAPTER), _experts(ddp / ADAPTER)
    # both fused tensors of both layers, lora_A and lora_B (ParamWrapper nests the down_proj one as base_layer)
    assert len(final) == 8 and final.keys() == reference.keys(), sorted(final)
    for key, tensor in final.items():
        assert not torch.equal(tensor, mid[key]), f"{key} did not change between steps 4 and 8"
        if "lora_B" in key:  # peft starts lora_B at zero
            assert tensor.abs().max() > 1e-3, key
    everything, reference_all = load_file(str(out / ADAPTER)), load_file(str(ddp / ADAPTER))
    assert everything.keys() == reference_all.keys()
    for key, tensor in everything.items():
        # ZeRO-3 sums in another order (gathered partitions): 3e-6 seen; ZeRO-2 matched bit for bit
        diff = (tensor - reference_all[key]).abs().max().item()
        assert diff <= 1e-4, (key, diff)


def _fsdp(moe: Path, tmp_path: Path, version: int) -> subprocess.CompletedProcess:
    plan = tmp_path / "plan.json"  # the LoRA config the runner's loader reads; VERSION picks the wrap
    write_plan(_plan(moe, fsdp=FsdpStrategy.full_shard), plan)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(SCRIPT), str(plan), str(moe), str(version), str(STEPS)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def test_fsdp2_trains_the_expert_lora_as_unsharded(moe: Path, tmp_path: Path) -> None:
    proc = _fsdp(moe, tmp_path, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    losses = found["losses"]["fsdp"]
    assert found["sharded"] and len(found["expert_keys"]) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert losses == pytest.approx(found["losses"]["unsharded"], abs=1e-5)
    assert found["max_diff"] <= 1e-5 and found["min_change"] > 1e-3, found


def test_fsdp1_fails_as_the_planner_says(moe: Path, tmp_path: Path) -> None:
    assert fsdp1_wrapped_lora_problem(_plan(moe, fsdp=FsdpStrategy.full_shard)) is None  # FSDP2: no refusal
    proc = _fsdp(moe, tmp_path, 1)
    assert proc.returncode != 0
    # the Trainer's peft wrap policy leaves the never-called lora_A / lora_B units sharded: B A meets a shard
    assert "inconsistent tensor size" in proc.stderr or "is invalid for input of size" in proc.stderr, \
        proc.stderr[-3000:]
    refused = build_config(check=False, model=str(moe), gpus="2xCPU", method=Method.lora, micro_batch=2, seq_len=32,
                           precision=Precision.fp32, lora_dropout=0.0, fsdp=FsdpStrategy.full_shard, fsdp_version=1)
    assert refused.fsdp_version is FsdpVersion.ONE
    assert "FSDP1 cannot train LoRA on experts.gate_up_proj" in (fsdp1_wrapped_lora_problem(refused) or "")
