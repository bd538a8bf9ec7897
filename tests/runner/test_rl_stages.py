"""`ftplan run --stage grpo` through TRL's GRPOTrainer on this CPU, with transformers' generate: prompt data in its
forms and bad rows named by file and line, rewards from the command line, the plan's rollout settings accepted by
GRPOConfig; a learnable rule reward (the share of one word in the completion) rises over 30 steps on 1 and on 2
processes; a killed run resumes onto the same curve; live tensor bytes of 2-process runs (LoRA, and full
fine-tuning with its reference model) against the plan."""

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
from planner.strategy import Method, Precision, Stage
from runner.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics
from runner.train import write_plan

REPO = Path(__file__).resolve().parents[2]
N_WORDS = 24
PROMPT_WORDS = 6  # "Q:" + 6 words + "A:": every prompt fills the plan's 8 prompt tokens


def _tokenizer_and_model(root: Path, *, vocab: int = 0, hidden: int = 64, inter: int = 128, layers: int = 2) -> Path:
    # initializer_range 0.2: logits spread enough that a policy can concentrate on one word (at 0.02 the frozen
    # LM head caps any word near 12% whatever the adapters learn)
    return save_tiny_llama(root, N_WORDS, vocab=vocab, hidden_size=hidden, intermediate_size=inter,
                           num_hidden_layers=layers, initializer_range=0.2)


def _prompts(path: Path, n: int, words: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"prompt": "Q: " + " ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(words))
                                                  + " A:"}) + "\n" for _ in range(n)))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-grpo")
    _tokenizer_and_model(root / "model")
    _prompts(root / "prompts.jsonl", 64, PROMPT_WORDS)
    return root


def _plan(root: Path, name: str, gpus: str = "1xCPU", **kw) -> Path:
    kw = {"micro_batch": 8, "seq_len": 16, "completion_len": 8, "num_generations": 4, "precision": Precision.fp32,
          "method": Method.lora, "stage": Stage.grpo, **kw}
    path = root / f"plan-{name}.json"
    write_plan(build_config(model=str(root / "model"), gpus=gpus, **kw), path)
    return path


def _ftplan(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftplan", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_prompt_forms_and_bad_rows(tmp_path: Path) -> None:
    from runner.data import ALPACA_PROMPT_NO_INPUT
    from runner.stages.prompt_data import load_prompts, to_dataset

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "2+2=", "answer": "4"}) + "\n" + json.dumps({"prompt": "3+3=", "answer": "6"})
                    + "\n")
    prompts = load_prompts(good)
    assert [(p.text, p.extra) for p in prompts] == [("2+2=", {"answer": "4"}), ("3+3=", {"answer": "6"})]
    assert to_dataset(prompts).column_names == ["prompt", "answer"]  # columns reach the reward functions
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "say hi", "output": "hi"}]))
    assert load_prompts(alpaca)[0].text == ALPACA_PROMPT_NO_INPUT.format(instruction="say hi")
    import pandas as pd

    parquet = tmp_path / "p.parquet"
    pd.DataFrame({"question": ["why?", "how?"]}).to_parquet(parquet)
    assert len(load_prompts(parquet)) == 2
    for rows, where in (([{"prompt": "p"}, {"text": "t"}], ":2: cannot tell the prompt"),
                        ([{"prompt": "  "}], ":1: the prompt is empty"),
                        ([{"prompt": ["a"]}], ":1: column 'prompt' must be text"),
                        ([{"prompt": "a", "answer": 1}, {"prompt": "b"}], ":2: columns differ")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(PlanError, match=f"^{bad}{where}"):
            load_prompts(bad)


def test_rewards_from_the_command_line(tmp_path: Path) -> None:
    from runner.stages.rewards import parse_reward, parse_rewards

    assert parse_reward("keyword:w1")(["w1 w2 w1 w3", ""]) == [0.5, 0.0]
    assert parse_reward("length:4")(["a b c d", "a b"]) == [1.0, 0.5]
    assert parse_reward("regex:^<think>")(["<think> x", "x"]) == [1.0, 0.0]
    assert parse_reward("match")(["the answer is 4", "5"], answer=["4", "4"]) == [1.0, 0.0]
    assert parse_reward("os.path:basename") is os.path.basename  # a module:function
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    assert parse_reward(str(tmp_path / "rm")) == str(tmp_path / "rm")  # TRL loads it as a reward model
    for spec, message in (("", "empty"), ("length:x", "positive word count"), ("regex:(", "not a regular"),
                          ("nosuchmodule_h25:f", "cannot import"), ("os.path:nope", "no function nope"),
                          ("what", "not a rule")):
        with pytest.raises(PlanError, match=message):
            parse_reward(spec)
    with pytest.raises(PlanError, match="at least one --reward"):
        parse_rewards(())


def test_plan_rollout_becomes_grpo_config() -> None:
    from trl import GRPOConfig, RLOOConfig

    from planner.rl.settings import Generation
    from runner.stages.grpo import rollout_fields

    cfg = build_config(model="llama-3.1-8b", gpus="8xH100", stage=Stage.grpo, micro_batch=4, grad_accum=2,
                       seq_len=1024, generation=Generation.vllm_colocate, vllm_memory=0.35, vllm_sleep=True,
                       generation_steps=2, kl_beta=0.04)
    fields = rollout_fields(cfg)
    assert fields == {"num_generations": 8, "max_completion_length": 512, "beta": 0.04, "steps_per_generation": 4,
                      "num_iterations": 1, "use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 1024,
                      "vllm_gpu_memory_utilization": 0.35, "vllm_enable_sleep_mode": True,
                      "vllm_tensor_parallel_size": 1}
    # TRL's own checks (generation batch in whole groups, steps_per_generation) accept the plan's numbers
    args = GRPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                      use_cpu=True, **fields)
    assert args.generation_batch_size == 4 * 1 * 4
    rloo = build_config(model="llama-3.1-8b", gpus="8xH100", stage=Stage.rloo, seq_len=1024)
    RLOOConfig(output_dir="/tmp/unused", use_cpu=True, **rollout_fields(rloo))


def test_cli_bad_prompt_row_and_missing_reward_exit_2_in_one_line(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q: w1 A:"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    out = tmp_path / "out"
    plan = str(_plan(tiny, "cli"))
    common = ["--model-path", str(tiny / "model"), "--output", str(out)]
    res = _ftplan("run", plan, "--data", str(bad), "--reward", "keyword:w1", *common)
    assert res.returncode == 2 and res.stderr.strip().startswith(f"ftplan: error: {bad}:2: cannot tell the prompt"), \
        res.stderr
    res = _ftplan("run", plan, "--data", str(tiny / "prompts.jsonl"), *common)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--reward" in res.stderr, res.stderr
    assert not out.exists()


@pytest.mark.slow
def test_grpo_reward_rises_over_30_steps_and_a_killed_run_resumes_onto_it(tiny: Path, tmp_path: Path) -> None:
    plan = _plan(tiny, "resume")
    steps = 30
    args = ["--model-path", str(tiny / "model"), "--data", str(tiny / "prompts.jsonl"), "--max-steps", str(steps),
            "--learning-rate", "1e-2", "--save-steps", "10", "--reward", "keyword:w1"]
    ref = tmp_path / "ref"
    # the uninterrupted reference runs beside the run that is killed at checkpoint-20 (one process each, so the
    # two share this machine's cores instead of queueing: the killed run's steps cost little, the resumed ones
    # after it are the ones waited for)
    ref_proc = ftplan_bg("run", str(plan), *args, "--output", str(ref), log=tmp_path / "ref.log")
    out = tmp_path / "out"
    kill_run_at_checkpoint([str(plan), *args, "--output", str(out)], out / "checkpoint-20")
    assert not (out / SUMMARY_FILE).exists()
    wait_ok(ref_proc, tmp_path / "ref.log")
    rows = read_metrics(ref / METRICS_FILE)
    rewards = [r["reward_mean"] for r in rows]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    # the share of w1 among the completion's words: ~1/30 at random, most of the completion by the end
    assert _mean(rewards[:5]) < 0.2 and _mean(rewards[-5:]) > 0.6, rewards
    summary = json.loads((ref / SUMMARY_FILE).read_text())
    assert summary["stage"] == "grpo" and summary["final_reward_mean"] > summary["first_reward_mean"]

    res = _ftplan("run", str(plan), *args, "--output", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = read_metrics(out / METRICS_FILE)
    assert json.loads((out / SUMMARY_FILE).read_text())["resumed_from_step"] in (20, 30)
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    # same prompts, sampling RNG, adapter and optimizer state: the same completions and rewards after the restart
    for got, want in zip(resumed, rows, strict=True):
        assert math.isclose(got["reward_mean"], want["reward_mean"], abs_tol=1e-6), (resumed, rows)
        assert math.isclose(got["loss"], want["loss"], rel_tol=1e-3, abs_tol=1e-6), (resumed, rows)


@pytest.mark.slow
def test_grpo_two_processes_reward_rises(tiny: Path, tmp_path: Path) -> None:
    plan = _plan(tiny, "ddp", gpus="2xCPU")
    out = tmp_path / "out"
    res = _ftplan("run", str(plan), "--model-path", str(tiny / "model"), "--data", str(tiny / "prompts.jsonl"),
                  "--output", str(out), "--max-steps", "30", "--learning-rate", "1e-2", "--reward", "keyword:w1")
    assert res.returncode == 0, res.stderr[-3000:]
    rewards = [r["reward_mean"] for r in read_metrics(out / METRICS_FILE)]
    assert len(rewards) == 30 and _mean(rewards[:5]) < 0.2 and _mean(rewards[-5:]) > 0.6, rewards
    assert json.loads((out / SUMMARY_FILE).read_text())["world_size"] == 2


PEAK_CASES = [(Method.lora, 0.04), (Method.full, 0.04)]


@pytest.fixture(scope="module")
def grpo_peak_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple, tuple[subprocess.Popen, Path]]]:
    """The tracked 2-rank runs of every case of the test below, started together (each waits for its own): they
    spend most of their time importing, one process at a time per rank, so side by side they share the cores."""
    runs = {}
    for method, beta in PEAK_CASES:
        root = tmp_path_factory.mktemp(f"grpo-peak-{method.value}")
        model = _tokenizer_and_model(root / "model", vocab=8192, hidden=256, inter=688, layers=4)
        data = _prompts(root / "prompts.jsonl", 32, 14)  # 16 prompt tokens
        plan = root / "plan.json"
        write_plan(build_config(model=str(model), gpus="2xCPU", method=method, stage=Stage.grpo, micro_batch=8,
                                seq_len=48, completion_len=32, num_generations=4, kl_beta=beta,
                                precision=Precision.fp32), plan)
        out = root / "out"
        runs[method, beta] = (ftplan_bg("run", str(plan), "--model-path", str(model), "--data", str(data),
                                         "--output", str(out), "--max-steps", "2", "--reward", "keyword:w1",
                                         log=root / "run.log", env={**os.environ, "FTPLAN_TRACK_TENSORS": "1"}),
                              out)
    yield runs
    kill_left_behind(proc for proc, _ in runs.values())


@pytest.mark.slow
@pytest.mark.parametrize(("method", "beta"), PEAK_CASES)
def test_grpo_two_processes_peak_tensor_bytes_match_the_plan(grpo_peak_runs: dict, method: Method,
                                                             beta: float) -> None:
    """2 CPU ranks over gloo, live tensor bytes from the loaded models on (FTPLAN_TRACK_TENSORS=1) against the plan:
    the policy, Adam, TRL's fused log-prob head over every position (no Triton here), the reference model (full
    fine-tuning: TRL's copy; LoRA: none), the buffered generations, transformers' KV cache. Prompts fill the plan's
    prompt length and a vocabulary of 8192 gives the head its real weight. Tolerance 10%."""
    proc, out = grpo_peak_runs[method, beta]
    wait_ok(proc, out.parent / "run.log")
    summary = json.loads((out / SUMMARY_FILE).read_text())
    ratio = summary["measured_peak_tensor_bytes"] / summary["predicted_peak_memory_bytes"]
    assert 0.9 < ratio < 1.1, summary
