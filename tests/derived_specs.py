"""One spec derivation (profiler/spec_derive.py `derive`) per config.json content and session, shared by the test
files that read the spec of the same small config: tests/profiler/test_spec_blame.py and test_peft_moe_conversion.py
both derive tests/profiler/tiny_moe.py's DeepSeek-V3 with its saved-tensor tables, and the latter derives each of its
MoE configs' structure twice. A derivation with the tables runs every LoRA mode in three regimes on fake tensors
(about a minute on this machine for DeepSeek-V3); its result depends on the config's content and `activations`
alone (the name labels errors only), so each test still reads the spec of its own config. Every caller gets its own
copy, as JSON: what `python -m profiler.spec_derive` writes and the planner reads back.
"""

from __future__ import annotations

import copy
import json
from typing import Any

_DERIVED: dict[tuple[str, bool], dict[str, Any]] = {}


def derived(raw: dict[str, Any], *, name: str, activations: bool = True) -> dict[str, Any]:
    """`derive(raw, name=name, activations=activations)` as JSON, derived in this process the first time."""
    key = json.dumps(raw, sort_keys=True), activations
    if key not in _DERIVED:
        from profiler.spec_derive import derive

        _DERIVED[key] = json.loads(json.dumps(derive(dict(raw), name=name, activations=activations)))
    return copy.deepcopy(_DERIVED[key])
