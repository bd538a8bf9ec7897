"""`ftplan serve`: the planner as a JSON API and one web page (FastAPI; the `serve` extra).

A request body's fields are the CLI options of the same command (`seq_len` or `seq-len` for `--seq-len`,
`all` for `--all`, `method` as a list for `plan`), parsed by the command's own click parser and answered by
the same function as `--json` (ftplan/serve_work.py, ftplan/answers.py). A mistake answers 422 with the one
line the CLI prints after `ftplan: error: `.

What any web page, script or scanner can send is bounded here:
- POST bodies must be `application/json` (415 otherwise: a page elsewhere cannot send one without a CORS
  preflight, which this server does not answer unless `--cors-origin` names that page's origin), at most
  `max_body_bytes` (413), arriving within `timeout_s` (408), strict JSON (no NaN, no 1e999, bounded nesting);
- with `allowed_hosts` (the loopback names when `ftplan serve` listens on loopback), a request whose Host
  header names another machine is refused (400): a DNS-rebinding page cannot reach the API;
- planning runs in worker processes (ftplan/serve_pool.py), never on the event loop: the page and the
  catalogs answer while requests plan; each request has a deadline (504), an abandoned one is stopped, and
  when every worker is busy and `max_waiting` requests wait, the next is told so at once (503);
- the request may not name files or ask for unbounded work (ftplan/serve_work.py: REQUEST_BOUNDS);
- an internal error answers 500 with a line saying it is a bug; the traceback goes to the server's log only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftplan.errors import error_line
from ftplan.serve_pool import PoolError, PoolSettings, WorkerPool, default_workers
from ftplan.serve_work import ENDPOINTS, Job, WorkSettings
from planner.errors import PlanError

log = logging.getLogger("ftplan.serve")

_WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
# loopback names a browser puts in the Host header for this machine
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
BUG = "internal error: a bug in ftplan, not a problem with the request; the server's log has the traceback"


@dataclass(frozen=True)
class ServeSettings:
    """Everything `ftplan serve`'s options decide."""

    models_dir: Path | None = None  # the only folder requests may name models in (None: no files at all)
    workers: int = field(default_factory=default_workers)
    timeout_s: float = 60.0  # per request, waiting for a worker and planning each
    max_waiting: int = 256  # requests waiting for a worker before the next is answered 503
    max_body_bytes: int = 2**20  # a config.json or a plan entry is a few KiB
    memory_limit_bytes: int | None = 4 * 2**30  # address space of one worker process
    allowed_hosts: tuple[str, ...] | None = None  # Host headers accepted (None: any)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (none unless asked)

    def pool(self) -> PoolSettings:
        return PoolSettings(workers=self.workers, timeout_s=self.timeout_s, max_waiting=self.max_waiting,
                            memory_limit_bytes=self.memory_limit_bytes,
                            work=WorkSettings(models_dir=self.models_dir))


class RequestError(Exception):
    """A request answered with `status` and a one-line `detail`."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _web_file(name: str) -> str:
    return resources.files("ftplan").joinpath("web", name).read_text(encoding="utf-8")


async def read_json_body(request: Request, limit_bytes: int, timeout_s: float) -> dict[str, Any]:
    """The body as a JSON object: application/json, at most `limit_bytes`, within `timeout_s`."""
    from planner.input_files import JSONInputError, parse_json

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError(415, "send the body as JSON with the header Content-Type: application/json")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit_bytes):
        raise RequestError(413, f"the request body is larger than {limit_bytes:,} bytes")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit_bytes:
                raise RequestError(413, f"the request body is larger than {limit_bytes:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout_s:g} s") from None
    try:
        body = parse_json(raw or b"{}", what="the request body")
    except JSONInputError as exc:
        raise RequestError(422, f"the request body is not valid JSON ({exc.reason})") from None
    if not isinstance(body, dict):
        raise RequestError(422, "the request body must be a JSON object of the command's options")
    return body


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    from ftplan.answers import gpus_json, models_json

    settings = settings or ServeSettings()
    pool = WorkerPool(settings.pool())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(pool.start)
        try:
            yield
        finally:
            await asyncio.to_thread(pool.close)

    app = FastAPI(title="ftplan", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json",
                  lifespan=lifespan)
    app.state.pool = pool
    app.state.settings = settings
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    if settings.allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))

    # the answers that never change, made once: GET requests cost the event loop nothing
    catalogs = {"models": json.dumps(models_json()).encode(), "gpus": json.dumps(gpus_json()).encode()}
    pages = {name: _web_file(name) for name in _WEB_FILES}

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(PlanError)
    async def _user_error(request: Request, exc: PlanError) -> JSONResponse:
        return JSONResponse({"detail": error_line(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": "the request body must be a JSON object of the command's options"},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # a bug, not the user's mistake: logged with its traceback here (and by uvicorn), never sent
        log.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": BUG}, status_code=500)

    async def _work(request: Request, endpoint: str) -> tuple[str, Any]:
        body = await read_json_body(request, settings.max_body_bytes, settings.timeout_s)
        job = Job(endpoint=endpoint, body=body, base_dir=os.getcwd())
        try:
            kind, payload = await pool.run(job, request.is_disconnected)
        except PoolError as exc:
            if exc.status == 500:
                log.error("a worker died while answering %s %s", request.method, request.url.path)
                raise RequestError(500, BUG) from None
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            raise RequestError(exc.status, exc.detail, headers) from None
        if kind == "user":
            raise RequestError(422, payload)
        if kind == "bug":
            log.error("internal error answering %s %s:\n%s", request.method, request.url.path, payload)
            raise RequestError(500, BUG)
        return kind, payload

    for name in ENDPOINTS:
        async def endpoint(request: Request, _name: str = name) -> Response:
            _, data = await _work(request, _name)
            return Response(data, media_type="application/json")

        app.add_api_route(f"/api/{name}", endpoint, methods=["POST"], name=name,
                          summary=f"What `ftplan {name} --json` prints; the body's fields are its options.")

    @app.post("/api/emit", summary="The files `plan --emit` writes, as a zip (fields: plan's options, pick, emit).")
    async def emit(request: Request) -> Response:
        _, (filename, data) = await _work(request, "emit")
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/api/models", summary="What `ftplan models --json` prints.")
    async def models() -> Response:
        return Response(catalogs["models"], media_type="application/json")

    @app.get("/api/gpus", summary="What `ftplan gpus --json` prints.")
    async def gpus() -> Response:
        return Response(catalogs["gpus"], media_type="application/json")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(pages["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in _WEB_FILES:
            return JSONResponse({"detail": f"no such file: {name[:80]}"}, status_code=404)
        return Response(pages[name], media_type=_WEB_FILES[name], headers={"Cache-Control": "no-cache"})

    return app

