"""What one `ftplan serve` request computes, in a worker process (ftplan/serve_pool.py): body -> answer bytes.

A body's fields are the CLI options of the same command, parsed by the command's own click parser (types,
choices, defaults and the number checks of ftplan/guard.py are the CLI's), and the answer is built by the
same function as `--json` (ftplan/answers.py). On top of the CLI's rules a request may not:
- name a file: `model` is a catalog name or alias, or `model_config` a pasted config.json; a path only with
  `ftplan serve --models-dir DIR`, then relative to DIR and resolved inside it (no `..`, no absolute paths, no
  symlink out of it); options that take a file (`--calibration`, ...) are CLI-only;
- ask for unbounded work: `REQUEST_BOUNDS` caps the GPU count, layers, sequence and scale's max_gpus.
A mistake is a `UserError` (422 with the one line the CLI prints after `ftplan: error: `).
"""

from __future__ import annotations

import inspect
import io
import json
import os
import tempfile
import time
import traceback
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import PlanError

# options that write files or change how the CLI prints: not request fields (POST /api/emit returns the files)
CLI_ONLY = {"json_out", "emit_dir", "force", "pick", "out"}
ENDPOINTS = ("estimate", "plan", "scale")
# a pasted config.json becomes the model `<tmp>/custom/config.json`: its folder name is the model's name
PASTED_MODEL_NAME = "custom"

# Work one request may ask for (the CLI's own bounds, planner/input_checks.py, are the domain's and wider).
# Planning time grows with scale's GPU counts (one full plan per count: 1, 2, 4, 8, then each whole node) and
# little with the rest; these keep the slowest request within the default timeout on a loaded 2-core machine.
REQUEST_BOUNDS: dict[str, int] = {
    "max_gpus": 512,  # scale: 67 GPU counts of 8-GPU nodes
    "gpus": 16_384,  # GPUs of --gpus (nodes x per node)
    "num_layers": 1_024,
    "seq_len": 2**20,
    "global_batch": 2**20,
    "micro_batch": 4_096,
    "grad_accum": 2**16,
    "top": 1_000,
    "pick": 100_000,
}


@dataclass(frozen=True)
class WorkSettings:
    """What every worker knows: the folder requests may name models in (None: no files at all)."""

    models_dir: Path | None = None


@dataclass(frozen=True)
class Job:
    endpoint: str  # estimate, plan, scale or emit
    body: dict[str, Any]
    base_dir: str  # the server's working directory: emitted files' paths point under it


class UserError(PlanError):
    """The request's mistake: answered 422 with this line."""


# ---------------------------------------------------------------- commands and options

def commands() -> dict[str, Any]:
    import typer

    from ftplan import cmd_plan, cmd_scale  # noqa: F401  (they add estimate, plan and scale to the app)
    from ftplan.app import app

    group = typer.main.get_command(app)
    return {name: group.commands[name] for name in ENDPOINTS}  # type: ignore[attr-defined]


def _takes_path(annotation: Any) -> bool:
    return annotation is Path or any(_takes_path(a) for a in typing.get_args(annotation))


def file_options(command: Any) -> set[str]:
    """Parameters of a command whose value is a file or folder: never read or written for a request."""
    # the signature typer reads (option groups make theirs: ftplan/options.py `grouped`)
    parameters = inspect.signature(command.callback).parameters
    return {name for name, p in parameters.items() if _takes_path(p.annotation)}


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
    """A JSON body as the command line the CLI would get; unknown, CLI-only and file fields are refused."""
    fields = _field_names(command)
    files = file_options(command)
    args: list[str] = []
    for key, value in body.items():
        if key in extra:
            continue
        param = fields.get(key)
        if param is None or param.name in CLI_ONLY:
            raise UserError(f"No such option: --{key.replace('_', '-')}")
        flag = param.opts[0]
        if param.name in files:
            raise UserError(f"{flag}: the server reads no files; options that name one are for the CLI")
        if value is None:
            continue
        if getattr(param, "is_flag", False):
            if not isinstance(value, bool):
                raise UserError(f"{flag}: expected true or false, got {json.dumps(value)}")
            if value:
                args.append(flag)
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not getattr(param, "multiple", False):
            raise UserError(f"{flag}: takes one value, got a list")
        if len(values) > 64:
            raise UserError(f"{flag}: at most 64 values")
        for v in values:
            if isinstance(v, dict | list):
                raise UserError(f"{flag}: expected a number or a string, got {json.dumps(v)[:60]}")
            args += [flag, json.dumps(v) if isinstance(v, bool) else str(v)]
    return args


def parse_params(command: Any, name: str, body: dict[str, Any], extra: set[str] = frozenset()) -> dict[str, Any]:
    """The body as the command's parsed options (its CLI defaults filled in), numbers checked as the CLI's."""
    from ftplan.guard import check_numbers

    ctx = command.make_context(name, body_to_args(command, body, extra))
    params = {k: v for k, v in ctx.params.items() if k not in CLI_ONLY}
    check_numbers(command, params)
    for key, value in params.items():
        bound = REQUEST_BOUNDS.get(key)
        if bound is not None and isinstance(value, int) and value > bound:
            raise UserError(f"--{key.replace('_', '-')} {value} is more than this server plans per request "
                            f"(at most {bound:,}; the CLI has no such limit)")
    return params


# ---------------------------------------------------------------- the model

def _catalog_key(name: str) -> str | None:
    from planner.model_catalog import ALIASES, HF_CONFIGS

    key = ALIASES.get(name.lower(), name.lower())
    return key if key in HF_CONFIGS else None


def _inside(models_dir: Path, name: str) -> Path:
    """`name` as a path inside `models_dir`: relative, no `..`, and after every symlink still inside it."""
    if "\x00" in name or os.path.isabs(name) or name.startswith("~"):
        raise UserError(f"model '{name[:80]}': name a model folder relative to the server's models folder")
    parts = Path(name).parts
    if ".." in parts:
        raise UserError(f"model '{name[:80]}': '..' is not allowed in a model path")
    root = models_dir.resolve()
    target = (root / name).resolve()
    # the file read is the folder's config.json when the name is a folder: it too must stay inside
    for path in (target, (target / "config.json").resolve() if target.is_dir() else target):
        if path != root and root not in path.parents:
            raise UserError(f"model '{name[:80]}' leads out of the server's models folder")
    if not target.exists():
        raise UserError(f"model '{name[:80]}' is neither in the catalog (ftplan models) nor in the server's "
                        "models folder")
    return target


def model_argument(body: dict[str, Any], tmp: Path, settings: WorkSettings) -> tuple[dict[str, Any], Any]:
    """The body with `model` as the CLI should read it (a catalog key, or a file path the server chose), and
    the model's spec, checked against REQUEST_BOUNDS."""
    from planner.models import from_path

    pasted = body.get("model_config")
    body = {k: v for k, v in body.items() if k != "model_config"}
    if pasted is not None:
        if not isinstance(pasted, dict):
            raise UserError("model_config must be a config.json object")
        if "model" in body:
            raise UserError("give either 'model' or 'model_config', not both")
        folder = tmp / PASTED_MODEL_NAME
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(pasted))
        spec, model = from_path(folder), str(folder)
    else:
        name = body.get("model")
        if not isinstance(name, str):
            return body, None  # missing or not a string: the command's parser says so, as the CLI does
        model, spec = named_model(name, settings)
    _check_layers(spec)
    return {**body, "model": model}, spec


def named_model(name: str, settings: WorkSettings, option: str = "model") -> tuple[str, Any]:
    """A model a request names (`model`, `reward_model`): a catalog key, or a path the server resolved inside
    --models-dir; and its spec. Anything else is refused without touching the file system."""
    from planner.models import from_name, from_path

    key = _catalog_key(name)
    if key is not None:
        return key, from_name(key)
    if settings.models_dir is not None:
        path = _inside(settings.models_dir, name)
        return str(path), from_path(path)
    if "/" in name or "\\" in name or name.endswith(".json") or name.startswith(".") or "\x00" in name:
        raise UserError(f"{option} '{name[:80]}': this server reads no files; name a catalog model"
                        + (", paste the config.json as model_config," if option == "model" else "")
                        + " or start the server with --models-dir DIR")
    from_name(name)  # the CLI's "unknown model ... did you mean" line
    raise AssertionError("unreachable")


def _check_layers(spec: Any) -> None:
    if spec.num_layers > REQUEST_BOUNDS["num_layers"]:
        raise UserError(f"model '{spec.name}' has {spec.num_layers:,} layers; this server plans at most "
                        f"{REQUEST_BOUNDS['num_layers']:,} per request")


def _reward_model(params: dict[str, Any], settings: WorkSettings) -> dict[str, Any]:
    """The online RL stages' `reward_model` names a model too: the same rule as `model`."""
    name = params.get("reward_model")
    if not name:
        return params
    model, spec = named_model(name, settings, option="--reward-model")
    _check_layers(spec)
    return {**params, "reward_model": model}


def _check_gpus(params: dict[str, Any]) -> None:
    from planner.gpus import parse_gpus

    if isinstance(params.get("gpus"), str):
        world = parse_gpus(params["gpus"]).world_size
        if world > REQUEST_BOUNDS["gpus"]:
            raise UserError(f"--gpus {params['gpus']}: {world:,} GPUs are more than this server plans per request "
                            f"(at most {REQUEST_BOUNDS['gpus']:,})")


def _local(text: str, tmp: Path, settings: WorkSettings) -> str:
    """An error line without the server's own paths: the pasted config's folder reads `model_config`."""
    text = text.replace(str(tmp / PASTED_MODEL_NAME / "config.json"), "model_config")
    text = text.replace(str(tmp / PASTED_MODEL_NAME), "model_config").replace(str(tmp), "the request")
    if settings.models_dir is not None:
        text = text.replace(str(settings.models_dir.resolve()) + os.sep, "")
    return text


# ---------------------------------------------------------------- answers

def answer(name: str, body: dict[str, Any], cmds: dict[str, Any], tmp: Path, settings: WorkSettings) -> dict:
    """What `ftplan NAME --json` prints for these options."""
    from ftplan import answers

    body, _ = model_argument(body, tmp, settings)
    params = _reward_model(parse_params(cmds[name], name, body), settings)
    _check_gpus(params)
    return answers.answer(name, params).json()


def _posted_plan(plan: Any, tmp: Path, settings: WorkSettings) -> Any:
    """A plan entry (from /api/plan or /api/estimate, or a plan.json) read as `ftplan emit PLAN.json` reads it
    (its model travels as fields; a reward model it names follows the rule of `named_model`)."""
    from planner.estimate import estimate
    from runner.emit import load_plan

    config = plan.get("config") if isinstance(plan, dict) else None
    if isinstance(config, dict) and isinstance(config.get("reward_model"), str) and config["reward_model"]:
        reward, _ = named_model(config["reward_model"], settings, option="reward_model")
        plan = {**plan, "config": {**config, "reward_model": reward}}
    file = tmp / "plan.json"
    file.write_text(json.dumps(plan))
    try:
        return estimate(load_plan(file))
    except PlanError as exc:
        raise UserError(str(exc).replace(str(file), "plan")) from None


def _picked_plan(body: dict[str, Any], tmp: Path, cmds: dict[str, Any], settings: WorkSettings) -> Any:
    from ftplan import answers

    pick = body.get("pick", 1)
    if not isinstance(pick, int) or isinstance(pick, bool) or pick < 1:
        raise UserError(f"--pick: expected a positive integer, got {json.dumps(pick)[:40]}")
    body, _ = model_argument(body, tmp, settings)
    params = _reward_model(parse_params(cmds["plan"], "plan", body, {"pick", "emit"}), settings)
    _check_gpus(params)
    result = answers.answer("plan", params).result
    if not result.plans:
        raise UserError("no plan fits, so there is nothing to --emit")
    if pick > len(result.plans):
        raise UserError(f"--pick {pick} is outside the {len(result.plans)} fitting plans (1..{len(result.plans)})")
    return result.plans[pick - 1]


def emit_zip(body: dict[str, Any], base_dir: str, cmds: dict[str, Any], tmp: Path,
             settings: WorkSettings) -> tuple[str, bytes]:
    """The files `ftplan emit` / `plan --emit DIR --pick N` write, as a zip holding the folder DIR (`emit`,
    default ftplan-emit). Either `plan` (a plan entry of /api/plan, or a plan.json) or plan's options with
    `pick`. Paths inside the files point at DIR under `base_dir`, the server's working directory."""
    from planner.input_checks import check_text
    from planner.validity import problems
    from runner.emit import render_files

    folder = body.get("emit", "ftplan-emit")
    if not isinstance(folder, str) or not folder or Path(folder).is_absolute() or ".." in Path(folder).parts:
        raise UserError(f"--emit: expected a relative folder name, got {json.dumps(folder)[:60]}")
    check_text(folder, "--emit", max_chars=200)
    if "plan" in body:
        if set(body) - {"plan", "emit"}:
            raise UserError("give either 'plan' (a plan entry) or the plan options with 'pick', not both")
        est = _posted_plan(body["plan"], tmp, settings)
    else:
        est = _picked_plan(body, tmp, cmds, settings)
    found = problems(est.config)
    if found:
        raise UserError(f"cannot emit an invalid plan: {found[0]}")
    buffer = io.BytesIO()
    now = time.localtime()[:6]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for file_name, text in render_files(est, Path(base_dir) / folder).items():
            info = zipfile.ZipInfo(f"{Path(folder).name}/{file_name}", date_time=now)
            info.external_attr = (0o755 if file_name.endswith(".sh") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, text)
    return f"{Path(folder).name}-{est.config}.zip", buffer.getvalue()


def handle(job: Job, cmds: dict[str, Any], settings: WorkSettings, scratch: Path) -> tuple[str, Any]:
    """One job -> ("json", bytes) | ("zip", (file name, bytes)) | ("user", line) | ("bug", traceback text).
    `scratch` is a folder of the worker's own; each request gets a fresh folder inside it."""
    from ftplan.errors import error_line

    with tempfile.TemporaryDirectory(prefix="request-", dir=scratch) as name:
        tmp = Path(name)
        try:
            if job.endpoint == "emit":
                return "zip", emit_zip(job.body, job.base_dir, cmds, tmp, settings)
            data = answer(job.endpoint, job.body, cmds, tmp, settings)
            return "json", json.dumps(data, allow_nan=False).encode()
        except MemoryError:
            return "user", "the request needs more memory than this server gives one request"
        except Exception as exc:
            line = error_line(exc)
            if line is None:
                return "bug", "".join(traceback.format_exception(exc))
            return "user", _local(line, tmp, settings)
