"""Pipeline parallelism: the bubble and the point-to-point traffic of one stage.

Narayanan et al. 2021 (arXiv 2104.04473), Sec. 2.2: with p stages and m micro-batches per pipeline
per step, 1F1B (PipeDream-Flush) idles (p-1)/m of the ideal compute time; the interleaved schedule
with v model chunks per device cuts the bubble to (p-1)/(v m) at v times the point-to-point traffic.
"""

from __future__ import annotations

from planner.choices import PipeSchedule


def bubble_fraction(p: int, m: int, schedule: PipeSchedule = PipeSchedule.one_f_one_b, v: int = 1) -> float:
    """Bubble time over ideal compute time: (p-1)/m, or (p-1)/(v m) interleaved (Narayanan et al. 2021,
    Sec. 2.2.1 and 2.2.2)."""
    if p <= 1:
        return 0.0
    chunks = v if schedule is PipeSchedule.interleaved and v > 1 else 1
    return (p - 1) / (chunks * max(1, m))


def p2p_messages_per_step(p: int, m: int, schedule: PipeSchedule = PipeSchedule.one_f_one_b, v: int = 1) -> int:
    """Sends and receives on the critical path of one stage per step: each micro-batch's activation goes
    forward and its gradient comes back (2 per micro-batch); interleaving repeats this per chunk."""
    if p <= 1:
        return 0
    chunks = v if schedule is PipeSchedule.interleaved and v > 1 else 1
    return 2 * m * chunks


def boundary_activation_bytes(b: int, s: int, h: int, act_bytes: int, t: int = 1,
                              scatter_gather: bool = False) -> float:
    """The tensor crossing a stage boundary: b x s x h activations; each TP rank sends 1/t of it when the
    tensor is split over the TP ranks (sequence parallelism, or Megatron's scatter/gather optimization,
    Narayanan et al. 2021, Sec. 4.1)."""
    return b * s * h * act_bytes / (t if scatter_gather else 1)
