"""Tensor and pipeline parallelism through `ftplan run` on 2 CPU processes over gloo (tiny Llama of test_train):
TP=2 through DeepSpeed AutoTP in the Trainer against TP=1 of the same seed; PP=2 through DeepSpeed's pipeline
engine; per-rank parameter bytes from run_summary.json and resume from a checkpoint for both; and a 2-node
launch.sh started twice on this machine (torchrun), plus the deepspeed launcher's hostfile and command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import REPO, TEMPLATE, _ftplan, _losses, _plan, _run_args, tiny  # noqa: F401  (tiny: fixture)

from planner.strategy import Method, Precision
from runner.metrics import SUMMARY_FILE
from runner.parallel.pipeline import saved_param_groups

LR = ("--learning-rate", "1e-3")  # full fine-tuning of the random tiny model; the adapter tests use 1e-2
# TP splits each GEMM and sums partial products in another order (row-parallel all-reduce): fp32 agreement
# to a relative 1e-4 over the first steps is the check (measured: equal to 6 decimals here)
TP_LOSS_RTOL = 1e-4


def _summary(out: Path) -> dict:
    return json.loads((out / SUMMARY_FILE).read_text())


def _train(plan: Path, tiny: Path, out: Path, steps: int, *extra: str) -> None:  # noqa: F811 (the fixture)
    res = _ftplan("run", str(plan), *_run_args(tiny, out, steps, *LR, *extra), timeout=480)
    assert res.returncode == 0, res.stderr[-3000:]


class _Background:
    """`ftplan run` started in the background, its stderr into a file (a pipe left unread could fill)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "ftplan", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                         stderr=err, text=True)

    def wait_ok(self) -> None:
        assert self.proc.wait(timeout=480) == 0, self.log.read_text()[-3000:]


def _train_bg(plan: Path, tiny: Path, out: Path, steps: int, *extra: str) -> _Background:  # noqa: F811
    return _Background(["run", str(plan), *_run_args(tiny, out, steps, *LR, *extra)], out.with_suffix(".log"))


@pytest.mark.slow
def test_tp2_matches_tp1_and_halves_every_sharded_weight(tiny: Path, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    from transformers import AutoModelForCausalLM

    common = {"method": Method.full, "zero": 1}
    # the one-process reference runs beside the TP=2 run: a process spends most of its run importing on one core
    tp1 = _train_bg(_plan(tiny, "tp1", "1xCPU", **common), tiny, tmp_path / "tp1", 4, "--save-steps", "100")
    tp2 = _plan(tiny, "tp2", "2xCPU", tp=2, **common)
    _train(tp2, tiny, tmp_path / "tp2", 4, "--save-steps", "2")
    tp1.wait_ok()
    one, two = _losses(tmp_path / "tp1"), _losses(tmp_path / "tp2")
    print("TP1 losses", one, "TP2 losses", two)
    assert len(one) == len(two) == 4 and two == pytest.approx(one, rel=TP_LOSS_RTOL)
    assert two[-1] < two[0]
    s1, s2 = _summary(tmp_path / "tp1"), _summary(tmp_path / "tp2")
    print("TP2 per-rank parameter bytes", s2["rank_parameter_bytes"], "of", s2["parameter_bytes"])
    assert s1["rank_parameter_bytes"] == [s1["parameter_bytes"]] and s1["sharded_parameter_count"] == 0
    layers = AutoModelForCausalLM.from_pretrained(str(tiny / "model")).config.num_hidden_layers
    # q, k, v, o, gate, up, down of every decoder layer are split (AutoTP), at least
    assert s2["sharded_parameter_count"] >= 7 * layers
    full, replicated = s2["sharded_parameter_full_bytes"], s2["parameter_bytes"] - s2["sharded_parameter_full_bytes"]
    assert s2["rank_sharded_parameter_bytes"] == [full // 2, full // 2]
    assert s2["rank_parameter_bytes"] == [replicated + full // 2] * 2
    # the saved model is gathered from both ranks: full shapes, loadable
    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "tp2"))
    assert sum(p.numel() * p.element_size() for p in saved.parameters()) == s2["parameter_bytes"]
    # cut off after checkpoint-2: --resume loads the AutoTP shards and steps 3..4 repeat the uninterrupted run
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "tp2", cut)
    shutil.rmtree(cut / "checkpoint-4")
    _train(tp2, tiny, cut, 4, "--save-steps", "2", "--resume")
    assert _summary(cut)["resumed_from_step"] == 2 and _losses(cut) == pytest.approx(two, rel=1e-5)


def _stage_bytes(model_dir: Path) -> list[int]:
    """Embedding + the first half of the decoder layers; the second half + norm + head (2 stages)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    half = model.config.num_hidden_layers // 2
    first = 0
    for name, p in model.named_parameters():
        if name.startswith("model.embed_tokens") or any(name.startswith(f"model.layers.{i}.") for i in range(half)):
            first += p.numel() * p.element_size()
    return [first, sum(p.numel() * p.element_size() for p in model.parameters()) - first]


@pytest.mark.slow
def test_pp2_trains_holds_its_stage_and_resumes(tiny: Path, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    from transformers import AutoModelForCausalLM

    plan = _plan(tiny, "pp2", "2xCPU", method=Method.full, zero=1, pp=2, micro_batch=2, grad_accum=2)
    ref = tmp_path / "ref"
    _train(plan, tiny, ref, 6, "--save-steps", "3")
    losses = _losses(ref)
    print("PP2 losses", losses)
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2
    summary = _summary(ref)
    print("PP2 per-rank parameter bytes", summary["rank_parameter_bytes"], "of", summary["parameter_bytes"])
    assert summary["rank_stage"] == [0, 1]
    assert summary["rank_parameter_bytes"] == _stage_bytes(tiny / "model")
    assert sum(summary["rank_parameter_bytes"]) == summary["parameter_bytes"]
    saved = AutoModelForCausalLM.from_pretrained(str(ref))  # one safetensors file per stage + the index
    assert sum(p.numel() * p.element_size() for p in saved.parameters()) == summary["parameter_bytes"]
    # a run cut off after checkpoint-3: resume it and steps 4..6 repeat the uninterrupted run
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)
    shutil.rmtree(cut / "checkpoint-6")
    _train(plan, tiny, cut, 6, "--save-steps", "3", "--resume")
    assert _summary(cut)["resumed_from_step"] == 3
    assert _losses(cut) == pytest.approx(losses, rel=1e-5)
    assert saved_param_groups(cut / "checkpoint-3") == [2, 2]  # ZeRO-1's partition file of each stage


@pytest.mark.slow
@pytest.mark.parametrize("zero", [0, 1])
def test_pp2_refuses_a_one_group_checkpoint_in_one_line(tiny: Path, tmp_path: Path, zero: int) -> None:  # noqa: F811
    """A checkpoint ftplan wrote before the pipeline took the Trainer's two parameter groups (one_group_pipeline.py
    trains with that optimizer): ZeRO-0 keeps the optimizer in the engine's file, ZeRO-1 in its partition files.
    `ftplan run --resume` refuses it in one line, exit 2, before any process starts (DeepSpeed itself fails on the
    group count, or for ZeRO-1 on its flat layout, with a traceback from each rank)."""
    from profiler.launcher import rank_env, torchrun_command
    from runner.train import load_plan

    plan = _plan(tiny, f"pp2-z{zero}", "2xCPU", method=Method.full, zero=zero, pp=2, micro_batch=2, grad_accum=2)
    out = tmp_path / "old"
    cmd = torchrun_command(nproc_per_node=2, master_port=_free_port()) + [
        str(Path(__file__).parent / "one_group_pipeline.py"), str(plan), *_run_args(tiny, out, 2, *LR, "--save-steps",
                                                                                    "2")]
    res = subprocess.run(cmd, cwd=REPO, env={**rank_env(load_plan(plan)), "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=480)
    assert res.returncode == 0, res.stderr[-3000:]
    assert saved_param_groups(out / "checkpoint-2") == [1, 1]
    res = _ftplan("run", str(plan), *_run_args(tiny, out, 4, *LR, "--save-steps", "2", "--resume"))
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.startswith("ftplan: error: --resume:") and res.stderr.count("\n") == 1, res.stderr
    assert "one parameter group" in res.stderr and "another --output" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_launch_sh_on_one_machine(tiny: Path, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    from planner.build import build_config
    from runner.emit import emit

    plan_dir = tmp_path / "plan"
    emit(build_config(model=str(tiny / "model"), gpus="2x1xCPU", zero=2, micro_batch=4, seq_len=32,
                      precision=Precision.fp32), plan_dir)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODEL_PATH": str(tiny / "model"), "DATA": str(tiny / "data.jsonl"),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    run_opts = ["--output", str(out), "--max-steps", "3", "--save-steps", "100", "--template", TEMPLATE]
    nodes = [subprocess.Popen(["bash", str(plan_dir / "launch.sh"), "torchrun", *run_opts], cwd=tmp_path,
                              env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rank in (0, 1)]
    results = [node.communicate(timeout=480) for node in nodes]
    for node, (_, err) in zip(nodes, results, strict=True):
        assert node.returncode == 0, err[-3000:]
    summary = _summary(out)
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    assert (out / "adapter_model.safetensors").exists()
    assert not (tmp_path / "ftplan-run").exists()  # one output, where --output points
    # the deepspeed launcher's branch: a hostfile of the nodes and one command from node 0 (stand-in launcher)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "deepspeed").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (fake / "deepspeed").chmod(0o755)
    res = subprocess.run(["bash", str(plan_dir / "launch.sh"), "deepspeed", "--max-steps", "3"],
                         env={**env, "PATH": f"{fake}:{env['PATH']}", "HOSTS": "node-a node-b"},
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (plan_dir / "hostfile").read_text() == "node-a slots=1\nnode-b slots=1\n"
    args = res.stdout.splitlines()
    assert args[:2] == ["--hostfile", str(plan_dir.resolve() / "hostfile")]
    assert args[args.index("--module") + 1] == "runner.train" and args[-2:] == ["--max-steps", "3"]
