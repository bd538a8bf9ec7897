"""lit-gpt's own model code (commit 8641822, the one litgpt's published resource table ran) importable without
lightning, for the measurements of litgpt's saved set (tests/profiler/test_litgpt_saved_measured.py,
benchmarks/litgpt_dry_run.py).

`src` holds lit_gpt/{__init__,config,model,lora,utils}.py, e.g.
    git --git-dir=<litgpt.git> archive 8641822 lit_gpt | tar -x -C SRC
Only lit_gpt.utils' helper functions are taken (its module imports lightning); lightning_utilities'
RequirementCache (model.py asks it whether flash-attn is installed) is answered "no". Nothing downloads.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

# the lit_gpt.utils functions model.py, config.py, lora.py and the training step call
UTILS_FUNCTIONS = frozenset({"find_multiple", "chunked_cross_entropy", "map_old_state_dict_weights"})


class _NoRequirement:
    """lightning_utilities' RequirementCache answering "not installed" (flash-attn)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __bool__(self) -> bool:
        return False


def import_lit_gpt(src: Path) -> types.ModuleType:
    """lit_gpt.lora from the source tree `src` (idempotent)."""
    if "lit_gpt.lora" in sys.modules:
        return sys.modules["lit_gpt.lora"]
    src = src.resolve()
    imports = types.ModuleType("lightning_utilities.core.imports")
    imports.RequirementCache = _NoRequirement  # type: ignore[attr-defined]
    for name in ("lightning_utilities", "lightning_utilities.core"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["lightning_utilities.core.imports"] = imports
    tree = ast.parse((src / "lit_gpt" / "utils.py").read_text())
    body = [*ast.parse("import torch\nfrom typing import *").body,
            *(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in UTILS_FUNCTIONS)]
    utils = types.ModuleType("lit_gpt.utils")
    exec(compile(ast.Module(body=body, type_ignores=[]), "lit_gpt/utils.py", "exec"), utils.__dict__)  # noqa: S102
    sys.modules["lit_gpt.utils"] = utils
    package = types.ModuleType("lit_gpt")
    package.__path__ = [str(src / "lit_gpt")]  # type: ignore[attr-defined]
    sys.modules["lit_gpt"] = package
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    # config.py and model.py import each other: model first, as lit_gpt/__init__.py does
    importlib.import_module("lit_gpt.model")
    return importlib.import_module("lit_gpt.lora")
