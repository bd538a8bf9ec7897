"""Emitted verl.yaml files of PPO plans, composed onto verl 0.9.1's own ppo_trainer.yaml by Hydra and checked by
verl's validate_config (STYLE.md habit 8), as `python -m verl.trainer.main_ppo key=value ...` reads them.

verl pins transformers < 5.11 and imports Ray on import, so it lives in a virtualenv of its own (`.ci/run` builds
it: FTPLAN_VERL_PYTHON, default ~/.cache/ftplan/verl-venv/bin/python); the test skips, saying so, where that venv
is absent. verl's model config reads the model's config.json and tokenizer, so the plans name a local model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from planner.build import build_config
from planner.strategy import FsdpStrategy, GradCkpt, Method, Offload, Stage
from runner.emit import emit

pytestmark = pytest.mark.slow  # a second interpreter importing torch, transformers, Ray and verl
VENV_PYTHON = Path(os.environ.get("FTPLAN_VERL_PYTHON", Path.home() / ".cache/ftplan/verl-venv/bin/python"))
CHECK = Path(__file__).with_name("verl_check.py")

CASES = {
    "full-8xH100": dict(gpus="8xH100", method=Method.full, micro_batch=4, grad_ckpt=GradCkpt.full),
    "lora-2x8xA800-offload": dict(gpus="2x8xA800", method=Method.lora, micro_batch=2, grad_accum=2,
                                  offload=Offload.all, num_generations=4, kl_beta=0.0),
    "full-4xH100-tp2-sleepless": dict(gpus="4xH100", method=Method.full, micro_batch=8, vllm_tp=2, vllm_sleep=False,
                                      vllm_memory=0.4),
}


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, dict]]:
    if not VENV_PYTHON.exists():
        pytest.skip(f"no verl virtualenv at {VENV_PYTHON} (.ci/run builds it; or set FTPLAN_VERL_PYTHON)")
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("verl")
    model = root / "model"
    LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256,
                architectures=["LlamaForCausalLM"]).save_pretrained(model)
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                            unk_token="<unk>").save_pretrained(model)
    configs, files = {}, []
    for name, kw in CASES.items():
        cfg = build_config(model=str(model), stage=Stage.ppo, fsdp=FsdpStrategy.full_shard, seq_len=128,
                           completion_len=64, **kw)
        emit(cfg, root / name)
        configs[name] = cfg
        files.append(str(root / name / "verl.yaml"))
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([str(VENV_PYTHON), str(CHECK), *files], capture_output=True, text=True, timeout=600,
                          cwd=root, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(CASES), done.stdout + done.stderr[-3000:]
    return {name: (configs[name], line) for name, line in zip(CASES, lines, strict=True)}


@pytest.mark.parametrize("name", list(CASES))
def test_verl_parses_and_validates_the_emitted_config(parsed, name: str) -> None:
    cfg, got = parsed[name]
    assert "error" not in got, got["error"]
    r = cfg.rollout
    assert got["train_batch_size"] * got["n"] == cfg.global_batch and got["n"] == r.num_generations
    assert got["n_gpus"] == cfg.world_size and got["micro_batch"] == cfg.micro_batch
    assert got["mini_batch"] == got["train_batch_size"]  # one optimizer step per PPO iteration, as planned
    assert got["lora_rank"] == (cfg.lora_r if cfg.method is not Method.full else 0)
    assert got["gpu_memory_utilization"] == r.vllm_memory and got["free_cache_engine"] == r.vllm_sleep
    assert got["tp"] == r.vllm_tp and got["kl_coef"] == r.kl_beta
    assert got["prompt_length"] + got["response_length"] == cfg.seq_len
    assert got["param_offload"] == (cfg.offload is Offload.all) and got["adv_estimator"] == "gae"
