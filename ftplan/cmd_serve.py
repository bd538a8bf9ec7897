"""`ftplan serve`: the planner as a local web page and JSON API (needs the `serve` extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from ftplan.app import app

HostOpt = Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")]
PortOpt = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]


@app.command()
def serve(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """Web page and JSON API: POST /api/plan, /api/estimate, /api/scale, /api/emit; GET /api/models, /api/gpus."""
    from planner.errors import PlanError

    try:
        import uvicorn

        from ftplan.serve import create_app
    except ModuleNotFoundError as exc:
        raise PlanError(f"ftplan serve needs the serve extra ({exc.name} is missing): "
                        "pip install -e '.[serve]'") from None
    print(f"ftplan serve: http://{host}:{port}/  (API: /api/plan, /api/estimate, /api/scale, /api/emit, "
          "/api/models, /api/gpus; docs: /api/docs)", flush=True)
    uvicorn.run(create_app(), host=host, port=port, log_level="warning")
