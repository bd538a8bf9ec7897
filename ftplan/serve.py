"""`ftplan serve`: the planner as a JSON API and one web page (FastAPI; the `serve` extra).

A request body's fields are the CLI options of the same command (`seq_len` or `seq-len` for `--seq-len`,
`all` for `--all`, `method` as a list for `plan`). They are parsed by the command's own click parser, so
types, choices, ranges and defaults are the CLI's, and the answer is built by the same function as
`--json` (ftplan/answers.py). A mistake answers 422 with the one line the CLI prints after `ftplan: error: `.
Nothing is shared between requests but read-only catalogs (and a lock around option parsing, which typer
does not make thread-safe); a pasted config.json lives in a temporary
folder of its own request.
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
import time
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ftplan.errors import error_line
from planner.errors import PlanError

# options that write files or change how the CLI prints: not request fields (POST /api/emit returns the files)
_CLI_ONLY = {"json_out", "emit_dir", "force", "pick", "out"}
_WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
# a pasted config.json becomes the model `<tmp>/custom/config.json`: its folder name is the model's name
PASTED_MODEL_NAME = "custom"


def _commands() -> dict[str, Any]:
    import typer

    from ftplan import cmd_plan, cmd_scale  # noqa: F401  (they add estimate, plan and scale to the app)
    from ftplan.app import app

    group = typer.main.get_command(app)
    return {name: group.commands[name] for name in ("estimate", "plan", "scale")}  # type: ignore[attr-defined]


def _field_names(command: Any) -> dict[str, Any]:
    """Request field -> click parameter: the Python name and every option name without dashes."""
    out: dict[str, Any] = {}
    for param in command.params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("--"):
                out[opt[2:]] = param
                out[opt[2:].replace("-", "_")] = param
        out[param.name] = param
    return out


def body_to_args(command: Any, body: dict[str, Any], extra: set[str] = frozenset()) -> list[str]:
    """A JSON body as the command line the CLI would get; unknown and CLI-only fields are refused."""
    fields = _field_names(command)
    args: list[str] = []
    for key, value in body.items():
        if key in extra:
            continue
        param = fields.get(key)
        if param is None or param.name in _CLI_ONLY:
            raise PlanError(f"No such option: --{key.replace('_', '-')}")
        flag = param.opts[0]
        if value is None:
            continue
        if getattr(param, "is_flag", False):
            if not isinstance(value, bool):
                raise PlanError(f"{flag}: expected true or false, got {json.dumps(value)}")
            if value:
                args.append(flag)
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not getattr(param, "multiple", False):
            raise PlanError(f"{flag}: takes one value, got a list")
        for v in values:
            if isinstance(v, dict | list):
                raise PlanError(f"{flag}: expected a number or a string, got {json.dumps(v)}")
            args += [flag, json.dumps(v) if isinstance(v, bool) else str(v)]
    return args


# typer's option parsing builds pydantic adapters inside a context manager that sets and deletes an
# environment variable (typer/_adapters.py disabled_pydantic_plugins): two threads parsing at once raise
# KeyError. Parsing takes microseconds; the planning after it runs concurrently.
_PARSE_LOCK = threading.Lock()


def _params(command: Any, name: str, body: dict[str, Any], extra: set[str] = frozenset()) -> dict[str, Any]:
    args = body_to_args(command, body, extra)
    with _PARSE_LOCK:
        ctx = command.make_context(name, args)
    return {k: v for k, v in ctx.params.items() if k not in _CLI_ONLY}


def _with_pasted_model(body: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """`model_config` (a config.json object) becomes the model, read by the CLI's own config reader."""
    pasted = body.get("model_config")
    if pasted is None:
        return body
    if not isinstance(pasted, dict):
        raise PlanError("model_config must be a config.json object")
    folder = tmp / PASTED_MODEL_NAME
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(pasted))
    return {**{k: v for k, v in body.items() if k != "model_config"}, "model": str(folder)}


def answer(name: str, body: dict[str, Any], commands: dict[str, Any]) -> dict[str, Any]:
    """What `ftplan NAME --json` prints for these options."""
    from ftplan import answers

    with tempfile.TemporaryDirectory(prefix="ftplan-serve-") as tmp:
        params = _params(commands[name], name, _with_pasted_model(body, Path(tmp)), {"model_config"})
        try:
            return answers.answer(name, params).json()
        except PlanError as exc:
            raise PlanError(str(exc).replace(str(Path(tmp) / PASTED_MODEL_NAME), "model_config")) from None


def _posted_plan(plan: Any, tmp: Path) -> Any:
    """A plan entry (from /api/plan or /api/estimate, or a plan.json) read as `ftplan emit PLAN.json` reads it."""
    from planner.estimate import estimate
    from runner.emit import load_plan

    file = tmp / "plan.json"
    file.write_text(json.dumps(plan))
    try:
        return estimate(load_plan(file))
    except PlanError as exc:
        raise PlanError(str(exc).replace(str(file), "plan")) from None


def _picked_plan(body: dict[str, Any], pick: Any, tmp: Path, commands: dict[str, Any]) -> Any:
    from ftplan import answers

    if not isinstance(pick, int) or isinstance(pick, bool) or pick < 1:
        raise PlanError(f"--pick: expected a positive integer, got {json.dumps(pick)}")
    params = _params(commands["plan"], "plan", _with_pasted_model(body, tmp), {"model_config", "pick", "emit"})
    result = answers.answer("plan", params).result
    if not result.plans:
        raise PlanError("no plan fits, so there is nothing to --emit")
    if pick > len(result.plans):
        raise PlanError(f"--pick {pick} is outside the {len(result.plans)} fitting plans (1..{len(result.plans)})")
    return result.plans[pick - 1]


def emit_zip(body: dict[str, Any], commands: dict[str, Any]) -> tuple[str, bytes]:
    """The files `ftplan emit` / `plan --emit DIR --pick N` write, as a zip holding the folder DIR (`emit`,
    default ftplan-emit). Either `plan` (a plan entry of /api/plan, or a plan.json) or plan's options with
    `pick`. Paths inside the files point at DIR under the directory `ftplan serve` was started in."""
    from planner.validity import problems
    from runner.emit import render_files

    folder = body.get("emit", "ftplan-emit")
    if not isinstance(folder, str) or not folder or Path(folder).is_absolute() or ".." in Path(folder).parts:
        raise PlanError(f"--emit: expected a relative folder name, got {json.dumps(folder)}")
    with tempfile.TemporaryDirectory(prefix="ftplan-serve-") as tmp:
        if "plan" in body:
            if set(body) - {"plan", "emit"}:
                raise PlanError("give either 'plan' (a plan entry) or the plan options with 'pick', not both")
            est = _posted_plan(body["plan"], Path(tmp))
        else:
            est = _picked_plan(body, body.get("pick", 1), Path(tmp), commands)
    found = problems(est.config)
    if found:
        raise PlanError(f"cannot emit an invalid plan: {found[0]}")
    buffer = io.BytesIO()
    now = time.localtime()[:6]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for file_name, text in render_files(est, Path(folder)).items():
            info = zipfile.ZipInfo(f"{Path(folder).name}/{file_name}", date_time=now)
            info.external_attr = (0o755 if file_name.endswith(".sh") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text)
    return f"{Path(folder).name}-{est.config}.zip", buffer.getvalue()


def _web_file(name: str) -> str:
    return resources.files("ftplan").joinpath("web", name).read_text(encoding="utf-8")


def create_app() -> FastAPI:
    from ftplan.answers import gpus_json, models_json

    commands = _commands()
    app = FastAPI(title="ftplan", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")

    from typer._click.exceptions import ClickException

    async def _user_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": error_line(exc)}, status_code=422)

    app.add_exception_handler(PlanError, _user_error)
    app.add_exception_handler(ClickException, _user_error)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # a bug, not the user's mistake: answered, logged with its traceback by uvicorn, and the server goes on
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": "the request body must be a JSON object of the command's options"},
                            status_code=422)

    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PlanError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise PlanError("the request body must be a JSON object of the command's options")
        return body

    def _run(name: str, body: dict[str, Any]) -> dict[str, Any]:
        return answer(name, body, commands)

    for name in ("estimate", "plan", "scale"):
        async def endpoint(request: Request, _name: str = name) -> JSONResponse:
            from starlette.concurrency import run_in_threadpool

            return JSONResponse(await run_in_threadpool(_run, _name, await _body(request)))

        app.add_api_route(f"/api/{name}", endpoint, methods=["POST"], name=name,
                          summary=f"What `ftplan {name} --json` prints; the body's fields are its options.")

    @app.post("/api/emit", summary="The files `plan --emit` writes, as a zip (fields: plan's options, pick, emit).")
    async def emit(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        filename, data = await run_in_threadpool(emit_zip, await _body(request), commands)
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/api/models", summary="What `ftplan models --json` prints.")
    def models() -> JSONResponse:
        return JSONResponse(models_json())

    @app.get("/api/gpus", summary="What `ftplan gpus --json` prints.")
    def gpus() -> JSONResponse:
        return JSONResponse(gpus_json())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(_web_file("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _WEB_FILES:
            return JSONResponse({"detail": f"no such file: {name}"}, status_code=404)
        return Response(_web_file(name), media_type=_WEB_FILES[name], headers={"Cache-Control": "no-cache"})

    return app
