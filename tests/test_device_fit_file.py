"""The device fit everywhere: `ftplan profile calibrate --device` writes this machine's fit to the cache folder
(planner/device_fit_file.py), and estimate / plan / scale / tune / profile run / serve use it when the plan runs on
the device it measured, saying which machine measured it and how long ago. The loader takes regular files of
finite numbers only."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from cli_helpers import run

from planner import device_fit_file as dff
from planner.errors import PlanError
from planner.gpus import GPUS

MEASURED = Path(__file__).resolve().parents[1] / "benchmarks" / "measured" / "cpu_device_fit.json"


def fast_fit(rate_factor: float = 4.0) -> dict:
    """A fit measured on this project's VM (benchmarks/measured), with a GEMM rate `rate_factor` times the catalog
    CPU entry's (the entry is itself a fit of this VM, so a file at the same rate would be hard to tell from it)."""
    data = json.loads(MEASURED.read_text())
    data["peak_fp32_flops_per_s"] = GPUS["CPU"].peak_fp32_flops_per_s * rate_factor
    return data


@pytest.fixture()
def fit_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "fits"
    monkeypatch.setenv("FTPLAN_DEVICE_FIT_DIR", str(folder))
    return folder


def write_default(data: dict, written_s_ago: float = 3 * 86400) -> Path:
    path = dff.default_path("CPU")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dff.stamped(data, "CPU", now=time.time() - written_s_ago)))
    return path


def tokens_per_s(capsys, monkeypatch, *args: str) -> tuple[float, dict]:
    code, out, err = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "2xCPU", "--seq-len", "256",
                         "--precision", "32-true", *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    return data["tokens_per_s"], data


def test_the_default_location_is_keyed_by_machine_and_device(fit_dir: Path) -> None:
    path = dff.default_path("CPU")
    assert path.parent.parent == fit_dir and path.name == "CPU.json"
    assert path.parent.name == dff.machine_id() and set(path.parent.name) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    env = {"XDG_CACHE_HOME": "/x/cache"}
    assert dff.default_dir(env) == Path("/x/cache/ftplan/device-fit")


def test_estimate_uses_this_machines_fit_and_says_whose_and_how_old(capsys, monkeypatch, fit_dir: Path) -> None:
    catalog, data = tokens_per_s(capsys, monkeypatch)
    assert "device_fit" not in data
    write_default(fast_fit())
    fitted, data = tokens_per_s(capsys, monkeypatch)
    assert fitted > 2 * catalog  # a 4x GEMM rate: the fit replaced the catalog's CPU constants
    assert data["device_fit"]["device"] == "CPU" and data["device_fit"]["machine"] == dff.machine_info()["hostname"]
    assert 3 * 86400 - 60 < data["device_fit"]["age_s"] < 3 * 86400 + 60
    assert tokens_per_s(capsys, monkeypatch, "--device-fit", "none")[0] == pytest.approx(catalog)
    code, out, _ = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "2xCPU", "--seq-len", "256")
    assert code == 0 and "Device fit: CPU constants measured on" in out and "3 days ago" in out
    # a plan on GPUs ignores this machine's CPU fit
    code, out, _ = run(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "8xA800", "--json")
    assert code == 0 and "device_fit" not in json.loads(out)


def test_plan_and_scale_use_the_fit_too(capsys, monkeypatch, fit_dir: Path, tmp_path: Path) -> None:
    write_default(fast_fit())
    code, out, err = run(capsys, monkeypatch, "plan", "--model", "7b", "--gpus", "2xCPU", "--seq-len", "256",
                         "--method", "lora", "--json")
    assert code == 0, err
    assert json.loads(out)["device_fit"]["device"] == "CPU"
    code, out, err = run(capsys, monkeypatch, "scale", "--model", "7b", "--gpu", "CPU", "--max-gpus", "2",
                         "--seq-len", "256", "--out", str(tmp_path / "scale"), "--json")
    assert code == 0, err
    assert json.loads(out)["device_fit"]["device"] == "CPU"


def test_an_explicit_file_must_have_measured_the_plans_device(capsys, monkeypatch, fit_dir: Path,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(fast_fit()))  # a version-1 file without a device: a CPU fit
    assert tokens_per_s(capsys, monkeypatch, "--device-fit", str(path))[1]["device_fit"]["written_at"] is None
    code, _, err = run(capsys, monkeypatch, "estimate", "--model", "7b", "--gpus", "8xA800", "--device-fit", str(path))
    assert code == 2 and "measured CPU, but the plan runs on A800" in err


def test_calibrate_device_writes_the_default_file(capsys, monkeypatch, fit_dir: Path) -> None:
    """The measurement itself (6 minutes on 2 cores) is profiler/device_fit.py's, tested there; here the file."""
    from profiler import device_fit
    from profiler.device_fit import device_fit_from_dict

    measured = json.loads(MEASURED.read_text())
    measured_fit = device_fit_from_dict(measured)  # older files lack some fields: their defaults
    asked: list[int] = []
    monkeypatch.setattr(device_fit, "fit_device", lambda passes=1: asked.append(passes) or measured_fit)
    code, out, err = run(capsys, monkeypatch, "profile", "calibrate", "--device", "--passes", "3")
    assert code == 0, err
    assert asked == [3]
    fit = dff.load(dff.default_path("CPU"))
    assert fit.device == "CPU" and fit.machine["id"] == dff.machine_id() and fit.age_s() < 60
    assert fit.values["peak_fp32_flops_per_s"] == measured["peak_fp32_flops_per_s"]
    assert str(dff.default_path("CPU")) in out
    code, _, err = run(capsys, monkeypatch, "profile", "calibrate", "--device", "--passes", "0")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_serve_uses_its_own_fit_never_a_requested_file(fit_dir: Path) -> None:
    from ftplan.answers import answer

    write_default(fast_fit())
    body = {"model": "7b", "gpus": "2xCPU", "seq_len": 256}
    assert answer("plan", {**body, "device_fit": "auto"}).json()["device_fit"]["device"] == "CPU"  # the default
    with pytest.raises(PlanError, match="No such option: --device-fit"):
        answer("estimate", {**body, "device_fit": "/etc/passwd"})


def write(tmp_path: Path, text: str, name: str = "fit.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "needle"), [
    ('{"ftplan_device_fit": 1, "host_op_s": NaN}', "not valid JSON"),
    ('{"ftplan_device_fit": 1, "host_op_s": Infinity}', "not valid JSON"),
    ('{"ftplan_device_fit": 1, "host_op_s": 1e999}', "not a finite number"),
    ('{"ftplan_device_fit": 2, "host_op_s": 1.0}', "is not an ftplan device fit"),
    ('{"ftplan_calibration": 1}', "is not an ftplan device fit"),
    ('[1, 2]', "is not an ftplan device fit"),
    ('{"ftplan_device_fit": 1, "note": "x"}', "holds no fitted constants"),
    ('{"ftplan_device_fit": 1, "host_op_s": 1.0, "blob": "' + "x" * 300 + '"}', "expected numbers, got str"),
    ('{"ftplan_device_fit": 1, "host_op_s": 1.0, "written_at": "yesterday"}', "is not YYYY-MM-DD"),
    ('{"ftplan_device_fit": 1, "host_op_s": 1.0, "device": 5}', "'device' must name a device"),
    ("{not json", "not valid JSON"),
], ids=["nan", "inf", "overflow", "version", "calibration-file", "list", "no-numbers", "long-string", "bad-date",
        "bad-device", "broken"])
def test_bad_files_are_one_line(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(PlanError, match=needle) as err:
        dff.load(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_only_small_regular_files_are_read(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        dff.load(tmp_path / "absent.json")
    with pytest.raises(PlanError, match="not a regular file"):
        dff.load(tmp_path)
    real = write(tmp_path, json.dumps(fast_fit()))
    (tmp_path / "link.json").symlink_to(real)
    with pytest.raises(PlanError, match="not a regular file"):
        dff.load(tmp_path / "link.json")
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(PlanError, match="not a regular file"):
        dff.load(tmp_path / "pipe.json")  # would block a reader forever
    big = write(tmp_path, '{"ftplan_device_fit": 1, "x": [' + ",".join(["1.0"] * 300_000) + "]}", "big.json")
    with pytest.raises(PlanError, match="larger than 1024 KiB"):
        dff.load(big)
    assert dff.load(real).device == "CPU"


def test_the_header_names_the_device_and_its_backend(tmp_path: Path) -> None:
    stamped = dff.stamped(fast_fit(), "CPU")
    assert (stamped["device"], stamped["backend"]) == ("CPU", "cpu")
    assert dff.stamped({"peak": 1.0}, "H100")["backend"] == "cuda"
    older = write(tmp_path, json.dumps({"ftplan_device_fit": 1, "device": "cuda", "gpu": "H100", "peak": 1.0}))
    assert dff.load(older).device == "H100"
