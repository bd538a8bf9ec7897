"""The longest sequence and the largest micro-batch that fit: "how long a context can I train on this card".

For one configuration, every other setting held, the largest value of the knob whose estimate fits (the same fit
verdict as `estimate`: planner.estimate.fit_failures) and the estimate one step above it, which does not. Memory
grows with both knobs, so the answer is found by doubling and then bisection: about 2 log2(answer) estimates.
The sequence is bounded by the model's positions (the user extends them with --rope-scaling).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from planner.calibration import DEFAULT, Calibration
from planner.estimate import Estimate, Limits, estimate
from planner.strategy import TrainConfig


class Knob(str, Enum):
    seq_len = "seq-len"
    micro_batch = "micro-batch"


MAX_MICRO_BATCH = 4096  # a bound for the search, far above what fits any GPU in the catalog


@dataclass(frozen=True, kw_only=True)
class Limit:
    knob: Knob
    value: int | None  # the largest value that fits; None when even 1 does not
    step: int  # the solver's granularity (1 token, 1 sequence)
    at_value: Estimate | None  # the estimate at `value`
    above: Estimate | None  # the estimate one step above, which does not fit; None when a bound stopped the search
    bound: str = ""  # what stopped the search instead of memory ("the model's 4096 positions")


def _with(cfg: TrainConfig, knob: Knob, value: int) -> TrainConfig:
    return replace(cfg, seq_len=value) if knob is Knob.seq_len else replace(cfg, micro_batch=value)


def solve(cfg: TrainConfig, knob: Knob, limits: Limits = Limits(), cal: Calibration = DEFAULT) -> Limit:
    """The largest `knob` with which `cfg` fits; the other settings stay as given."""
    top = cfg.model.max_seq_len if knob is Knob.seq_len else MAX_MICRO_BATCH
    bound = f"the model's {top} positions (add --rope-scaling for more)" if knob is Knob.seq_len else \
        f"the solver's bound of {top} sequences"

    def fits(v: int) -> tuple[bool, Estimate]:
        est = estimate(_with(cfg, knob, v), limits, cal, timed=False)
        return est.fits, est

    ok, first = fits(1)
    if not ok:
        return Limit(knob=knob, value=None, step=1, at_value=None, above=first)
    lo, lo_est, hi = 1, first, 2
    while hi <= top:
        ok, est = fits(hi)
        if not ok:
            break
        lo, lo_est, hi = hi, est, hi * 2
    else:
        ok, est = fits(top)
        if ok:
            return Limit(knob=knob, value=top, step=1, at_value=est, above=None, bound=bound)
        hi = top
    hi_est = None
    while hi - lo > 1:  # invariant: lo fits, hi does not
        mid = (lo + hi) // 2
        ok, est = fits(mid)
        if ok:
            lo, lo_est = mid, est
        else:
            hi, hi_est = mid, est
    if hi_est is None:
        hi_est = fits(hi)[1]
    return Limit(knob=knob, value=lo, step=1, at_value=lo_est, above=hi_est)


def limit_to_dict(lim: Limit) -> dict[str, Any]:
    """The answer as `--json` prints it: the value, and the memory at it and one step above."""
    out: dict[str, Any] = {"knob": lim.knob.value, "value": lim.value, "step": lim.step, "bound": lim.bound or None}
    if lim.at_value is not None:
        out["at_value"] = {"name": str(lim.at_value.config), "fit_bytes": round(lim.at_value.memory.fit_bytes),
                           "memory_readings_bytes": lim.at_value.memory.readings()}
    if lim.above is not None:
        out["one_step_above"] = {"value": getattr(lim.above.config, lim.knob.name), "fits": lim.above.fits,
                                 "fit_bytes": round(lim.above.memory.fit_bytes),
                                 "fit_reasons": list(lim.above.fit_reasons)}
    return out

