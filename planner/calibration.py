"""Correction factors fitted from measured profiles (`ftplan profile ... --calibrate`), read as plain JSON.

File format (written by profiler/calibrate.py, atomically):
{
  "ftplan_calibration": 1,
  "key": {"device": "CPU", "framework": "deepspeed", "torch": "2.13.0", "transformers": "...", "deepspeed": "..."},
  "factors": {"activation_multiplier": 1.0, "overhead_multiplier": 1.0,
              "compute_efficiency": null, "comm_efficiency": null},
  "error_before": {...}, "error_after": {...}, "profiles": N
}
`activation_multiplier` scales saved activations, `overhead_multiplier` the framework buffers
("other" minus the CUDA context), `compute_efficiency` replaces the achievable fraction of peak
FLOP/s, `comm_efficiency` the achievable fraction of link bandwidth (null: keep the defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlanError
from planner.input_checks import one_line
from planner.input_files import JSONInputError, read_json_file


@dataclass(frozen=True, kw_only=True, slots=True)
class Calibration:
    activation_multiplier: float = 1.0
    overhead_multiplier: float = 1.0
    compute_efficiency: float | None = None
    comm_efficiency: float | None = None
    key: tuple[tuple[str, str], ...] = ()
    source: str = ""


DEFAULT = Calibration()


def _factor(factors: dict, name: str, default: float | None, lo: float, hi: float, where: str) -> float | None:
    value = factors.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not lo < value <= hi:
        raise PlanError(f"{where}: {name} must be a number in ({lo:g}, {hi:g}], got {one_line(repr(value))[:40]}")
    return float(value)


def load_calibration(path: Path | None) -> Calibration:
    """The calibration file's schema: `ftplan_calibration` 1, numeric factors in their ranges, a flat `key`
    (other fields, such as the fit's errors, are the writer's report and not read)."""
    if path is None:
        return DEFAULT
    # a regular file of bounded size, strict JSON (planner/input_files.py)
    try:
        data = read_json_file(path, what="calibration file")
    except JSONInputError as exc:
        raise PlanError(f"calibration file {path} is not readable JSON: {exc.reason}") from None
    if not isinstance(data, dict) or data.get("ftplan_calibration") != 1 or not isinstance(data.get("factors"), dict):
        raise PlanError(f"{path} is not an ftplan calibration file (no 'ftplan_calibration': 1 / 'factors')")
    where = f"calibration file {path}"
    f = data["factors"]
    key = data.get("key") or {}
    if not isinstance(key, dict) or any(isinstance(v, dict | list) for v in key.values()):
        raise PlanError(f"{where}: 'key' must be an object of names and versions")
    return Calibration(
        activation_multiplier=_factor(f, "activation_multiplier", 1.0, 0.0, 100.0, where),
        overhead_multiplier=_factor(f, "overhead_multiplier", 1.0, 0.0, 100.0, where),
        compute_efficiency=_factor(f, "compute_efficiency", None, 0.0, 1.0, where),
        comm_efficiency=_factor(f, "comm_efficiency", None, 0.0, 1.0, where),
        key=tuple(sorted((one_line(str(k))[:200], one_line(str(v))[:200]) for k, v in key.items())),
        source=str(path))
