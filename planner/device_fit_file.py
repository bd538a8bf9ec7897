"""The device fit file (`ftplan profile calibrate --device`): where it lives, and loading it safely.

A fit measures one device of one machine (the CPU device here; a CUDA GPU with profiler/device_fit.py's CUDA
fit), so it is written once per machine to a default location and read back by every planning command when
the plan's GPU is the device it measured:

    ${FTPLAN_DEVICE_FIT_DIR:-${XDG_CACHE_HOME:-~/.cache}/ftplan/device-fit}/<machine>/<device>.json

The file is JSON: {"ftplan_device_fit": 1, "device": "CPU", "backend": "cpu", "machine": {...}, "written_at":
"<ISO 8601 UTC>", <fit fields>}: `device` is the catalog GPU name the fit replaces ("CPU", or e.g. "H100" for a
CUDA fit), `backend` "cpu" or "cuda". Files written before these keys existed (version 1 without `device`) are CPU
fits; a file that says "device": "cuda" and names its GPU in "gpu" is read as that GPU's fit. This module
locates, validates and describes the file (a regular file of at most 1 MiB; every number finite); which fit
field replaces which GPU-spec constant is planner.gpus.with_device_fit's.
"""

from __future__ import annotations

import math
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from planner.input_files import JSONInputError, read_json_file

FORMAT = "ftplan_device_fit"
VERSIONS = (1,)
MAX_BYTES = 1 << 20
METADATA = (FORMAT, "device", "backend", "gpu", "machine", "written_at")
AUTO = "auto"  # --device-fit's default: this machine's fit of the plan's device, when one was written
NONE = "none"  # --device-fit none: the catalog's constants


@dataclass(frozen=True)
class DeviceFitFile:
    """A loaded fit: the device it measured, the machine and time it was measured on, its fields."""

    path: Path
    device: str
    machine: dict[str, str]
    written_at: float | None  # seconds since the epoch; None for files written before the stamp existed
    values: dict[str, Any] = field(repr=False)

    def age_s(self, now: float | None = None) -> float | None:
        return None if self.written_at is None else max(0.0, (time.time() if now is None else now)
                                                         - self.written_at)

    def constants(self) -> dict[str, Any]:
        """The fitted values as planner.gpus.with_device_fit reads them: a GPU's fit (any device but the CPU) names
        its catalog entry ("device": "cuda", "gpu": ...), which the header holds and `values` leaves out."""
        return dict(self.values) if self.device == "CPU" else {**self.values, "device": "cuda", "gpu": self.device}

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """What answers show (no path: `ftplan serve` answers too)."""
        return {"device": self.device, "machine": self.machine.get("hostname") or self.machine.get("id", ""),
                "written_at": None if self.written_at is None else _iso(self.written_at), "age_s": self.age_s(now)}


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "unknown"


def machine_id() -> str:
    """This machine's key: its host name and the start of systemd's /etc/machine-id (stable across reboots,
    distinct between machines that share a host name), hashed so the id itself is not written out."""
    import hashlib  # here, not at import: every plan looks for a fit, few write one

    host = os.uname().nodename
    try:
        raw = Path("/etc/machine-id").read_text().strip()
    except OSError:
        raw = ""
    suffix = hashlib.sha256(raw.encode()).hexdigest()[:8] if raw else ""
    return _safe(f"{host}-{suffix}" if suffix else host)


def machine_info() -> dict[str, str]:
    import platform

    return {"id": machine_id(), "hostname": os.uname().nodename, "platform": platform.platform(),
            "processor": _cpu_model()}


def _cpu_model() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("FTPLAN_DEVICE_FIT_DIR"):
        return Path(env["FTPLAN_DEVICE_FIT_DIR"]).expanduser()
    cache = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache) / "ftplan" / "device-fit"


def default_path(device: str, env: dict[str, str] | None = None) -> Path:
    """Where this machine's fit of `device` (a catalog GPU name, or CPU) is written and found."""
    return default_dir(env) / machine_id() / f"{_safe(device)}.json"


def stamped(fit: dict[str, Any], device: str, now: float | None = None) -> dict[str, Any]:
    """The file's content for a fresh fit: header, device, machine and time first."""
    written = time.time() if now is None else now
    backend = str(fit.get("backend") or ("cpu" if device == "CPU" else "cuda"))
    return {FORMAT: VERSIONS[-1], "device": device, "backend": backend, "machine": machine_info(),
            "written_at": _iso(written), **{k: v for k, v in fit.items() if k not in METADATA}}


def write_fit(fit: dict[str, Any], out: Path | None = None) -> tuple[dict[str, Any], Path]:
    """A fresh fit written as `ftplan profile calibrate --device` writes it: stamped (`stamped`), for the device it
    replaces ("CPU", or the catalog GPU a CUDA fit names), to `out` or this machine's default place (`default_path`),
    atomically; (the file's content, its path)."""
    import json

    from planner.atomic import write_text_atomic
    from planner.gpus import device_fit_gpu_name

    data = stamped(fit, device=device_fit_gpu_name(fit))
    target = Path(out) if out is not None else default_path(data["device"])
    write_text_atomic(target, json.dumps(data, indent=2) + "\n")
    return data, target


def _check_values(value: Any, where: str, depth: int = 0) -> None:
    if depth > 8:
        raise PlanError(f"{where}: nested too deep")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise PlanError(f"{where}: {value} is not a finite number")
        return
    if isinstance(value, list):
        for item in value:
            _check_values(item, where, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_values(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, str) and len(value) <= 200:
        return
    raise PlanError(f"{where}: expected numbers, got {type(value).__name__}")


def load(path: Path) -> DeviceFitFile:
    """A device fit file, validated; PlanError (one line) for anything else."""
    path = Path(path).expanduser()
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise PlanError(f"device fit {path} does not exist (write one with `ftplan profile calibrate --device`)") \
            from None
    except OSError as exc:
        raise PlanError(f"device fit {path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise PlanError(f"device fit {path} is not a regular file")
    if info.st_size > MAX_BYTES:
        raise PlanError(f"device fit {path} is larger than {MAX_BYTES // 1024} KiB: not a device fit")
    try:  # opened non-blocking and checked again on the open file, read to MAX_BYTES (planner/input_files.py)
        data = read_json_file(path, what="device fit", limit_bytes=MAX_BYTES)
    except JSONInputError as exc:
        raise PlanError(f"device fit {path} is not valid JSON ({exc.reason})") from None
    if not isinstance(data, dict) or data.get(FORMAT) not in VERSIONS:
        raise PlanError(f"{path} is not an ftplan device fit (no '{FORMAT}': "
                        f"{' or '.join(str(v) for v in VERSIONS)})")
    device = data.get("device", "CPU")
    if isinstance(device, str) and device.lower() == "cuda" and isinstance(data.get("gpu"), str):
        device = data["gpu"]  # the header before "device" named the catalog GPU
    machine = data.get("machine") or {}
    if not isinstance(device, str) or not device or not isinstance(machine, dict):
        raise PlanError(f"device fit {path}: 'device' must name a device and 'machine' be an object")
    written = data.get("written_at")
    import calendar

    try:
        written_at = None if written is None else float(calendar.timegm(time.strptime(str(written),
                                                                                      "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        raise PlanError(f"device fit {path}: written_at '{written}' is not YYYY-MM-DDTHH:MM:SSZ") from None
    values = {k: v for k, v in data.items() if k not in METADATA}
    _check_values(values, f"device fit {path}")
    if not any(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()):
        raise PlanError(f"device fit {path} holds no fitted constants")
    return DeviceFitFile(path=path, device=device, machine={str(k): str(v) for k, v in machine.items()},
                         written_at=written_at, values=values)


def resolve(choice: str | Path | None, device: str, env: dict[str, str] | None = None) -> DeviceFitFile | None:
    """The fit a plan on `device` uses: `choice` is a file, AUTO (this machine's fit of the device, when one was
    written) or NONE / None (the catalog's constants). A file that measured another device is refused; AUTO
    ignores other devices' fits."""
    if choice is None or str(choice) == NONE:
        return None
    if str(choice) == AUTO:
        if not default_dir(env).is_dir():  # no fit written on this machine: the usual case, answered first
            return None
        path = default_path(device, env)
        return load(path) if path.exists() or path.is_symlink() else None
    fit = load(Path(choice))
    if fit.device != device:
        raise PlanError(f"device fit {fit.path} measured {fit.device}, but the plan runs on {device}")
    return fit
