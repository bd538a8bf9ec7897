"""`ftplan run` fine-tunes the families read from transformers: a tiny Qwen3 (q/k norms), Gemma 3 (sliding-window
and global layers) and Qwen3-MoE (fused experts under grouped_mm, LoRA on the experts as peft applies it), each
built from its config class with a WordLevel tokenizer, on a learnable toy task: LoRA on one process (loss falls),
full fine-tuning on one process, and on two processes over gloo under DDP and DeepSpeed ZeRO-2 / ZeRO-3 (their
ds_config read by DeepSpeed; the Trainer runs FSDP on GPUs only: planner/runnable.py). The plan comes from the
planner reading each model's structure (planner/spec_cache.py)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from toy_model import word_tokenizer

from planner.build import build_config
from planner.models import resolve
from planner.strategy import Method, Precision
from runner.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics
from runner.train import write_plan

pytestmark = pytest.mark.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "Q: {q} A: {a}"
N_WORDS = 24
_DIMS = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
FAMILIES = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"num_hidden_layers": 2}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"num_hidden_layers": 6, "sliding_window": 16}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {"num_hidden_layers": 2, "moe_intermediate_size": 32,
                                                           "num_experts": 4, "num_experts_per_tok": 2}),
}


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"q": f"w{rng.randrange(N_WORDS)}", "a": "w1 w2 w3 w4 w5"} for _ in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    import transformers

    root = tmp_path_factory.mktemp("families")
    fast = word_tokenizer(N_WORDS)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(96)))
    out = {}
    for family, (config_cls, model_cls, extra) in FAMILIES.items():
        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(vocab_size=len(fast), **_DIMS, **extra)
        path = root / family
        getattr(transformers, model_cls)(cfg).save_pretrained(path)
        fast.save_pretrained(path)
        out[family] = path
    # each family's spec derived up front as the first plan would (planner.models `resolve`: a profiler.spec_derive
    # subprocess per config.json, into the spec cache), two at a time: one after the other, inside the first test of
    # each family, they left the second core of this 2-core machine idle for a minute or more each
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(resolve, [str(path) for path in out.values()]))
    return out


def _plan(model: Path, tmp: Path, gpus: str, method: Method, **kw) -> Path:
    if model.name == "qwen3_moe" and method is Method.lora:
        kw["lora_dropout"] = 0.0  # peft's ParamWrapper (LoRA on the fused experts) refuses dropout
    cfg = build_config(model=str(model), gpus=gpus, method=method, micro_batch=2, seq_len=32,
                       precision=Precision.fp32, **kw)
    path = tmp / "plan.json"
    write_plan(cfg, path)
    return path


def _run(plan: Path, model: Path, out: Path, steps: int, *extra: str) -> list[float]:
    """`ftplan run PLAN` as its command line does it: one process trains in place (runner.launcher.launch, here in
    this process, as the command's own process would: no interpreter and library start-up to pay), several start
    torchrun (a subprocess of `ftplan run`)."""
    from runner.launcher import launch
    from runner.train import RunOptions, load_plan

    cfg = load_plan(plan)
    if cfg.world_size == 1:
        opts = RunOptions(model_path=model, data=model.parent / "data.jsonl", output=out, template=TEMPLATE,
                          max_steps=steps, learning_rate=1e-2, report=False)
        assert launch(cfg, plan, opts) == 0
    else:
        proc = subprocess.run([sys.executable, "-m", "ftplan", "run", str(plan), "--model-path", str(model),
                               "--data", str(model.parent / "data.jsonl"), "--output", str(out), "--template",
                               TEMPLATE, "--max-steps", str(steps), "--learning-rate", "1e-2", *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [row["loss"] for row in read_metrics(out / METRICS_FILE)]
    assert len(losses) == steps
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    return losses


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_on_one_process_loss_falls(models: dict[str, Path], tmp_path: Path, family: str) -> None:
    plan = _plan(models[family], tmp_path, "1xCPU", Method.lora)
    _run(plan, models[family], tmp_path / "out", 12)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_lora_on_named_v4_expert_targets_trains(models: dict[str, Path], tmp_path: Path) -> None:
    """The common Qwen3-MoE target list (LLaMA-Factory's, written for transformers v4's per-expert nn.Linear): the
    plan keeps the names, the runner hands them to peft, which converts them to the fused experts
    (planner/peft_moe.py), and the adapter trains."""
    from safetensors import safe_open

    targets = "q_proj,gate_proj,up_proj,down_proj"
    plan = _plan(models["qwen3_moe"], tmp_path, "1xCPU", Method.lora, lora_targets=targets)
    assert json.loads(plan.read_text())["config"]["lora_targets"] == targets.split(",")
    _run(plan, models["qwen3_moe"], tmp_path / "out", 12)
    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("experts" in k for k in keys) and any("q_proj" in k for k in keys), keys


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_on_one_process_loss_falls(models: dict[str, Path], tmp_path: Path, family: str) -> None:
    plan = _plan(models[family], tmp_path, "1xCPU", Method.full)
    _run(plan, models[family], tmp_path / "out", 12)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "method", "engine"), [
    ("qwen3", Method.lora, {}),
    ("gemma3", Method.full, {"zero": 3}),
    ("qwen3_moe", Method.full, {"zero": 2}),
    ("qwen3_moe", Method.lora, {}),
], ids=["qwen3-lora-ddp", "gemma3-full-zero3", "qwen3_moe-full-zero2", "qwen3_moe-lora-ddp"])
def test_two_processes_over_gloo(models: dict[str, Path], tmp_path: Path, family: str, method: Method,
                                 engine: dict) -> None:
    plan = _plan(models[family], tmp_path, "2xCPU", method, **engine)
    out = tmp_path / "out"
    lora = method is Method.lora
    _run(plan, models[family], out, 10, *(("--save-steps", "5") if lora else ()))
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 10
    if lora:  # as test_train.py's LoRA runs on 2 processes check (its DDP case is qwen3-lora-ddp here)
        assert (out / "adapter_model.safetensors").exists() and (out / "checkpoint-5").is_dir()
