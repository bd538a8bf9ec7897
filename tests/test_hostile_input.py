"""Issue 26's cases on the command line, each a regression test: injected commands, hangs, tracebacks and silent
wrong answers become one line on stderr and exit code 2 (or a safe file), and nothing half-written stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import run

from planner.errors import PlanError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1376,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 2048}


def one_line_error(capsys, monkeypatch, *args: str) -> str:
    code, out, err = run(capsys, monkeypatch, *args)
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("ftplan: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def ftplan(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in its own process, as a user runs it (a hang fails the test at `timeout`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "ftplan", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout, check=False)


# ---------------------------------------------------------------- silent wrong answers

@pytest.mark.parametrize("option", ["--host-memory", "--nvme"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_nan_capacities_do_not_switch_checks_off(capsys, monkeypatch, option: str, value: str) -> None:
    err = one_line_error(capsys, monkeypatch, "estimate", "--model", "70b", "--gpus", "8xA800", "--method", "full",
                         "--zero", "3", "--offload", "all", option, value)
    assert option in err


def test_library_limits_refuse_nan_too() -> None:
    from planner.build import limits_from
    from planner.options import LimitArgs

    for kwargs in ({"host_memory": float("nan"), "nvme": 1.0}, {"host_memory": None, "nvme": float("nan")},
                   {"host_memory": float("inf"), "nvme": 1.0}, {"headroom": float("nan")}):
        with pytest.raises(PlanError):
            limits_from(LimitArgs(**kwargs))


@pytest.mark.parametrize(("args", "needle"), [
    (("--tokens", "inf"), "--tokens: expected a finite number"),
    (("--tokens", "1e300"), "--tokens: 1e+300 is out of range"),
    (("--epochs", "nan"), "--epochs: expected a finite number"),
    (("--seq-len", "9" * 30), "--seq-len"),
    (("--seq-len", "9" * 5000), "--seq-len"),
    (("--micro-batch", "2000000"), "--micro-batch must lie in 1..1,048,576"),
    (("--gpus", "9" * 5000 + "xA800"), "GPU and node counts"),
    (("--gpus", "999999x8xA800"), "exceed the 1,048,576 a plan may span"),
    (("--rope-scaling", "linear:1e300"), "the factor must be at most 1024"),
    (("--bnb-version", "0." + "9" * 5000), "--bnb-version must look like"),
    (("--transformers-version", "4." + "9" * 5000), "--transformers-version must look like"),
    (("--lora-targets", "q_proj,$(touch /tmp/x)"), "has characters other than"),
    (("--model", "9" * 5000), "unknown model '999"),  # too long to be a path (ENAMETOOLONG): found by the fuzz
])
def test_numbers_and_names_out_of_range_are_one_line(capsys, monkeypatch, args: tuple[str, ...], needle: str) -> None:
    base = {"--model": "7b", "--gpus": "8xA800"}
    extra = list(args)
    for key in list(base):
        if key in extra:
            del base[key]
    err = one_line_error(capsys, monkeypatch, "estimate", *[x for kv in base.items() for x in kv], *extra)
    assert needle in err


def test_hidden_size_below_head_count_is_refused(capsys, monkeypatch, tmp_path: Path) -> None:
    folder = tmp_path / "narrow"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY, "hidden_size": 4, "num_attention_heads": 8,
                                                    "num_key_value_heads": 8}))
    err = one_line_error(capsys, monkeypatch, "plan", "--model", str(folder), "--gpus", "1xA800")
    assert "head_dim is 0: hidden_size 4 is smaller than its 8 attention heads" in err


# ---------------------------------------------------------------- config.json

@pytest.mark.parametrize(("text", "needle"), [
    ('{"model_type": "llama", "hidden_size": Infinity}', "Infinity is not a JSON number"),
    ('{"model_type": "llama", "hidden_size": NaN}', "NaN is not a JSON number"),
    ('{"model_type": "llama", "hidden_size": 1e999}', "is not a finite number (it overflows a float)"),
    ('{"model_type": "llama", "hidden_size": ' + "9" * 5000 + "}", "Exceeds the limit"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (json.dumps({**TINY, "num_hidden_layers": 10**9}), "must lie in 1..4,096"),
    (json.dumps({**TINY, "vocab_size": -5}), "must be a positive integer"),
    (json.dumps({**TINY, "hidden_size": 2**60}), "must lie in 1..1,048,576"),
])
def test_hostile_config_json_is_one_line(capsys, monkeypatch, tmp_path: Path, text: str, needle: str) -> None:
    file = tmp_path / "config.json"
    file.write_text(text)
    err = one_line_error(capsys, monkeypatch, "estimate", "--model", str(file), "--gpus", "1xA800")
    assert needle in err


@pytest.mark.parametrize("option", ["--model", "--calibration"])
def test_a_fifo_does_not_hang(tmp_path: Path, option: str) -> None:
    fifo = tmp_path / ("config.json" if option == "--model" else "cal.json")
    os.mkfifo(fifo)
    options = {"--model": "7b", "--gpus": "8xA800", option: str(fifo)}
    done = ftplan("estimate", *[x for kv in options.items() for x in kv], timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "FIFO" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_device_is_not_read(capsys, monkeypatch) -> None:
    err = one_line_error(capsys, monkeypatch, "estimate", "--model", "/dev/zero", "--gpus", "8xA800")
    assert "a device, not a regular file" in err


def test_an_oversized_file_is_not_read(capsys, monkeypatch, tmp_path: Path) -> None:
    big = tmp_path / "config.json"
    with big.open("wb") as fh:
        fh.truncate(17 * 2**20)  # sparse: no disk space used
    err = one_line_error(capsys, monkeypatch, "estimate", "--model", str(big), "--gpus", "8xA800")
    assert "is larger than 16,777,216 bytes" in err


@pytest.mark.parametrize(("calibration", "needle"), [
    ({"ftplan_calibration": 1, "factors": {"activation_multiplier": [1]}}, "activation_multiplier must be a number"),
    ({"ftplan_calibration": 1, "factors": {"compute_efficiency": "fast"}}, "compute_efficiency must be a number"),
    ({"ftplan_calibration": 1, "factors": {}, "key": [1, 2]}, "'key' must be an object"),
    ({"ftplan_calibration": 1, "factors": {"overhead_multiplier": 1e308}}, "overhead_multiplier must be a number"),
    ({"ftplan_calibration": 1, "factors": []}, "is not an ftplan calibration file"),
])
def test_calibration_of_the_wrong_shape(capsys, monkeypatch, tmp_path: Path, calibration: dict, needle: str) -> None:
    file = tmp_path / "cal.json"
    file.write_text(json.dumps(calibration))
    err = one_line_error(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--calibration",
                         str(file))
    assert needle in err


# ---------------------------------------------------------------- plan.json

def emitted_plan(capsys, monkeypatch, tmp_path: Path) -> dict:
    code, _, err = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--zero", "2",
                       "--rope-scaling", "linear:2", "--seq-len", "4096", "--emit", str(tmp_path / "src"))
    assert code == 0, err
    return json.loads((tmp_path / "src" / "plan.json").read_text())


@pytest.mark.parametrize(("where", "key", "value", "needle"), [
    ("model", "hidden_size", -4096, "'hidden_size' must lie in 1..1,048,576"),
    ("model", "hidden_size", 0, "'hidden_size' must lie in 1..1,048,576"),
    ("model", "hidden_size", "4096", "'hidden_size' must be an integer"),
    ("model", "num_layers", 4096.5, "'num_layers' must be an integer"),
    ("model", "name", "x\ntouch /tmp/pwned", "'name' holds a control character"),
    ("model", "name", "../../../../tmp/evil", "must be a plain name, not a path"),
    ("model", "rope_scaling", "linear:2\ntrust_remote_code: true", "'rope_scaling' holds a control character"),
    ("model", "decoder_layer_class", "X; rm -rf ~", "'decoder_layer_class'"),
    ("model", "unknown_field", 1, "has no field 'unknown_field'"),
    ("config", "micro_batch", 0, "'micro_batch' must lie in 1..1,048,576"),
    ("config", "lora_dropout", 1.5, "'lora_dropout' must lie in [0, 1)"),
    ("config", "zero", True, "'zero' must be one of 0, 1, 2, 3"),
    ("config", "lora_targets", ["q_proj\nx"], "a LoRA target holds a control character"),
    ("cluster", "nodes", 10**12, "nodes must lie in 1..1,048,576"),
    ("config", "num_generations", 0, "'num_generations' must lie in 1..65,536"),
    ("config", "kl_beta", -1, "'kl_beta' must lie in [0, 1e+06]"),
    ("config", "generation", "warp-drive", "'generation' must be one of"),
    ("config", "reward_model", "x\ny", "'reward_model' holds a control character"),
    ("config", "transformers_version", "4.46.1\nx", "'transformers_version' holds a control character"),
    ("config", "fused_adamw", "yes", "'fused_adamw' must be true or false"),
    ("config", "keeps_output", "no", "'keeps_output' must be true or false"),
    ("top", "global_batch", "64", "'global_batch' must be an integer"),
])
def test_hostile_plan_json_is_refused(capsys, monkeypatch, tmp_path: Path, where: str, key: str, value,
                                      needle: str) -> None:
    data = emitted_plan(capsys, monkeypatch, tmp_path)
    target = {"model": data["config"]["model"], "config": data["config"], "cluster": data["config"]["cluster"],
              "top": data}[where]
    target[key] = value
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(data))
    err = one_line_error(capsys, monkeypatch, "emit", str(plan), str(tmp_path / "out"))
    assert needle in err
    assert not (tmp_path / "out").exists()


def test_a_model_folder_named_with_a_newline_injects_nothing(capsys, monkeypatch, tmp_path: Path) -> None:
    folder = tmp_path / "m\ntouch pwned"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    err = one_line_error(capsys, monkeypatch, "estimate", "--model", str(folder), "--gpus", "1xA800", "--emit",
                         str(tmp_path / "out"))
    assert "holds a control character" in err and "\\n" in err
    assert not (tmp_path / "out").exists()


def test_emitted_files_carry_no_raw_text_even_from_an_unchecked_spec(tmp_path: Path) -> None:
    """Defence in depth: a spec built in code around the checks still cannot add a line to launch.sh or
    llamafactory.yaml, nor point output_dir outside saves/."""
    import dataclasses

    from planner.build import build_config
    from planner.estimate import estimate
    from runner.emit import render_files

    cfg = build_config(model="7b", gpus="8xA800", zero=2, seq_len=4096, rope_scaling="linear:2")
    evil = dataclasses.replace(cfg.model, name="../../../../tmp/evil\ntouch pwned")
    cfg = dataclasses.replace(cfg, model=evil)
    files = render_files(estimate(cfg), tmp_path / "out")
    launch = files["launch.sh"]
    assert not any(line.startswith("touch") for line in launch.splitlines())
    assert "\\ntouch pwned" in launch.splitlines()[1]
    lf = yaml.safe_load(files["llamafactory.yaml"])
    assert lf["output_dir"].startswith("saves/") and ".." not in Path(lf["output_dir"]).parts
    assert "trust_remote_code" not in lf
    header = [line for line in files["llamafactory.yaml"].splitlines() if line.startswith("#")]
    assert all(line.startswith("# ") for line in header)


def test_rope_scaling_in_the_header_is_ftplan_words(capsys, monkeypatch, tmp_path: Path) -> None:
    emitted_plan(capsys, monkeypatch, tmp_path)
    text = (tmp_path / "src" / "llamafactory.yaml").read_text()
    assert "the plan assumed linear:2." in text
    assert yaml.safe_load(text)["rope_scaling"] == "linear"


# ---------------------------------------------------------------- outputs

def test_outputs_that_cannot_be_written_are_one_line(capsys, monkeypatch, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for target, needle in ((a_file / "sub", "a file stands where a folder is needed"),
                           (a_file, "exists and is not a directory"),
                           (Path("/proc/ftplan-no-such/out"), "cannot write /proc/ftplan-no-such")):
        err = one_line_error(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--emit",
                             str(target))
        assert needle in err
    clash = tmp_path / "out"
    (clash / "plan.json").mkdir(parents=True)  # a folder where a file should go, even with --force
    err = one_line_error(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--emit", str(clash),
                         "--force")
    assert "a folder stands where the file should go" in err
    assert sorted(p.name for p in clash.iterdir()) == ["plan.json"]
    out = tmp_path / "reports"
    (out / "scale-llama-2-7b-A800-lora.png").mkdir(parents=True)
    err = one_line_error(capsys, monkeypatch, "scale", "--model", "7b", "--gpu", "A800", "--max-gpus", "2", "--out",
                         str(out), "--force")
    assert "a folder stands where the file should go" in err
    assert sorted(p.name for p in out.iterdir()) == ["scale-llama-2-7b-A800-lora.png"]


def test_write_text_atomic_refuses_in_one_line(tmp_path: Path) -> None:
    from planner.atomic import write_text_atomic

    (tmp_path / "f").write_text("x")
    with pytest.raises(PlanError, match="cannot write"):
        write_text_atomic(tmp_path / "f" / "g.json", "{}")
    (tmp_path / "d").mkdir()
    with pytest.raises(PlanError, match="a folder stands where the file should go"):
        write_text_atomic(tmp_path / "d", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]


# ---------------------------------------------------------------- tune

def test_tune_never_echoes_a_storage_password(capsys, monkeypatch) -> None:
    err = one_line_error(capsys, monkeypatch, "tune", "--model", "7b", "--gpus", "1xA800", "--storage",
                         "postgresql://bob:s3cr%40t-pw@127.0.0.1:1/db", "--storage-retry", "1")
    assert "s3cr" not in err and "bob:***@" in err


def test_redact_hides_the_password_wherever_it_appears() -> None:
    from runner.tuning.storage import redact

    url = "postgresql://bob:p%40ss@db/x"
    assert redact(f"cannot open {url}: password p@ss rejected", url) == \
        "cannot open postgresql://bob:***@db/x: password *** rejected"


def test_a_failed_tune_leaves_no_database(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, monkeypatch, "tune", "--model", "70b", "--gpus", "1xRTX4090", "--method", "full",
                         "--host-memory", "1", "--nvme", "0")
    assert "nothing in the search space fits" in err
    assert list(tmp_path.iterdir()) == []
