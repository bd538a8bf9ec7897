"""Write every file a plan needs, atomically, and read plan.json back.

`emit` writes plan.json (the whole estimate, `planner.estimate.estimate_to_dict`, plus the batch arithmetic),
ds_config.json and ds_config.trainer.json (DeepSpeed plans), bnb_config.json (QLoRA plans), accelerate.yaml,
launch.sh and llamafactory.yaml into a directory: all or nothing (`planner.atomic.atomic_files`), never over existing
files unless `force`. `load_plan` turns plan.json back into a validated TrainConfig for every command.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import yaml

from planner.configs.accelerate_config import build_accelerate_config
from planner.configs.ds_config import build_ds_config
from planner.errors import PlanError
from planner.estimate import Estimate, estimate, estimate_to_dict
from planner.input_checks import MAX_GPUS, check_int, one_line
from planner.input_files import JSONInputError, parse_json, read_bytes_file
from planner.serialize import config_from_dict
from planner.strategy import Engine, TrainConfig
from planner.validity import problems
from runner import launch as ln
from runner import switches
from runner.llamafactory import build_llamafactory_config
from runner.llamafactory import notes as llamafactory_notes
from runner.quant import BNB_CONFIG_FILE, bnb_config_dict
from runner.stages.rl_files import FILE_ROLES as RL_FILE_ROLES
from runner.stages.rl_files import VERL_SCRIPT, rl_files

PLAN_FORMAT = "ftplan-plan/1"


def plan_dict(est: Estimate) -> dict[str, Any]:
    cfg = est.config
    return {"format": PLAN_FORMAT, **estimate_to_dict(est),
            # stated explicitly so that an edit to one of them is caught on load
            "world_size": cfg.world_size, "dp": cfg.dp, "global_batch": cfg.global_batch}


def _model_path(cfg: TrainConfig) -> str:
    """Where LLaMA-Factory should load the model: the directory of a local config.json, else the name."""
    source = cfg.model.source
    if source and not source.startswith("catalog:"):
        return str(Path(source).parent if source.endswith(".json") else Path(source))
    return cfg.model.name


def _yaml(data: dict[str, Any], header: list[str]) -> str:
    # comments are ftplan's own words; one_line keeps any text from the plan on its comment line
    head = "".join(f"# {one_line(line)}\n" for line in header)
    return head + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def render_files(est: Estimate, out_dir: Path) -> dict[str, str]:
    """File name -> text, in the order they are listed. Paths inside the files are absolute where the tool
    resolves them against its working directory (accelerate, LLaMA-Factory)."""
    cfg = est.config
    where = Path(out_dir).resolve()
    files = {ln.PLAN_FILE: _json(plan_dict(est))}
    if cfg.engine is Engine.deepspeed:
        files[ln.DS_CONFIG_FILE] = _json(build_ds_config(cfg))
        files[ln.DS_TRAINER_CONFIG_FILE] = _json(build_ds_config(cfg, for_trainer=True))
    accelerate = build_accelerate_config(cfg, ds_config_file=str(where / ln.DS_CONFIG_FILE))
    files[ln.ACCELERATE_FILE] = _yaml(accelerate | switches.accelerate_fields(cfg),
                                      [f"accelerate config for {cfg} (written by ftplan)",
                                       *switches.accelerate_notes(cfg)])
    files[ln.LAUNCH_FILE] = ln.launch_script(cfg)
    bnb = bnb_config_dict(cfg)
    if bnb is not None:  # QLoRA: transformers.BitsAndBytesConfig(**this), with FSDP's bnb_4bit_quant_storage
        files[BNB_CONFIG_FILE] = _json(bnb)
    lf = build_llamafactory_config(cfg, model_path=_model_path(cfg),
                                   ds_config_path=str(where / ln.DS_TRAINER_CONFIG_FILE))
    files.update(rl_files(cfg, _model_path(cfg), where))  # online RL: TRL's trainer config, or verl's for PPO
    files[ln.LLAMAFACTORY_FILE] = _yaml(lf, [f"LLaMA-Factory config for {cfg} (written by ftplan)",
                                             "set model_name_or_path and dataset to yours",
                                             *llamafactory_notes(cfg)])
    return files


def emit(est_or_plan: Estimate | TrainConfig, out_dir: Path | str, *, force: bool = False) -> list[Path]:
    """Write the plan's files into `out_dir`; returns their paths. A PlanError (invalid plan, a file that
    exists without `force`) leaves nothing written."""
    from planner.atomic import atomic_files

    est = est_or_plan if isinstance(est_or_plan, Estimate) else estimate(est_or_plan)
    found = problems(est.config)
    if found:
        raise PlanError(f"cannot emit an invalid plan: {found[0]}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PlanError(f"{out_dir} exists and is not a directory")
    files = render_files(est, out_dir)  # everything is rendered before anything touches the disk
    with atomic_files(out_dir, list(files), force=force) as stage:
        for name, text in files.items():
            (stage / name).write_text(text)
        for script in (ln.LAUNCH_FILE, VERL_SCRIPT):
            launch = stage / script
            if launch.exists():
                launch.chmod(launch.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return [out_dir / name for name in files]


def _batch_problems(data: dict[str, Any], cfg: TrainConfig) -> list[str]:
    out = []
    world = data.get("world_size")
    if world is not None and world != cfg.world_size:
        out.append(f"world_size {world} != {cfg.cluster} = {cfg.world_size} GPUs")
    if cfg.world_size % (cfg.tp * cfg.pp) == 0:
        dp = data.get("dp")
        if dp is not None:
            out += cfg.layout.problems(cfg.world_size, dp)
        gb = data.get("global_batch")
        if gb is not None and gb != cfg.global_batch:
            out.append(f"micro-batch({cfg.micro_batch}) * grad-accum({cfg.grad_accum}) * DP({cfg.dp}) = "
                       f"{cfg.global_batch} != global_batch {gb}")
    return out


def load_plan(path: Path | str) -> TrainConfig:
    """plan.json (as `emit` writes it, or `ftplan estimate --json` output) -> a validated TrainConfig."""
    path = Path(path)
    # a regular file of bounded size, strict JSON (planner/input_files.py): no FIFO hang, no NaN, no 1e999
    try:
        data = parse_json(read_bytes_file(path, what="plan"), what=str(path))
    except JSONInputError as exc:
        raise PlanError(f"{path} is not an ftplan plan (not JSON: {exc.reason})") from None
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or not {"model", "cluster"} <= config.keys():
        raise PlanError(f"{path} is not an ftplan plan (no 'config' with a model and cluster; "
                        "write one with `ftplan plan --emit DIR`)")
    fmt = data.get("format", PLAN_FORMAT)
    if fmt != PLAN_FORMAT:
        raise PlanError(f"{path} has plan format '{fmt}', this ftplan reads '{PLAN_FORMAT}'")
    try:
        cfg = config_from_dict(config)
    except PlanError as exc:
        raise PlanError(f"{path}: {exc}") from None
    for key, bounds in (("world_size", (1, MAX_GPUS)), ("dp", (1, MAX_GPUS)), ("global_batch", (1, 2**62))):
        if data.get(key) is not None:
            check_int(data[key], f"'{key}'", bounds, where=f"{path}: ")
    found = _batch_problems(data, cfg) + problems(cfg)
    if found:
        raise PlanError(f"{path} is inconsistent: {found[0]}")
    return cfg


FILE_ROLES = {
    ln.PLAN_FILE: "the plan (read by ftplan run / emit / estimate)",
    ln.DS_CONFIG_FILE: "DeepSpeed config, all values resolved",
    ln.DS_TRAINER_CONFIG_FILE: 'DeepSpeed config, "auto" for the HF Trainer',
    ln.ACCELERATE_FILE: "accelerate launch --config_file",
    ln.LAUNCH_FILE: "launch lines, single and multi-node",
    ln.LLAMAFACTORY_FILE: "llamafactory-cli train",
    BNB_CONFIG_FILE: "bitsandbytes BitsAndBytesConfig (4-bit base weights)",
    **RL_FILE_ROLES,
}


def launch_summary(cfg: TrainConfig, paths: list[Path]) -> tuple[list[tuple[Path, str]], str, list[tuple[str, str]]]:
    """What the report shows after an emit: (path, role) per file, the start command, other launchers."""
    out_dir = str(paths[0].parent)
    lines = ln.launch_lines(cfg, out_dir)
    script = str(Path(out_dir) / ln.LAUNCH_FILE)
    env = "MODEL_PATH=MODEL_DIR DATA=DATA_FILE"
    if cfg.engine is Engine.deepspeed:
        own = (f"torchrun --nproc_per_node {cfg.cluster.gpus_per_node} train.py --deepspeed "
               f"{Path(out_dir) / ln.DS_TRAINER_CONFIG_FILE}")
    else:
        own = f"accelerate launch --config_file {Path(out_dir) / ln.ACCELERATE_FILE} train.py"
    others = [("torchrun", f"{env} bash {script} torchrun")]
    if lines.deepspeed:
        others.append(("deepspeed", f"{env} bash {script} deepspeed"))
    others += [("accelerate", f"{env} bash {script} accelerate"),
               ("LLaMA-Factory", f"{env} bash {script} llamafactory"),
               ("own script", own)]
    return [(p, FILE_ROLES[p.name]) for p in paths], lines.start, others
