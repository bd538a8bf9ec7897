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

import json
from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlanError


@dataclass(frozen=True, kw_only=True, slots=True)
class Calibration:
    activation_multiplier: float = 1.0
    overhead_multiplier: float = 1.0
    compute_efficiency: float | None = None
    comm_efficiency: float | None = None
    key: tuple[tuple[str, str], ...] = ()
    source: str = ""


DEFAULT = Calibration()


def load_calibration(path: Path | None) -> Calibration:
    if path is None:
        return DEFAULT
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PlanError(f"calibration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"calibration file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("ftplan_calibration") != 1 or not isinstance(data.get("factors"), dict):
        raise PlanError(f"{path} is not an ftplan calibration file (no 'ftplan_calibration': 1 / 'factors')")
    f = data["factors"]
    try:
        cal = Calibration(
            activation_multiplier=float(f.get("activation_multiplier", 1.0)),
            overhead_multiplier=float(f.get("overhead_multiplier", 1.0)),
            compute_efficiency=None if f.get("compute_efficiency") is None else float(f["compute_efficiency"]),
            comm_efficiency=None if f.get("comm_efficiency") is None else float(f["comm_efficiency"]),
            key=tuple(sorted((str(k), str(v)) for k, v in (data.get("key") or {}).items())), source=str(path))
    except (TypeError, ValueError) as exc:
        raise PlanError(f"calibration file {path}: bad factor ({exc})") from None
    for name in ("activation_multiplier", "overhead_multiplier"):
        if not 0 < getattr(cal, name) < 100:
            raise PlanError(f"calibration file {path}: {name} must be positive")
    for name in ("compute_efficiency", "comm_efficiency"):
        value = getattr(cal, name)
        if value is not None and not 0 < value <= 1:
            raise PlanError(f"calibration file {path}: {name} must lie in (0, 1]")
    return cal
