"""Emitted llamafactory.yaml files, parsed by LLaMA-Factory 0.9.5's own `get_train_args` (STYLE.md habit 8).

LLaMA-Factory pins transformers <= 5.6, peft <= 0.18.1 and accelerate <= 1.11, older than ours, so it lives in a
virtualenv of its own (`.ci/run` builds it: FTPLAN_LLAMAFACTORY_PYTHON, default
~/.cache/ftplan/llamafactory-venv/bin/python); the test skips, saying so, where that venv is absent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from planner.build import build_config
from planner.strategy import Attn, FsdpStrategy, GradCkpt, Method, Optimizer, Precision, Quant, Stage
from runner.emit import emit
from runner.llamafactory import template_for

pytestmark = pytest.mark.slow  # a second interpreter importing torch, transformers and LLaMA-Factory
VENV_PYTHON = Path(os.environ.get("FTPLAN_LLAMAFACTORY_PYTHON",
                                  Path.home() / ".cache/ftplan/llamafactory-venv/bin/python"))
CHECK = Path(__file__).with_name("llamafactory_check.py")

CASES = {
    "lora-z1": dict(model="7b", gpus="8xA800", method=Method.lora, zero=1, micro_batch=2, grad_accum=4,
                    optimizer=Optimizer.adamw_8bit),
    "full-z3-offload-fp16": dict(model="qwen2.5-7b", gpus="8xV100-32G", method=Method.full, zero=3,
                                 precision=Precision.fp16_mixed, grad_ckpt=GradCkpt.full, attn=Attn.eager),
    "qlora-ddp-paged": dict(model="llama-3-8b", gpus="1xA100-80G", method=Method.qlora, quant=Quant.nf4,
                            optimizer=Optimizer.paged_adamw_8bit, micro_batch=4, grad_accum=4,
                            grad_ckpt=GradCkpt.full),
    "qlora-int8": dict(model="mistral-7b", gpus="2xA800", method=Method.qlora, quant=Quant.int8, zero=2),
    "freeze-fsdp-bf16-true": dict(model="13b", gpus="2x8xH100", method=Method.full, freeze_layers=30,
                                  fsdp=FsdpStrategy.full_shard, precision=Precision.bf16_true, attn=Attn.flash),
    "dpo-lora-rope": dict(model="7b", gpus="8xA800", method=Method.lora, zero=2, stage=Stage.dpo, seq_len=8192,
                          rope_scaling="linear:2.0", grad_ckpt=GradCkpt.full),
    "rm-lora-chatglm": dict(model="chatglm3-6b", gpus="4xA800", method=Method.lora, stage=Stage.rm),
    "pt-full-sgd": dict(model="baichuan2-7b", gpus="8xA800", method=Method.full, zero=3, stage=Stage.pt,
                        optimizer=Optimizer.sgd),
    # the families read from transformers: q/k norms, mixture of experts, sliding-window layers, sinks
    "qwen3-lora-z2": dict(model="qwen3-8b", gpus="8xH100", method=Method.lora, zero=2, grad_ckpt=GradCkpt.full),
    "qwen3-moe-full-z3": dict(model="qwen3-30b-a3b", gpus="2x8xH100", method=Method.full, zero=3,
                              grad_ckpt=GradCkpt.full),
    "gemma3-lora-fsdp": dict(model="gemma-3-12b", gpus="8xA100-80G", method=Method.lora,
                             fsdp=FsdpStrategy.full_shard, attn=Attn.eager),
    "gpt-oss-lora-ddp": dict(model="gpt-oss-20b", gpus="8xH100", method=Method.lora, grad_ckpt=GradCkpt.full,
                             attn=Attn.eager),
    # defaults ftplan chose (planner/notes.py): gpt-oss's eager attention, Llama 4's all-linear less its router
    "gpt-oss-lora-default-attn": dict(model="gpt-oss-20b", gpus="8xH100", method=Method.lora, zero=2),
    "llama4-lora-default-targets": dict(model="llama-4-scout-17b-16e", gpus="4x8xH200", method=Method.lora, zero=3,
                                        grad_ckpt=GradCkpt.full),
    "r1-distill-lora": dict(model="deepseek-r1-distill-qwen-7b", gpus="4xA800", method=Method.lora, zero=1),
    # packed documents (--doc-len): neat_packing, FlashAttention-2's varlen path
    "lora-fa2-neat-packing": dict(model="llama-3-8b", gpus="1xA100-80G", method=Method.lora, attn=Attn.flash,
                                  seq_len=4096, doc_len=300, grad_ckpt=GradCkpt.full),
    # --sync-each-batch: the Trainer's accelerator_config (runner/switches.py)
    "fsdp-sync-each-batch": dict(model="llama-3-8b", gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard,
                                 micro_batch=2, grad_accum=4, grad_ckpt=GradCkpt.full, sync_each_batch=True),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict[str, tuple[object, dict]]:
    if not VENV_PYTHON.exists():
        pytest.skip(f"no LLaMA-Factory virtualenv at {VENV_PYTHON} (.ci/run builds it; or set "
                    "FTPLAN_LLAMAFACTORY_PYTHON)")
    root = tmp_path_factory.mktemp("llamafactory")
    configs, files = {}, []
    for name, kwargs in CASES.items():
        cfg = build_config(**kwargs)
        emit(cfg, root / name)
        configs[name] = cfg
        files.append(str(root / name / "llamafactory.yaml"))
    # one process group of one (LLaMA-Factory refuses to train without torchrun); DeepSpeed on the CPU
    env = {**os.environ, "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    done = subprocess.run([str(VENV_PYTHON), str(CHECK), *files], capture_output=True, text=True, timeout=600,
                          cwd=root, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(CASES), done.stdout + done.stderr[-3000:]
    return {name: (configs[name], line) for name, line in zip(CASES, lines, strict=True)}


@pytest.mark.parametrize("name", list(CASES))
def test_llamafactory_parses_the_emitted_yaml(parsed, name: str) -> None:
    cfg, got = parsed[name]
    assert "error" not in got, got["error"]
    assert got["stage"] == cfg.stage.value
    assert got["per_device_train_batch_size"] == cfg.micro_batch
    assert got["gradient_accumulation_steps"] == cfg.grad_accum
    # packing keeps one position free (hparams/data_args.py: `cutoff_len -= 1` under packing)
    assert got["cutoff_len"] == cfg.seq_len - (1 if got["neat_packing"] else 0)
    assert got["neat_packing"] == bool(cfg.doc_len) and (got["packing"] or not cfg.doc_len)
    assert got["template"] == template_for(cfg) and got["template_known"]
    assert got["gradient_checkpointing"] == (cfg.grad_ckpt is not GradCkpt.none)
    assert (got["deepspeed"] is not None) == (cfg.engine.value == "deepspeed")
    assert got["bf16"] == (cfg.precision in (Precision.bf16_mixed, Precision.bf16_true))
    assert got["fp16"] == (cfg.precision is Precision.fp16_mixed)
    assert got["pure_bf16"] == (cfg.precision is Precision.bf16_true)
    assert got["flash_attn"] == {Attn.eager: "disabled", Attn.sdpa: "sdpa", Attn.flash: "fa2"}[cfg.attn]
    assert got["gradient_accumulation_kwargs"] == ({"sync_each_batch": True} if cfg.sync_each_batch else None)
    if cfg.method is Method.full:
        want = "freeze" if cfg.freeze_layers else "full"
        assert got["finetuning_type"] == want
        if cfg.freeze_layers:
            assert got["freeze_trainable_layers"] == cfg.model.num_layers - cfg.freeze_layers
    else:
        assert got["finetuning_type"] == "lora"
        assert (got["lora_rank"], got["lora_alpha"]) == (cfg.lora_r, cfg.lora_alpha)
        assert got["lora_target"] == list(cfg.lora_targets)  # ["all"], or the targets planned by name
        assert got["quantization_bit"] == ({Quant.nf4: 4, Quant.int8: 8}[cfg.quant]
                                           if cfg.method is Method.qlora else None)
    assert got["rope_scaling"] == (cfg.model.rope_scaling.partition(":")[0] if cfg.model.rope_scaling else None)
