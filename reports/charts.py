"""PNG charts with matplotlib's Agg backend (no display needed), imported only when a chart is drawn."""

from __future__ import annotations

from pathlib import Path

from planner.scaling import ScaleResult


def scaling_chart_png(result: ScaleResult, path: Path, *, title: str) -> None:
    """tokens/s against GPU count with the ideal (linear from the baseline) line, and the efficiency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in result.points if p.best is not None and p.best.time is not None]
    fig, (ax, ax_eff) = plt.subplots(1, 2, figsize=(11, 4.2))
    if points:
        xs = [p.gpus for p in points]
        ys = [p.best.time.tokens_per_s for p in points]
        base_n, base_y = xs[0], ys[0]
        ax.plot(xs, ys, "o-", label="planned")
        ax.plot(xs, [base_y * x / base_n for x in xs], "--", color="grey", label="linear")
        ax.set_yscale("log")
        effs = [100 * (p.efficiency or 0.0) for p in points]
        ax_eff.plot(xs, effs, "o-", color="tab:green")
        ax_eff.axhline(100, color="grey", linestyle="--", linewidth=1)
        ax_eff.set_ylim(0, max(110.0, 1.1 * max(effs)))  # above 100%: the baseline needed a slower plan to fit
        for axis in (ax, ax_eff):
            axis.set_xscale("log", base=2)
            axis.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("GPUs")
    ax.set_ylabel("tokens/s (job)")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    ax_eff.set_xlabel("GPUs")
    ax_eff.set_ylabel("scaling efficiency (%)")
    ax_eff.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
