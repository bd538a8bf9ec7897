"""One spec derivation (profiler/spec_derive.py `derive`) per config.json content and session, shared by the test
files that read the spec of the same small config: tests/profiler/test_spec_blame.py and test_peft_moe_conversion.py
both derive tests/profiler/tiny_moe.py's DeepSeek-V3 with its saved-tensor tables, and the latter derives each of its
MoE configs' structure twice. A derivation with the tables runs every LoRA mode in three regimes on fake tensors
(about a minute on this machine for DeepSeek-V3); its result depends on the config's content and `activations`
alone (the name labels errors only), so each test still reads the spec of its own config. Every caller gets its own
copy, as JSON: what `python -m profiler.spec_derive` writes and the planner reads back.

`derive_two_at_a_time` derives a file's configs up front, each in its own `python -m profiler.spec_derive` (the
planner's subprocess for a user's config, planner/spec_cache.py `derive_in_subprocess`), two at once: a derivation
keeps one core busy, and one after the other they left the second core of this 2-core machine idle.
"""

from __future__ import annotations

import copy
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_DERIVED: dict[tuple[str, bool], dict[str, Any]] = {}


def _key(raw: dict[str, Any], activations: bool) -> tuple[str, bool]:
    return json.dumps(raw, sort_keys=True), activations


def derived(raw: dict[str, Any], *, name: str, activations: bool = True) -> dict[str, Any]:
    """`derive(raw, name=name, activations=activations)` as JSON, derived in this process the first time."""
    key = _key(raw, activations)
    if key not in _DERIVED:
        from profiler.spec_derive import derive

        _DERIVED[key] = json.loads(json.dumps(derive(dict(raw), name=name, activations=activations)))
    return copy.deepcopy(_DERIVED[key])


def _derive_in_subprocess(raw: dict[str, Any]) -> dict[str, Any]:
    from planner.spec_cache import derive_in_subprocess

    with tempfile.TemporaryDirectory(prefix="ftplan-test-spec-") as tmp:
        out = Path(tmp) / "spec.json"
        derive_in_subprocess(dict(raw), out, name=str(raw["model_type"]))
        return json.loads(out.read_text())


def derive_two_at_a_time(raws: list[dict[str, Any]]) -> None:
    """Every config of `raws` not derived yet (saved-tensor tables included), two subprocesses at a time."""
    todo = list({_key(raw, True): raw for raw in raws if _key(raw, True) not in _DERIVED}.values())
    with ThreadPoolExecutor(max_workers=2) as pool:
        for raw, data in zip(todo, pool.map(_derive_in_subprocess, todo), strict=True):
            _DERIVED[_key(raw, True)] = data
