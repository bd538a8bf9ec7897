"""The rm and dpo stages (TRL's RewardTrainer / DPOTrainer) and QLoRA on the CPU, end to end on a tiny Llama
built here: the loss falls, reward accuracy and margin are logged per step, adapters merge, a killed DPO run
resumes onto the same curve; preference data in TRL's and the alpaca-like forms, bad rows named by file and
line; ppo refused in one line."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kill_run import ftplan_bg, kill_left_behind, kill_run_at_checkpoint, wait_ok
from toy_model import save_tiny_llama

from planner.build import build_config
from planner.errors import PlanError
from planner.strategy import FsdpStrategy, Method, Optimizer, Precision, Stage
from runner.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics
from runner.train import RunOptions, write_plan

REPO = Path(__file__).resolve().parents[2]
N_WORDS = 24


def _pref_rows(n: int, seed: int = 0) -> list[dict]:
    """Learnable within a dozen steps: any question, the same preferred answer over the same rejected one."""
    rng = random.Random(seed)
    return [{"prompt": f"Q: w{rng.randrange(N_WORDS)} A:", "chosen": " w1 w2 w3", "rejected": " w7 w8 w9"}
            for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-stages")
    save_tiny_llama(root / "model", N_WORDS)
    (root / "pref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _pref_rows(96)))
    rng = random.Random(1)
    (root / "sft.jsonl").write_text("".join(
        json.dumps({"q": f"w{rng.randrange(N_WORDS)}", "a": "w1 w2 w3 w4 w5"}) + "\n" for _ in range(96)))
    return root


def _plan(tiny: Path, name: str, gpus: str = "1xCPU", **kw) -> Path:
    kw = {"micro_batch": 4, "seq_len": 32, "precision": Precision.fp32, "method": Method.lora, **kw}
    path = tiny / f"plan-{name}.json"
    write_plan(build_config(model=str(tiny / "model"), gpus=gpus, **kw), path)
    return path


def _run_in_process(tiny: Path, plan: Path, out: Path, steps: int, data: str = "pref.jsonl", **kw) -> list[dict]:
    from runner.launcher import launch
    from runner.train import load_plan

    opts = RunOptions(model_path=tiny / "model", data=tiny / data, output=out, max_steps=steps, save_steps=100,
                      learning_rate=1e-2, report=False, **kw)
    assert launch(load_plan(plan), plan, opts) == 0
    return read_metrics(out / METRICS_FILE)


def _ftplan(*args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftplan", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


DPO_STEPS = 12


@pytest.fixture(scope="module")
def dpo_lora_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """One 12-step LoRA DPO run in this process (plan, output, metrics rows): the test of what it learns and the
    reference of the kill-and-resume test (checkpoints do not change the steps)."""
    plan = _plan(tiny, "dpo", stage=Stage.dpo)
    out = tmp_path_factory.mktemp("dpo-lora") / "dpo"
    return plan, out, _run_in_process(tiny, plan, out, DPO_STEPS)


def test_dpo_lora_loss_falls_reward_accuracy_rises_and_adapter_merges(tiny: Path, tmp_path: Path,
                                                                      dpo_lora_run: tuple) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from runner.merge import merge

    _, out, rows = dpo_lora_run
    assert [r["step"] for r in rows] == list(range(1, 13))
    losses = [r["loss"] for r in rows]
    # DPO's loss starts at log 2 (policy = reference) and falls as the chosen answer gains on the rejected one
    assert math.isclose(losses[0], math.log(2), abs_tol=1e-3), losses
    assert _mean(losses[-3:]) < losses[0] - 0.2, losses
    assert rows[-1]["reward_accuracy"] == 1.0 and rows[-1]["reward_margin"] > rows[1]["reward_margin"] > 0, rows
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["stage"] == "dpo" and summary["final_reward_accuracy"] == 1.0 and "eval_reward_margin" in summary

    merged = merge(out, tmp_path / "merged")
    ids = torch.tensor([[1, 4, 10, 5, 7, 8, 9, 2]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny / "model"))
    with torch.no_grad():
        want = PeftModel.from_pretrained(base, str(out)).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(merged)).eval()(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_rm_lora_loss_falls_and_merges_into_a_scalar_head(tiny: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from runner.merge import merge

    out = tmp_path / "rm"
    rows = _run_in_process(tiny, _plan(tiny, "rm", stage=Stage.rm), out, 10)
    losses = [r["loss"] for r in rows]
    assert len(losses) == 10 and _mean(losses[-3:]) < _mean(losses[:3]) - 0.2, losses
    assert rows[-1]["reward_accuracy"] == 1.0 and rows[-1]["reward_margin"] > 0, rows
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["task_type"] == "SEQ_CLS" and "score" in adapter_cfg["modules_to_save"]

    merged = AutoModelForSequenceClassification.from_pretrained(str(merge(out, tmp_path / "merged"))).eval()
    assert merged.config.num_labels == 1
    chosen, rejected = torch.tensor([[1, 4, 10, 5, 11, 12, 13, 2]]), torch.tensor([[1, 4, 10, 5, 17, 18, 19, 2]])
    with torch.no_grad():
        assert merged(chosen).logits.item() > merged(rejected).logits.item()  # ids 11-13: w5..; the trained order


def test_qlora_sft_trains_on_the_cpu_with_a_bitsandbytes_optimizer(tiny: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    from runner.model import ModelOptions, load_model, model_source
    from runner.train import load_plan

    plan = _plan(tiny, "qlora", method=Method.qlora, optimizer=Optimizer.paged_adamw_8bit)
    model = load_model(load_plan(plan), model_source(tiny / "model"), ModelOptions(on_cuda=False))
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7 and linears[0].weight.quant_type == "nf4"  # q k v o gate up down per layer
    rows = _run_in_process(tiny, plan, tmp_path / "qlora", 12, data="sft.jsonl", template="Q: {q} A: {a}")
    losses = [r["loss"] for r in rows]
    assert _mean(losses[-3:]) < _mean(losses[:3]) - 0.3, losses


def test_preference_forms_and_bad_rows(tmp_path: Path) -> None:
    from runner.data import ALPACA_PROMPT_INPUT
    from runner.stages.preference_data import load_pairs

    trl = tmp_path / "trl.jsonl"
    trl.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    assert [(p.prompt, p.chosen, p.rejected) for p in load_pairs(trl)] == [("p", "a", "b")]
    alpaca = tmp_path / "alpaca.json"  # LLaMA-Factory's ranking data: a JSON list
    alpaca.write_text(json.dumps([{"instruction": "i", "input": "x", "chosen": "a", "rejected": "b"}], indent=1))
    assert load_pairs(alpaca)[0].prompt == ALPACA_PROMPT_INPUT.format(instruction="i", input="x")
    medical = tmp_path / "medical.jsonl"  # MedicalGPT's reward / DPO rows
    medical.write_text(json.dumps({"system": "", "history": [], "question": "q", "response_chosen": "a",
                                   "response_rejected": "b"}) + "\n")
    assert load_pairs(medical)[0].chosen == "a"
    for rows, where in (([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}],
                         ":2: missing column 'rejected'"),
                        ([{"prompt": "p", "chosen": "a", "rejected": "a"}], ":1: 'chosen' and 'rejected' are the same"),
                        ([{"text": "t"}], ":1: cannot tell the preference format"),
                        ([{"prompt": "p", "chosen": "", "rejected": "b"}], ":1: column 'chosen' is empty")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(PlanError, match=f"^{bad}{where}"):
            load_pairs(bad)


def test_cli_bad_preference_row_and_ppo_exit_2_in_one_line(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" + '{"prompt": "p"}\n')
    out = tmp_path / "out"
    common = ["--model-path", str(tiny / "model"), "--output", str(out)]
    res = _ftplan("run", str(_plan(tiny, "dpo-bad", stage=Stage.dpo)), "--data", str(bad), *common)
    assert res.returncode == 2 and res.stderr.strip() == f"ftplan: error: {bad}:2: missing column 'chosen'", \
        res.stderr
    # a PPO plan (verl's layout: FSDP, vLLM beside the models, so a GPU cluster) is handed to verl, not run here
    ppo = _plan(tiny, "ppo", gpus="1xA800", stage=Stage.ppo, fsdp=FsdpStrategy.full_shard, completion_len=16,
                precision=Precision.bf16_mixed)
    res = _ftplan("run", str(ppo), "--data", str(tiny / "pref.jsonl"), *common)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "verl" in res.stderr, res.stderr
    assert not out.exists()


@pytest.mark.slow
def test_dpo_kill_after_checkpoint_then_resume_joins_up(tiny: Path, tmp_path: Path, dpo_lora_run: tuple) -> None:
    # the uninterrupted reference is the 12-step run of the test above (same plan, data, seed and learning rate;
    # the linear schedule follows --max-steps, so the runs here take the same 12)
    plan, _, want = dpo_lora_run
    steps = DPO_STEPS
    args = ["--model-path", str(tiny / "model"), "--data", str(tiny / "pref.jsonl"), "--max-steps", str(steps),
            "--learning-rate", "1e-2", "--save-steps", "3"]
    out = tmp_path / "out"
    kill_run_at_checkpoint([str(plan), *args, "--output", str(out)], out / "checkpoint-3")
    assert not (out / SUMMARY_FILE).exists()

    res = _ftplan("run", str(plan), *args, "--output", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["resumed_from_step"] in (3, 6) and summary["steps"] == steps
    rows = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for got, exp in zip(rows, want, strict=True):  # same data order, RNG, optimizer state and reference
        assert math.isclose(got["loss"], exp["loss"], rel_tol=1e-3), (rows, want)
        assert math.isclose(got["reward_margin"], exp["reward_margin"], rel_tol=1e-3, abs_tol=1e-4)


def test_fsdp_qlora_emits_quant_storage_that_transformers_accepts(tmp_path: Path) -> None:
    from transformers import BitsAndBytesConfig

    from runner.emit import emit
    from runner.quant import BNB_CONFIG_FILE, bnb_config

    fsdp = build_config(model="llama-2-7b", gpus="8xA800", method=Method.qlora, fsdp=FsdpStrategy.full_shard,
                        precision=Precision.bf16_true)
    emit(fsdp, tmp_path / "fsdp")
    written = json.loads((tmp_path / "fsdp" / BNB_CONFIG_FILE).read_text())
    assert written["bnb_4bit_quant_storage"] == "bfloat16" and written["bnb_4bit_quant_type"] == "nf4"
    loaded = BitsAndBytesConfig.from_dict(written)
    assert loaded.load_in_4bit and str(loaded.bnb_4bit_quant_storage) == "torch.bfloat16"
    # under mixed precision the runner loads fp32 masters (runner.model.load_dtype): the storage follows them
    cpu = build_config(model="llama-2-7b", gpus="2xCPU", method=Method.qlora, fsdp=FsdpStrategy.full_shard)
    assert str(bnb_config(cpu, on_cuda=False).bnb_4bit_quant_storage) == "torch.float32"
    ddp = build_config(model="llama-2-7b", gpus="1xA800", method=Method.qlora)
    assert "bnb_4bit_quant_storage" not in json.loads(emit(ddp, tmp_path / "ddp")[-1].parent.joinpath(
        BNB_CONFIG_FILE).read_text())


PEAK_METHODS = [Method.full, Method.lora]


@pytest.fixture(scope="module")
def dpo_peak_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Method, tuple[subprocess.Popen, Path]]]:
    """The tracked 2-rank runs of every case of the test below on one model and data set, started together (each
    test waits for its own): they spend most of their time importing, so side by side they share the cores."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("dpo-peak")
    model_dir = root / "model"
    words = ["<pad>", "<s>", "</s>", "<unk>", "Q:", "A:"] + [f"w{i}" for i in range(N_WORDS)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(model_dir)
    torch.manual_seed(0)
    # a vocabulary wider than the tokenizer's: the head and its buffers weigh as in a real model
    LlamaForCausalLM(LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=0)).save_pretrained(model_dir)
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(n))

    # every pair exactly fills seq_len (prompt 16 + answer 47 + EOS), so each micro-batch is full width
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q: {text(14)} A:", "chosen": f" {text(47)}",
                                        "rejected": f" {text(47)}"}) + "\n" for _ in range(32)))
    runs = {}
    for method in PEAK_METHODS:
        plan = root / f"plan-{method.value}.json"
        write_plan(build_config(model=str(model_dir), gpus="2xCPU", method=method, stage=Stage.dpo, micro_batch=2,
                                seq_len=64, precision=Precision.fp32), plan)
        out = root / f"out-{method.value}"
        runs[method] = (ftplan_bg("run", str(plan), "--model-path", str(model_dir), "--data", str(data),
                                   "--output", str(out), "--max-steps", "3", "--eval-fraction", "0",
                                   log=root / f"{method.value}.log", env={**os.environ, "FTPLAN_TRACK_TENSORS": "1"}),
                        out)
    yield runs
    kill_left_behind(proc for proc, _ in runs.values())


@pytest.mark.slow
@pytest.mark.parametrize("method", PEAK_METHODS)
def test_dpo_two_processes_peak_tensor_bytes_match_the_plan(dpo_peak_runs: dict, method: Method) -> None:
    """2 CPU ranks over gloo, live tensor bytes counted (FTPLAN_TRACK_TENSORS=1) against the planner's peak:
    full DPO holds policy + fp32 reference + Adam + TRL's chunked log-prob head; LoRA DPO the base, adapters
    and the head. Tolerance 10% (the tracker also sees the runtime's own small tensors)."""
    proc, out = dpo_peak_runs[method]
    wait_ok(proc, out.parent / f"{method.value}.log")
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    ratio = summary["measured_peak_tensor_bytes"] / summary["predicted_peak_memory_bytes"]
    assert 0.9 < ratio < 1.1, summary
