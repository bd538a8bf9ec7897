"""`ftplan profile dry-run | run | calibrate`: measure what the planner predicts, and calibrate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ftplan import options as o
from ftplan.app import app
from planner.build import config_from, device_fit_for
from planner.errors import PlanError
from planner.options import Options, replace_flat
from planner.strategy import Method, Precision

profile_app = typer.Typer(no_args_is_help=True, help="Measure memory and time: dry runs on fake tensors, real "
                                                       "steps, and calibration of the planner.")
app.add_typer(profile_app, name="profile")

SaveOpt = Annotated[Path | None, typer.Option("--save", help="Also write this profile as JSON (for `calibrate`).")]
CalibrateOpt = Annotated[Path | None, typer.Option(
    "--calibrate", help="Fit the planner's factors to this profile (and --profiles) and write a calibration file.")]


def _versions() -> dict[str, str]:
    from profiler.worker import versions

    return versions(False)


def _write_profile(path: Path, data: dict) -> None:
    from planner.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


DRY_RUN = o.expose(target=("model", "gpus"),
                   adapter=("method", "lora_r", "lora_alpha", "lora_targets", "lora_dropout", "precision",
                            "freeze_layers"),
                   strategy=("optimizer", "micro_batch", "grad_accum", "seq_len", "grad_ckpt", "attn"),
                   switches=("cross_entropy",), defaults={"gpus": "1xCPU"})
RUN = o.expose(target=("gpus",), adapter=("method", "lora_r", "lora_alpha", "lora_targets"),
               strategy=("optimizer", "zero", "fsdp", "micro_batch", "grad_accum", "seq_len", "grad_ckpt", "attn"),
               switches=("sync_each_batch",), limits=("device_fit",),
               defaults={"gpus": "1xCPU", "method": Method.full, "seq_len": 256})


@profile_app.command("dry-run")
@o.grouped
def dry_run(opts: Annotated[Options, DRY_RUN], save: SaveOpt = None, json_out: o.JsonOpt = False) -> None:
    """Two training steps of the real transformers model on fake tensors; peak by category vs the planner."""
    from planner.memory import memory_per_gpu
    from profiler.dryrun import dry_run as run_dry
    from reports.profile_report import dry_run_json, dry_run_view

    cfg = config_from(opts)
    result = run_dry(cfg)
    predicted = memory_per_gpu(cfg)
    data = dry_run_json(result, predicted, str(cfg))
    if save is not None:
        from profiler.calibrate import Profile, profile_dict

        prof = Profile(config=cfg, peak_bytes=result.peak_bytes["total"])
        _write_profile(save, profile_dict(prof, kind="dry-run", versions=_versions(), extra=data))
    if json_out:
        from reports.fmt import print_json

        print_json(data)
        return
    Console().print(dry_run_view(result, predicted, str(cfg)))


def _calibrate(profiles_paths: list[Path], extra: list, out: Path) -> dict:
    from profiler.calibrate import calibrate, load_profile

    profiles, versions = list(extra), {}
    for p in profiles_paths:
        prof, v = load_profile(p)
        profiles.append(prof)
        versions = versions or v
    if extra and not versions:
        versions = _versions()
    if not profiles:
        raise PlanError("no profiles given: pass profile files written by `ftplan profile run --save`")
    _, data = calibrate(profiles, versions)
    from profiler.calibrate import write_calibration

    write_calibration(out, data)
    return data


@profile_app.command("run")
@o.grouped
def run(*, model: Annotated[str | None, typer.Option("--model", "-m", help="Catalog name or config.json, built with "
                                                  "random weights; default: a 134M-parameter Llama.")] = None,
        model_path: Annotated[Path | None, typer.Option("--model-path", help="A local model directory "
                                                        "(config.json, and weights if present).")] = None,
        opts: Annotated[Options, RUN],
        precision: Annotated[Precision | None, typer.Option(help="Default: 32-true on the CPU, bf16-mixed on GPUs.")]
        = None,
        warmup: Annotated[int, typer.Option(min=0, help="Warm-up steps, not measured.")] = 1,
        steps: Annotated[int, typer.Option(min=1, help="Measured steps (the median is reported).")] = 2,
        save: SaveOpt = None, calibrate: CalibrateOpt = None,
        profiles: Annotated[list[Path] | None, typer.Option("--profiles", help="Saved profiles to fit together with "
                                                            "this one (repeat).")] = None,
        json_out: o.JsonOpt = False) -> None:
    """Real short training steps (torchrun; gloo on the CPU): per-rank peak memory, step time, tokens/s, MFU."""
    import tempfile

    from planner.calibration import DEFAULT
    from planner.memory import memory_per_gpu
    from profiler.calibrate import Profile, predicted_step_time_s, profile_dict
    from profiler.launch import SMALL_LLAMA, launch, write_model_config
    from reports.profile_report import calibration_view, run_json, run_view

    if model is not None and model_path is not None:
        raise PlanError("give --model or --model-path, not both")
    if model_path is not None and not (model_path / "config.json").is_file():
        raise PlanError(f"--model-path {model_path}: no config.json there")
    gpus = opts.target.gpus or ""
    if precision is None:
        precision = Precision.fp32 if gpus.upper().endswith("CPU") else Precision.bf16_mixed
    with tempfile.TemporaryDirectory(prefix="ftplan-model-") as tmp:
        target = str(model_path) if model_path is not None else model
        if target is None:
            target = str(write_model_config(SMALL_LLAMA, Path(tmp) / "small-llama"))
        cfg = config_from(replace_flat(opts, model=target, precision=precision))
        result = launch(cfg, model_path=model_path, warmup_steps=warmup, steps=steps)
    predicted = memory_per_gpu(cfg)
    try:
        pred_time: float | None = predicted_step_time_s(cfg, DEFAULT)
    except PlanError:  # a configuration the time model does not cover
        pred_time = None
    data = run_json(result, predicted, pred_time)
    fit = device_fit_for(replace_flat(opts, model=target))
    if fit is not None:
        data["device_fit"] = fit.summary()
    prof = Profile(config=cfg, peak_bytes=result.peak_bytes, step_time_s=result.step_time_s)
    if save is not None:
        _write_profile(save, profile_dict(prof, kind="run", versions=result.versions, extra=data))
    cal_data = _calibrate(list(profiles or []), [prof], calibrate) if calibrate is not None else None
    if json_out:
        from reports.fmt import print_json

        if cal_data is not None:
            data["calibration"] = cal_data
        print_json(data)
        return
    console = Console()
    console.print(run_view(result, predicted, pred_time))
    if fit is not None:
        from reports.fit_report import device_fit_line

        console.print(device_fit_line(fit))
    if cal_data is not None:
        console.print(calibration_view(cal_data, str(calibrate)))


@profile_app.command("calibrate")
def calibrate_cmd(out: Annotated[Path | None, typer.Option(
                      "--out", "-o", "--device-fit", help="File to write: the calibration, or with --device the "
                      "device fit (default: this machine's fit in the cache folder, which every command reads).")]
                  = None,
                  profiles: Annotated[list[Path] | None, typer.Argument(help="Profile files from `profile run/dry-run "
                                                                        "--save`.")] = None,
                  device: Annotated[bool, typer.Option(
                      "--device", help="Measure this machine as the CPU device instead (GEMM rate vs size, memory "
                      "bandwidth, op dispatch, gloo all-reduce) and write the fitted constants.")] = False,
                  passes: Annotated[int, typer.Option(
                      "--passes", min=1, max=9, help="With --device on a CPU: measure everything this many times and "
                      "fit the medians, so that a slow spell of a shared machine in one pass sets no constant "
                      "(each pass about a minute).")] = 1,
                  json_out: o.JsonOpt = False) -> None:
    """Fit the planner's correction factors to saved profiles; report the error before and after."""
    if device:
        from planner.device_fit_file import write_fit
        from profiler.device_fit import fit_device
        from reports.profile_report import device_fit_view

        # named "CPU", or by the catalog GPU a CUDA fit replaces
        data, target = write_fit(fit_device(passes=passes).to_dict(), out)
        if json_out:
            from reports.fmt import print_json

            print_json(data)
            return
        Console().print(device_fit_view(data, str(target)))
        return
    from reports.profile_report import calibration_view

    if out is None:
        raise PlanError("--out FILE: where to write the calibration")
    if not profiles:
        raise PlanError("no profiles given: pass profile files written by `ftplan profile run --save`, or --device")
    data = _calibrate(profiles, [], out)
    if json_out:
        from reports.fmt import print_json

        print_json(data)
        return
    Console().print(calibration_view(data, str(out)))
