"""`--from FILE`: a user's own training setup (LLaMA-Factory or axolotl YAML, TrainingArguments JSON,
ds_config.json, accelerate config) read into the options object. The files are read here (YAML parsed with
yaml.safe_load); which option each key sets is planner/setup_files.py. Flags given on the command line win
over the files; the files win over the command's defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from planner.options import Options, from_flat, to_flat
from planner.setup_files import Reading, combine, deepspeed, freeze_layers_for, packing_problem, read, rope_for

MAX_BYTES = 1 << 20  # a training setup is a few KiB; anything larger is not one


def load(path: Path) -> dict[str, Any]:
    """A setup file's mapping: a regular file of at most MAX_BYTES, JSON or YAML (safe_load)."""
    try:
        if not path.is_file():
            raise PlanError(f"--from {path}: no such file" if not path.exists() else f"--from {path}: not a file")
        if path.stat().st_size > MAX_BYTES:
            raise PlanError(f"--from {path}: larger than {MAX_BYTES // 1024} KiB, not a training setup")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"--from {path}: cannot read it ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"--from {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise PlanError(f"--from {path}: not valid YAML{line}") from None
    if not isinstance(data, dict):
        raise PlanError(f"--from {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _referenced(path: Path, name: str) -> Path:
    """A config a setup names (`deepspeed: examples/deepspeed/ds_z3_config.json`): as the tool resolves it, from
    the directory it is started in, else beside the setup file."""
    target = Path(name).expanduser()
    if target.is_absolute() or target.exists():
        return target
    beside = path.parent / target
    return beside if beside.exists() else target


def readings(paths: list[Path]) -> list[Reading]:
    out: list[Reading] = []
    for path in paths:
        reading = read(load(path), path.name, path.suffix.lower(), lambda s: Path(s).expanduser().exists())
        out.append(reading)
        for kind, ref in reading.references:
            if kind != "deepspeed":
                continue
            if isinstance(ref, dict):
                out.append(deepspeed(ref, f"{path.name} (deepspeed)"))
            else:
                ds_path = _referenced(path, str(ref))
                if not ds_path.exists():
                    raise PlanError(f"{path.name}: deepspeed: {ref} does not exist (looked in the current directory "
                                    f"and beside {path.name})")
                out.append(deepspeed(load(ds_path), ds_path.name))
    return out


_ENGINE = ("zero", "fsdp", "offload", "offload_device", "fsdp_version")


def apply(opts: Options, paths: list[Path], explicit: set[str]) -> Options:
    """`opts` with what the files set, except options given explicitly (`explicit`: their names)."""
    from planner.choices import Attn
    from planner.gpus import parse_gpus
    from planner.models import resolve
    from planner.validity import default_attn

    found = readings(paths)
    values, _ = combine(found)
    if explicit & {"zero", "fsdp"}:  # an engine named on the command line replaces the file's whole choice
        values = {k: v for k, v in values.items() if k not in _ENGINE or k in explicit}
    if "method" in explicit and "quant" not in explicit:
        values.pop("quant", None)
    flat = to_flat(opts)
    flat.update({k: v for k, v in values.items() if k not in explicit})
    # what plan / tune / scale search is what the setup fixes: its method, attention and global batch
    if "method" in values and "methods" not in explicit:
        flat["methods"] = [flat["method"]]
    if "attn" in values and "attns" not in explicit:
        flat["attns"] = flat["attn"].value
    if ("micro_batch" in values or "grad_accum" in values) and "global_batch" not in explicit and flat["gpus"]:
        dp = parse_gpus(flat["gpus"]).world_size // max(1, flat["tp"] * flat["pp"])
        flat["global_batch"] = flat["micro_batch"] * flat["grad_accum"] * max(1, dp)
    if flat["model"] is None:
        problem = next(((r.source, r.model_problem) for r in found if r.model_problem), None)
        if problem is not None:
            raise PlanError(f"{problem[0]}: {problem[1]}")
    # an attention neither the files nor the command line name: what transformers picks for the model
    attn = flat["attn"] if flat["attn"] is not None or not flat["model"] else default_attn(resolve(flat["model"]))
    for reading in found:  # a setup that packs documents: --doc-len beside it, or none (planner/setup_files.py)
        problem = packing_problem(reading.pending, reading.source, doc_len_given="doc_len" in explicit,
                                  attn=attn or Attn.sdpa, micro_batch=flat["micro_batch"], seq_len=flat["seq_len"])
        if problem is not None:
            raise PlanError(problem)
    pending = {k: v for r in found for k, v in r.pending.items()}
    source = found[0].source
    if pending and flat["model"]:
        spec = resolve(flat["model"])
        if "trainable_layers" in pending and "freeze_layers" not in explicit:
            flat["freeze_layers"] = freeze_layers_for(pending["trainable_layers"], spec.num_layers, source)
        if "rope_type" in pending and "rope_scaling" not in explicit:
            flat["rope_scaling"] = rope_for(pending["rope_type"], flat["seq_len"], spec.max_seq_len)
    built, _ = from_flat(Options, flat)
    return built


def note(paths: list[Path]) -> str:
    """The line that says what --from read (printed on stderr, beside --json's clean stdout)."""
    return "read " + ", ".join(f"{r.source} ({r.kind})" for r in readings(paths))
