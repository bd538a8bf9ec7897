"""`ftplan scale`: the best plan and its speed at 1, 2, 4, 8 GPUs, then whole nodes."""

from __future__ import annotations

from typing import Annotated

from rich.console import Console

from ftplan import options as o
from ftplan.app import app
from planner.options import Options, ScaleArgs

# the GPU count varies (ScaleArgs), so --gpus is not shown; one method, the search's global batch
SCALE = o.expose(target=("model", "rope_scaling", "stage"),
                 adapter=("method", "lora_r", "lora_alpha", "lora_targets", "lora_dropout", "precision"),
                 strategy=("seq_len", "fsdp_version"), switches=o.ALL, rollout=o.ALL, search=("global_batch",),
                 limits=o.ALL, sources=True)


@app.command()
@o.grouped
def scale(opts: Annotated[Options, SCALE], scale_args: ScaleArgs, out: o.ScaleOutput) -> None:
    """Speedup and scaling efficiency against GPU count; writes a PNG chart and a JSON file to --out."""
    import json

    from ftplan.answers import scale_answer
    from planner.atomic import atomic_files
    from reports.charts import scaling_chart_png
    from reports.scale_report import scale_view

    answer = scale_answer(opts, scale_args)
    method = answer.method
    data = answer.json()
    stem = f"scale-{answer.model}-{answer.gpu}-{method.value}"
    names = [f"{stem}.png", f"{stem}.json"]
    with atomic_files(out.out, names, force=out.force) as stage_dir:
        scaling_chart_png(answer.result, stage_dir / names[0], title=f"{answer.model} {method.value} on {answer.gpu}")
        (stage_dir / names[1]).write_text(json.dumps(data, indent=2) + "\n")
    if out.json_out:
        from reports.fmt import print_json

        print_json(data)
        return
    Console().print(scale_view(answer.result, model=answer.model, gpu=answer.gpu, method=method.value,
                               files=[str(out.out / n) for n in names]))
    if answer.fit is not None:
        from reports.fit_report import device_fit_line

        Console().print(device_fit_line(answer.fit))
