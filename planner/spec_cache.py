"""Specs read from the transformers model, kept as JSON so that planning never imports torch.

A config.json of an architecture without a hand-written rule (planner/models.py) is planned from the structure
transformers itself builds: `python -m profiler.spec_derive` builds the model on the meta device, walks its modules
and measures one layer of each kind on fake tensors, and writes the spec as JSON. The planner runs it once per
config content in a subprocess and keeps the result in the spec cache (`$FTPLAN_SPEC_CACHE`, default
${XDG_CACHE_HOME:-~/.cache}/ftplan/specs), keyed by the config's content and the installed transformers, peft and
torch releases (their modeling code decides the structure). The catalog ships its specs as JSON (planner/model_specs/).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from planner.errors import PlanError

CATALOG_SPECS = Path(__file__).resolve().parent / "model_specs"
SPEC_FORMAT = 1
# What profiler/spec_derive.py measures, by revision: a cached spec derived by an earlier revision is derived again
# (the catalog's specs are rewritten with the code that changes it). 2: peft's parameter-wrapped linears blamed
# through target_parameters, which revision 1 blamed falsely (DeepSeek-V3's experts.gate_up_proj); 3: the LoRA tables
# of the fused experts and router that peft's MoE conversion adapts (`lora:mlp.experts.gate_up_proj`, ...); 4: eager
# tables fitted from two rows and more, one row apart ("*_one_row": profiler/spec_activations.py EAGER_SHAPES), where
# revision 3 fitted one row and two together (a single key/value head's negative per-position bytes); 5: each layer
# kind's `called_modules` (the modules a forward calls, whose ZeRO-3 hooks run) and `other_params` (gpt-oss's sinks)
DERIVE_REVISION = 5
# Building a 235B-class model on the meta device takes seconds; measuring its layers on fake tensors a minute
DERIVE_TIMEOUT_S = 900


def config_sha256(cfg: dict[str, Any]) -> str:
    """The key of a config.json's content (key order and whitespace do not matter)."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=1)
def library_versions() -> str:
    """The releases whose modeling code the derived structure depends on (read from package metadata: no
    import of the packages themselves)."""
    parts = []
    for name in ("transformers", "peft", "torch"):
        try:
            parts.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name}=absent")
    return ",".join(parts)


def cache_dir() -> Path:
    """$FTPLAN_SPEC_CACHE, else ftplan/specs in the XDG cache folder (as planner/device_fit_file.py places fits)."""
    root = os.environ.get("FTPLAN_SPEC_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ftplan" / "specs"


def cache_path(cfg: dict[str, Any]) -> Path:
    text = f"{config_sha256(cfg)}|{library_versions()}|{SPEC_FORMAT}|{DERIVE_REVISION}"
    return cache_dir() / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def catalog_spec_path(name: str) -> Path:
    return CATALOG_SPECS / f"{name}.json"


def load_spec_json(path: Path) -> dict[str, Any]:
    # the one reader of outside files (planner/input_files.py: a regular file of bounded size, strict JSON); the
    # spec itself is checked as every model is (planner.input_checks.check_model_spec)
    from planner.input_files import read_json_file

    data = read_json_file(path, what="model spec")
    if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT or not isinstance(data.get("spec"), dict):
        raise PlanError(f"{path} is not an ftplan model spec of format {SPEC_FORMAT}: remove it to derive it again")
    return data


def derived_spec_dict(cfg: dict[str, Any], *, name: str) -> dict[str, Any]:
    """The spec of `cfg` from the cache, deriving it in a subprocess the first time."""
    path = cache_path(cfg)
    if not path.exists():
        derive_in_subprocess(cfg, path, name=name)
    return load_spec_json(path)["spec"]


def derive_in_subprocess(cfg: dict[str, Any], out: Path, *, name: str) -> None:
    """Run profiler.spec_derive on `cfg` in a fresh interpreter (torch stays out of this process); its one-line
    error becomes a PlanError."""
    out.parent.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
        config_file = f.name
    try:
        proc = subprocess.run([sys.executable, "-m", "profiler.spec_derive", "--config", config_file, "--name", name,
                               "--out", str(out)], capture_output=True, text=True, env=env, cwd=root,
                              timeout=DERIVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PlanError(f"model '{name}': reading its structure from transformers took over {DERIVE_TIMEOUT_S} s"
                        ) from None
    finally:
        os.unlink(config_file)
    if proc.returncode != 0 or not out.exists():
        lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
        last = lines[-1].removeprefix("ftplan: error: ") if lines else f"exit code {proc.returncode}"
        if "No module named 'torch'" in last or "No module named 'transformers'" in last:
            last = (f"model '{name}': its structure is read from transformers once (pip install 'ftplan[train]'), "
                    "then planning runs without it")
        raise PlanError(last)
