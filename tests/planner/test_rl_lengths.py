"""Completions that stop at EOS (`--completion-len-mean`, planner/rl/lengths.py): the length distribution's terms,
what follows the longest (decoding's weight reads, TRL's padded training) and what follows the mean (vLLM's KV reads
and FLOPs, verl's unpadded passes, tokens/s), memory kept at the longest, and the option through the CLI, plan.json
and validation."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from cli_helpers import run

from planner.build import build_config
from planner.errors import PlanError
from planner.memory import memory_per_gpu
from planner.rl import generation as gen
from planner.rl import lengths
from planner.rl import timing as rl_timing
from planner.rl.settings import Generation
from planner.serialize import config_from_dict, config_to_dict
from planner.strategy import FsdpStrategy, GradCkpt, Method, Offload, Stage
from planner.timing import step_time


def grpo(**kw):
    base = {"model": "llama-3.1-8b", "gpus": "8xH100", "stage": Stage.grpo, "method": Method.full, "zero": 1,
            "micro_batch": 4, "grad_accum": 4, "seq_len": 4096, "completion_len": 3968, "num_generations": 8,
            "grad_ckpt": GradCkpt.full, "generation": Generation.vllm_colocate, "vllm_memory": 0.6,
            "vllm_sleep": True}
    return build_config(**{**base, **kw})


# --- the distribution -------------------------------------------------------------------------------

@pytest.mark.parametrize(("mean", "cap"), [(1, 100), (37, 100), (1019, 3968), (4000, 4096)])
def test_geometric_lengths_have_the_asked_mean(mean: int, cap: int) -> None:
    q = lengths.continue_probability(mean, cap)
    assert sum(q**k for k in range(cap)) == pytest.approx(mean, rel=1e-9)  # E[L] = sum_{k<M} P(L > k)
    assert lengths.expected_longest(mean, cap, 1) == pytest.approx(mean, rel=1e-9)  # the longest of one


def test_the_longest_of_many_nears_the_cap_and_the_square_exceeds_the_mean_squared() -> None:
    one, many, most = (lengths.expected_longest(1019, 3968, n) for n in (8, 128, 2048))
    assert 1019 < one < many < most <= 3968
    # a cap of ~3.9 means: P(one completion is cut) = q^3967 ~ 2%; among 2048 some surely are
    assert most == pytest.approx(3968, rel=0.001)
    assert lengths.mean_square(1019, 3968) > 1019**2  # a spread: E[L^2] > E[L]^2
    # at the cap every completion has the cap's length
    assert lengths.expected_longest(512, 512, 64) == 512.0 and lengths.mean_square(512, 512) == 512.0**2
    assert lengths.peak_tokens_per_sequence(512, 512, 100) == 612.0
    # a wave started together holds far less than prompt + cap per sequence at its peak
    assert lengths.peak_tokens_per_sequence(1019, 3968, 128) < 0.5 * (128 + 1019)


# --- what follows which length ----------------------------------------------------------------------

@pytest.mark.parametrize("generation", list(Generation))
def test_mean_at_the_cap_reproduces_the_uniform_plan_exactly(generation: Generation) -> None:
    kw = {"generation": generation, "vllm_server_gpus": 2 if generation is Generation.vllm_server else 0}
    if generation is Generation.transformers:
        kw.update(seq_len=1024, completion_len=512, vllm_sleep=False)
    uniform = grpo(**kw)
    at_cap = grpo(**kw, completion_len_mean=uniform.completion_len)
    assert step_time(at_cap) == step_time(uniform)
    assert memory_per_gpu(at_cap) == memory_per_gpu(uniform)


def test_generation_follows_the_longest_at_a_fixed_mean() -> None:
    """Each decoding step reads every weight until a wave's longest completion stops: at the same mean, a higher
    cap (a longer tail) costs generation time, and it costs less than every completion at the cap."""
    times = [step_time(grpo(seq_len=128 + cap, completion_len=cap, completion_len_mean=1000)).breakdown_s["generation"]
             for cap in (1000, 2000, 4000, 8000)]
    assert times == sorted(times) and times[0] < times[-1]
    at_cap = step_time(grpo(seq_len=128 + 8000, completion_len=8000)).breakdown_s["generation"]
    assert times[-1] < at_cap
    # the weight reads alone: ~the longest of 128 x 8 engines' sequences steps x 16 GB at 3.35 TB/s
    cfg = grpo(seq_len=128 + 8000, completion_len=8000, completion_len_mean=1000)
    steps = lengths.expected_longest(1000, 8000, gen.concurrency(cfg) * gen.engines(cfg))
    assert times[-1] > steps * 16.06e9 / 3.35e12


def test_vllm_kv_reads_follow_the_mean_and_waves_refill() -> None:
    """Continuous batching frees finished requests: more sequences run at once than at full length, and at the
    same cap a shorter mean decodes faster."""
    uniform = grpo(grad_accum=32)  # 128 completions per engine
    short = grpo(grad_accum=32, completion_len_mean=1019)
    assert gen.concurrency(uniform) < 128 == gen.concurrency(short)
    assert gen.wave_tokens_per_sequence(uniform) == 4096
    g_short = step_time(short).breakdown_s["generation"]
    g_long = step_time(grpo(grad_accum=32, completion_len_mean=2500)).breakdown_s["generation"]
    assert g_short < g_long < step_time(uniform).breakdown_s["generation"]


def test_transformers_generate_decodes_the_whole_batch_to_its_longest() -> None:
    cfg = grpo(generation=Generation.transformers, vllm_sleep=False, seq_len=1024, completion_len=512,
               completion_len_mean=100, micro_batch=2, grad_accum=2)
    steps = lengths.expected_longest(100, 512, gen.engine_batch(cfg) * cfg.world_size)
    assert 300 < steps < 512  # the longest of 8 ranks x 4 completions of 100 tokens on average
    uniform = replace(cfg, rollout=replace(cfg.rollout, completion_len_mean=None))
    ratio = step_time(cfg).breakdown_s["generation"] / step_time(uniform).breakdown_s["generation"]
    assert ratio == pytest.approx(steps / 512, rel=0.1)  # steps x (the whole batch per step), not the mean


def test_trl_training_runs_at_the_padded_length_verl_at_the_mean() -> None:
    """TRL pads each rank's generation batch to its longest completion and the ranks wait for each other: with
    16 x 8 ranks' completions the training and scoring passes run at about the cap. verl removes padding: its
    passes follow the mean."""
    cfg = grpo(completion_len_mean=1019)
    assert rl_timing.trained_length(cfg) == 128 + math.ceil(
        lengths.expected_longest(1019, 3968, gen.rank_generation_batch(cfg) * 8))
    assert rl_timing.trained_length(cfg) > 4000
    uniform = step_time(grpo())
    padded = step_time(cfg)
    assert padded.breakdown_s["compute"] == pytest.approx(uniform.breakdown_s["compute"], rel=0.02)
    # tokens/s counts the run's tokens (prompt + mean), not the padding
    assert padded.tokens_per_s == pytest.approx(cfg.global_batch * (128 + 1019) / padded.step_time_s)
    assert padded.mfu < uniform.mfu
    # one rank, one micro-batch of 2 completions: the longest of 2 is far below the cap, and training follows it
    small = grpo(gpus="1xH100", micro_batch=2, grad_accum=1, num_generations=2, completion_len_mean=500)
    assert rl_timing.trained_length(small) < 128 + 1500
    ppo = dict(stage=Stage.ppo, fsdp=FsdpStrategy.full_shard, zero=None, offload=Offload.none, num_generations=1)
    verl = grpo(**ppo, completion_len_mean=1019)
    assert rl_timing.trained_length(verl) == 128 + 1019
    assert step_time(verl).breakdown_s["compute"] < 0.5 * step_time(grpo(**ppo)).breakdown_s["compute"]


def test_memory_plans_the_longest() -> None:
    assert memory_per_gpu(grpo(completion_len_mean=300)) == memory_per_gpu(grpo())
    tf = dict(generation=Generation.transformers, vllm_sleep=False, seq_len=1024, completion_len=512)
    assert memory_per_gpu(grpo(**tf, completion_len_mean=50)) == memory_per_gpu(grpo(**tf))


# --- the option -------------------------------------------------------------------------------------

def test_mean_outside_one_to_the_cap_is_refused() -> None:
    with pytest.raises(PlanError, match="--completion-len-mean must be between 1 and --completion-len 3968"):
        grpo(completion_len_mean=3969)
    with pytest.raises(PlanError, match="--completion-len-mean must lie in 1.."):
        grpo(completion_len_mean=0)


def test_plan_json_round_trip() -> None:
    cfg = grpo(completion_len_mean=1019)
    data = config_to_dict(cfg)
    assert data["completion_len_mean"] == 1019
    assert config_from_dict(json.loads(json.dumps(data))) == cfg
    plain = config_to_dict(grpo())
    assert "completion_len_mean" not in plain  # plans without it read and write as before
    assert config_from_dict({**plain, "completion_len_mean": None}) == grpo()
    with pytest.raises(PlanError, match="'completion_len_mean'"):
        config_from_dict({**plain, "completion_len_mean": "long"})


ESTIMATE = ("estimate", "--model", "llama-3.1-8b", "--gpus", "8xH100", "--stage", "grpo", "--method", "full",
            "--zero", "1", "--micro-batch", "4", "--grad-accum", "4", "--seq-len", "4096", "--completion-len", "3968",
            "--grad-ckpt", "full", "--generation", "vllm-colocate", "--vllm-memory", "0.6", "--vllm-sleep",
            "--device-fit", "none")


def test_cli_estimate_takes_the_mean(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, *ESTIMATE, "--completion-len-mean", "1019", "--json")
    assert code == 0, err
    short = json.loads(out)
    code, out, err = run(capsys, monkeypatch, *ESTIMATE, "--json")
    assert code == 0, err
    full = json.loads(out)
    assert short["config"]["completion_len_mean"] == 1019 and "completion_len_mean" not in full["config"]
    assert short["time_breakdown_s"]["generation"] < full["time_breakdown_s"]["generation"]
    assert short["memory_per_gpu_bytes"] == full["memory_per_gpu_bytes"]


def test_cli_refuses_a_mean_above_the_cap_in_one_line(capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, *ESTIMATE, "--completion-len-mean", "5000")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--completion-len-mean must be between 1 and --completion-len 3968" in err


def test_cli_plan_takes_the_mean(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "plan", "--model", "llama-3.1-8b", "--gpus", "8xH100", "--stage", "grpo",
                         "--method", "lora", "--generation", "vllm-colocate", "--generation-steps", "1",
                         "--seq-len", "2048", "--completion-len", "1536", "--completion-len-mean", "400",
                         "--device-fit", "none", "--json")
    assert code == 0, err
    plans = json.loads(out)["plans"]
    assert plans and all(p["config"]["completion_len_mean"] == 400 for p in plans)
