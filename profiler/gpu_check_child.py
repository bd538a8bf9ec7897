"""A child python of the GPU check (profiler/gpu_check.py): `env` prints torch's view of the machine, `fit` runs the
CUDA device fit and writes its file. Each prints one JSON line; the GPU check runs them apart so that CUDA starts in
them and not in the check's own process."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "huggingface_hub", "tokenizers", "safetensors",
             "deepspeed", "bitsandbytes")


def torch_environment() -> dict[str, Any]:
    """torch, CUDA, the libraries (version and where each loads from) and the device's properties."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from profiler.gemm_sustained import board_readings

    libraries = {}
    for name in LIBRARIES:
        spec = importlib.util.find_spec(name)
        try:
            v = version(name)
        except PackageNotFoundError:
            v = None
        libraries[name] = {"version": v, "origin": None if spec is None else spec.origin}
    out: dict[str, Any] = {"python": sys.version.split()[0], "torch_cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
                           "device_count": torch.cuda.device_count(), "libraries": libraries}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["device_properties"] = {k: getattr(props, k) for k in dir(props) if not k.startswith("_")
                                    and isinstance(getattr(props, k), int | float | str | bool)}
        out["device_name"] = torch.cuda.get_device_name(0)
        out["board"] = board_readings(torch)
    return out


def write_device_fit(out_dir: Path) -> dict[str, Any]:
    """The CUDA fit without real steps, written as `ftplan profile calibrate --device` writes it, into out_dir."""
    from planner.device_fit_file import write_fit
    from planner.gpus import device_fit_gpu_name
    from profiler.device_fit_cuda import fit_cuda_device

    t0 = time.monotonic()
    fitted = fit_cuda_device(real_steps=False).to_dict()
    fit_s = time.monotonic() - t0
    _, path = write_fit(fitted, out_dir / f"{device_fit_gpu_name(fitted)}.json")
    return {"path": str(path), "fit_s": fit_s}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("env", "fit"))
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args(argv)
    answer = torch_environment() if args.what == "env" else write_device_fit(args.out_dir)
    print(json.dumps(answer, default=str))


if __name__ == "__main__":
    from profiler.launcher import exit_worker

    exit_worker(main)
