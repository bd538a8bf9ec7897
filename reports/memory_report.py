"""Rich renderables for one estimate: the memory breakdown with a bar per category."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from planner.estimate import Estimate
from planner.memory import CATEGORIES
from reports.fit import Bar
from reports.fmt import gib, params

_COLORS = {"weights": "cyan", "gradients": "magenta", "optimizer": "yellow", "activations": "green",
           "other": "bright_black"}


def memory_table(est: Estimate, title: str | None = None) -> Table:
    mem = est.memory
    total = mem.total
    table = Table(title=title or f"Memory per GPU at the {mem.phase} peak: {est.config}", title_justify="left")
    table.add_column("category")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    values = {"weights": mem.weights, "gradients": mem.gradients, "optimizer": mem.optimizer,
              "activations": mem.activations, "other": mem.other}
    for cat in CATEGORIES:
        share = values[cat] / total if total else 0.0
        table.add_row(cat, gib(values[cat]).removesuffix(" GiB"), f"{100 * share:.0f}%",
                      Bar(share, 40, style=_COLORS[cat]))
    for name, value in mem.other_items.items():
        if value >= 2**20:
            table.add_row(Text(f"  {name}", style="dim"), Text(f"{value / 2**30:,.2f}", style="dim"), "", "")
    cap = est.gpu_memory_bytes
    table.add_row(Text("total", style="bold"), Text(f"{total / 2**30:,.2f}", style="bold"),
                  f"{100 * total / cap:.0f}% of {cap / 2**30:.0f}", "")
    return table


def readings_line(est: Estimate) -> Text:
    """The three readings a GPU run reports: max_memory_allocated, max_memory_reserved, nvidia-smi."""
    mem = est.memory
    return Text(f"readings per GPU: allocated {gib(mem.allocated)}, reserved {gib(mem.reserved)}, "
                f"device (nvidia-smi) {gib(mem.device)}; the fit needs {gib(mem.fit_bytes)}")


def estimate_view(est: Estimate) -> Group:
    cfg = est.config
    head = Text.assemble(
        (f"{cfg.model.name}", "bold"), f" on {cfg.cluster}  ", (cfg.method.value, "bold"),
        f"  params {params(est.params_total)}, trainable {params(est.params_trainable)}  ",
        ("fits" if est.fits else "does NOT fit", "green" if est.fits else "red bold"),
        (" (tight: above 90% of the GPU)" if est.tight else "", "yellow bold"))
    parts = [head, memory_table(est), readings_line(est)]
    if est.memory.host_bytes:
        parts.append(Text(f"host memory for offload: {gib(est.memory.host_bytes)} per node"))
    if est.memory.nvme_bytes:
        parts.append(Text(f"NVMe for offload: {gib(est.memory.nvme_bytes)} per node"))
    for reason in est.fit_reasons:
        parts.append(Text(f"✗ {reason}", style="red"))
    parts += note_lines(cfg)
    return Group(*parts)


def note_lines(*cfgs) -> list[Text]:
    """What the plans say about the defaults ftplan chose for them (planner/notes.py: LoRA targets and dropout peft
    can run, the attention transformers picks), each note once."""
    from planner.notes import plan_notes

    return [Text(note, style="yellow") for note in dict.fromkeys(n for cfg in cfgs for n in plan_notes(cfg))]


def limit_line(lim) -> Text:
    """--solve's answer (planner.limits.Limit): the value that fits, and what one step more needs."""
    what = "longest sequence" if lim.knob.value == "seq-len" else "largest micro-batch"
    unit = "tokens" if lim.knob.value == "seq-len" else "sequences"
    if lim.value is None:
        return Text(f"{what} that fits: none (at 1 it needs {gib(lim.above.memory.fit_bytes)} per GPU)", style="red")
    out = Text.assemble((f"{what.capitalize()} that fits: {lim.value:,} {unit}", "bold"),
                        f" ({gib(lim.at_value.memory.fit_bytes)} needed per GPU")
    if lim.above is not None:
        out.append(f"; at {lim.value + lim.step:,}: {gib(lim.above.memory.fit_bytes)}, does not fit)")
    else:
        out.append(f"; bounded by {lim.bound})")
    return out
