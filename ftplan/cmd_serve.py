"""`ftplan serve`: the planner as a local web page and JSON API (needs the `serve` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftplan.app import app

HostOpt = Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")]
PortOpt = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]
ModelsDirOpt = Annotated[Path | None, typer.Option(
    "--models-dir", help="A folder of model folders / config.json files that requests may name by relative path "
                         "(default: requests name catalog models or paste a config.json; no file is read).")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", min=1, max=64, help="Planning processes (default: one per core, at most 8).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=1.0, max=3600.0, help="Seconds a request may plan before it is stopped (HTTP 504).")]
MaxWaitingOpt = Annotated[int, typer.Option(
    "--max-waiting", min=1, max=100_000, help="Requests that may wait for a free worker; more get HTTP 503.")]
CorsOpt = Annotated[list[str] | None, typer.Option(
    "--cors-origin", help="Let pages from this origin (e.g. http://localhost:3000) call the API (repeat); "
                          "default none.")]


def _listening_socket(host: str, port: int):
    """The server's socket, bound here so that a taken port is one line and exit 2, not uvicorn's exit 3."""
    import errno
    import socket

    from planner.errors import PlanError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise PlanError(f"--host {host!r}: not an address this machine can listen on ({exc})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT does not block
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = "; another server uses it: pick a free one with --port" if exc.errno == errno.EADDRINUSE else ""
        raise PlanError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(host: HostOpt = "127.0.0.1", port: PortOpt = 8000, models_dir: ModelsDirOpt = None,
          workers: WorkersOpt = None, timeout: TimeoutOpt = 60.0, max_waiting: MaxWaitingOpt = 256,
          cors_origin: CorsOpt = None) -> None:
    """Web page and JSON API: POST /api/plan, /api/estimate, /api/scale, /api/emit; GET /api/models, /api/gpus."""
    from planner.errors import PlanError

    try:
        import uvicorn

        from ftplan.serve import LOOPBACK_HOSTS, ServeSettings, create_app
    except ModuleNotFoundError as exc:
        raise PlanError(f"ftplan serve needs the serve extra ({exc.name} is missing): "
                        "pip install -e '.[serve]'") from None
    if models_dir is not None and not models_dir.is_dir():
        raise PlanError(f"--models-dir {models_dir}: not a folder")
    settings = ServeSettings(
        models_dir=models_dir.resolve() if models_dir is not None else None, timeout_s=timeout,
        max_waiting=max_waiting, cors_origins=tuple(cors_origin or ()),
        # on loopback only this machine's names may reach the API: a DNS-rebinding page cannot
        allowed_hosts=(*LOOPBACK_HOSTS, host) if _loopback(host) else None,
        **({"workers": workers} if workers is not None else {}))
    sock = _listening_socket(host, port)
    print(f"ftplan serve: http://{host}:{port}/  (API: /api/plan, /api/estimate, /api/scale, /api/emit, "
          f"/api/models, /api/gpus; docs: /api/docs; {settings.workers} planning workers)", flush=True)
    config = uvicorn.Config(create_app(settings), log_level="warning", timeout_graceful_shutdown=3,
                            timeout_keep_alive=5,
                            limit_concurrency=settings.max_waiting + settings.workers + 64)
    uvicorn.Server(config).run(sockets=[sock])
