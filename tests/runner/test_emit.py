"""`emit`, `load_plan` and the CLI around them: golden files, round trips, bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from ftplan.cli import main
from planner.build import build_config
from planner.errors import PlanError
from planner.strategy import (
    CrossEntropy,
    FsdpStrategy,
    GradCkpt,
    Kernels,
    Method,
    Offload,
    OffloadDevice,
    Optimizer,
    Precision,
    Quant,
)
from runner.emit import emit, load_plan

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FTPLAN_UPDATE_GOLDEN") == "1"
OUT = "<OUT>"  # the emit directory, which appears as an absolute path inside some files
NAME = "<PLAN>"  # str(cfg), whose format the planner owns

FIXED = {
    "llama-2-7b_8xA800_full_z3-offload-all": dict(
        model="7b", gpus="8xA800", method=Method.full, zero=3, offload=Offload.all, micro_batch=1, grad_accum=8,
        grad_ckpt=GradCkpt.full),
    "llama-3-8b_8xH100_full_fsdp2_liger_offload": dict(
        model="llama-3-8b", gpus="8xH100", method=Method.full, fsdp=FsdpStrategy.full_shard, micro_batch=4,
        grad_accum=2, grad_ckpt=GradCkpt.full, kernels=Kernels.liger, cross_entropy=CrossEntropy.fused,
        activation_offload=True),
    "llama-2-13b_2x8xH100_lora_fsdp": dict(
        model="13b", gpus="2x8xH100", method=Method.lora, fsdp=FsdpStrategy.full_shard, micro_batch=2, grad_accum=2),
    "qwen2.5-7b_8xV100-32G_full_z2-offload-fp16": dict(
        model="qwen2.5-7b", gpus="8xV100-32G", method=Method.full, zero=2, offload=Offload.optimizer,
        precision=Precision.fp16_mixed, micro_batch=4, grad_accum=4, grad_ckpt=GradCkpt.selective),
    "llama-3-8b_1xA100-80G_qlora_ddp": dict(
        model="llama-3-8b", gpus="1xA100-80G", method=Method.qlora, quant=Quant.nf4,
        optimizer=Optimizer.paged_adamw_8bit, micro_batch=4, grad_accum=4, grad_ckpt=GradCkpt.full),
    "llama-2-70b_2x8xA800_lora_z3-nvme": dict(
        model="70b", gpus="2x8xA800", method=Method.lora, zero=3, offload=Offload.all,
        offload_device=OffloadDevice.nvme, micro_batch=1, grad_accum=16),
    "llama-2-70b_2x8xA800_lora_z1_tp2_pp2": dict(
        model="70b", gpus="2x8xA800", method=Method.lora, zero=1, tp=2, pp=2, micro_batch=1, grad_accum=16),
}
# plan.json also carries the memory estimate, which the memory model owns; goldens pin the plan itself
PLAN_KEYS = ("format", "world_size", "dp", "global_batch", "config")


def normalized(path: Path, out_dir: Path, cfg) -> str:
    text = path.read_text().replace(str(out_dir.resolve()), OUT).replace(str(cfg), NAME)
    if path.name == "plan.json":
        data = json.loads(text)
        text = json.dumps({k: data[k] for k in PLAN_KEYS}, indent=2) + "\n"
    return text


@pytest.mark.parametrize("name", sorted(FIXED))
def test_golden(tmp_path: Path, name: str):
    cfg = build_config(**FIXED[name])
    paths = emit(cfg, tmp_path / "out")
    golden = GOLDEN / name
    if UPDATE:
        golden.mkdir(parents=True, exist_ok=True)
        for old in golden.iterdir():
            old.unlink()
        for p in paths:
            (golden / p.name).write_text(normalized(p, tmp_path / "out", cfg))
    assert sorted(p.name for p in paths) == sorted(p.name for p in golden.iterdir())
    for p in paths:
        assert normalized(p, tmp_path / "out", cfg) == (golden / p.name).read_text(), f"{name}/{p.name} differs"


@pytest.mark.parametrize("name", sorted(FIXED))
def test_plan_round_trip(tmp_path: Path, name: str):
    cfg = build_config(**FIXED[name])
    paths = emit(cfg, tmp_path)
    assert load_plan(tmp_path / "plan.json") == cfg
    assert (tmp_path / "launch.sh").stat().st_mode & 0o111
    names = {p.name for p in paths}
    assert {"plan.json", "accelerate.yaml", "launch.sh", "llamafactory.yaml"} <= names
    assert ("ds_config.json" in names) == (cfg.engine.value == "deepspeed")


def test_emit_refuses_to_overwrite_and_invalid_plans(tmp_path: Path):
    cfg = build_config(model="7b", gpus="8xA800", zero=2)
    emit(cfg, tmp_path)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(PlanError, match="exists; pass --force"):
        emit(build_config(model="7b", gpus="8xA800", zero=3), tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before
    emit(build_config(model="7b", gpus="8xA800", zero=3), tmp_path, force=True)
    assert json.loads((tmp_path / "ds_config.json").read_text())["zero_optimization"]["stage"] == 3
    bad = build_config(model="7b", gpus="8xA800", check=False, tp=3)
    with pytest.raises(PlanError, match="invalid plan"):
        emit(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_failed_write_leaves_nothing(tmp_path: Path):
    cfg = build_config(model="7b", gpus="8xA800", zero=2)
    real = Path.write_text
    calls = []

    def flaky(self: Path, text: str, *a, **k):
        calls.append(self.name)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, text, *a, **k)

    with mock.patch.object(Path, "write_text", flaky), pytest.raises(PlanError, match="cannot write .*disk full"):
        emit(cfg, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    with mock.patch.object(sys, "argv", ["ftplan", *args]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_done_criterion_plan_emit(tmp_path: Path):
    """`ftplan plan --model 7b --gpus 8xA800 --emit out/` writes all five files and prints how to launch."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ftplan", "plan", "--model", "7b", "--gpus", "8xA800",
                           "--emit", str(out)], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    cfg = load_plan(out / "plan.json")
    deepspeed = {"ds_config.json", "ds_config.trainer.json"} if cfg.engine.value == "deepspeed" else set()
    quantized = {"bnb_config.json"} if cfg.quant.value != "none" else set()
    assert names == {"plan.json", "accelerate.yaml", "launch.sh", "llamafactory.yaml"} | deepspeed | quantized
    assert "Start training" in proc.stdout and f"ftplan run {out}/plan.json" in proc.stdout
    assert str(cfg) == json.loads((out / "plan.json").read_text())["name"]


def test_qlora_plan_emit_lists_its_bitsandbytes_config(tmp_path: Path):
    """A QLoRA plan's --emit writes bnb_config.json and the report names its role (it raised KeyError before)."""
    out = tmp_path / "q"
    proc = subprocess.run([sys.executable, "-m", "ftplan", "plan", "--model", "7b", "--gpus", "8xA800", "--method",
                           "qlora", "--emit", str(out)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert (out / "bnb_config.json").exists() and "BitsAndBytesConfig" in proc.stdout


def test_plan_pick_and_estimate_emit(tmp_path: Path, capsys):
    code, out, err = cli(capsys, "plan", "--model", "7b", "--gpus", "8xA800", "--method", "lora", "--json",
                         "--emit", str(tmp_path / "p2"), "--pick", "2")
    assert code == 0, err
    second = json.loads(out)
    picked = json.loads((tmp_path / "p2" / "plan.json").read_text())["name"]
    assert picked in json.dumps(second)
    code, out, err = cli(capsys, "estimate", "--model", "7b", "--gpus", "8xA800", "--zero", "3", "--micro-batch", "2",
                         "--grad-accum", "4", "--emit", str(tmp_path / "e"))
    assert code == 0, err
    assert "Start training" in out
    ds = json.loads((tmp_path / "e" / "ds_config.json").read_text())
    batch = (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"])
    assert batch == (64, 2, 4)
    # the saved plan emits the same files again
    code, out, err = cli(capsys, "emit", str(tmp_path / "e" / "plan.json"), str(tmp_path / "again"))
    assert code == 0, err
    for name in ("ds_config.json", "ds_config.trainer.json", "launch.sh"):
        assert (tmp_path / "again" / name).read_text() == (tmp_path / "e" / name).read_text()


@pytest.mark.parametrize("args, message", [
    (["--pick", "0"], "--pick 0 is outside"),
    (["--pick", "100000"], "--pick 100000 is outside"),
])
def test_plan_pick_out_of_range(tmp_path: Path, capsys, args, message):
    code, out, err = cli(capsys, "plan", "--model", "7b", "--gpus", "8xA800", "--method", "qlora",
                         "--emit", str(tmp_path / "o"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def write_plan(tmp_path: Path, edit) -> Path:
    cfg = build_config(model="7b", gpus="6xA800", zero=2, micro_batch=1, grad_accum=2)
    emit(cfg, tmp_path / "src")
    data = json.loads((tmp_path / "src" / "plan.json").read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _set(**kv):
    def edit(data):
        for key, value in kv.items():
            if key in data:
                data[key] = value
            else:
                data["config"][key] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set(grad_accum=3), "micro-batch(1) * grad-accum(3) * DP(6) = 18 != global_batch 12"),
    (_set(micro_batch=4), "micro-batch(4) * grad-accum(2) * DP(6) = 48 != global_batch 12"),
    (_set(tp=3, dp=2, global_batch=4), "TP(3) must divide the attention heads (32)"),
    (_set(tp=4), "TP(4) * PP(1) = 4 does not divide 6 GPUs"),
    (_set(dp=3), "TP(1) * PP(1) * DP(3) = 3 != 6 GPUs"),
    (_set(zero=7), "not a valid ftplan configuration"),
    (_set(micro_batch="two"), "'micro_batch' must be an integer, got 'two'"),
    (lambda d: d.pop("config"), "is not an ftplan plan"),
    (lambda d: d.update(format="ftplan-plan/99"), "plan format 'ftplan-plan/99'"),
])
def test_inconsistent_plan_is_refused(tmp_path: Path, capsys, edit, message):
    path = write_plan(tmp_path, edit)
    code, out, err = cli(capsys, "emit", str(path), str(tmp_path / "o"))
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, message", [
    ('{"train_batch_size": 8, "zero_optimization": {"stage": 2}}', "is not an ftplan plan"),
    ("not json at all", "is not an ftplan plan (not JSON"),
    ("[1, 2]", "is not an ftplan plan"),
])
def test_foreign_file_is_refused(tmp_path: Path, capsys, content, message):
    path = tmp_path / "foreign.json"
    path.write_text(content)
    code, out, err = cli(capsys, "emit", str(path), str(tmp_path / "o"))
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_existing_files_need_force(tmp_path: Path, capsys):
    cfg = build_config(model="7b", gpus="8xA800", zero=2)
    emit(cfg, tmp_path / "src")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "launch.sh").write_text("mine\n")
    code, out, err = cli(capsys, "emit", str(tmp_path / "src" / "plan.json"), str(tmp_path / "o"))
    assert code == 2 and "exists; pass --force" in err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["launch.sh"]
    assert (tmp_path / "o" / "launch.sh").read_text() == "mine\n"
    code, out, err = cli(capsys, "emit", str(tmp_path / "src" / "plan.json"), str(tmp_path / "o"), "--force")
    assert code == 0, err
    assert (tmp_path / "o" / "launch.sh").read_text().startswith("#!/usr/bin/env bash")
