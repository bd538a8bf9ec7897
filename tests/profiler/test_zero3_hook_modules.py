"""The modules whose ZeRO-3 hooks run in a pass (planner.collectives.zero3_modules) are the modules a real forward
calls: counted with a forward pre-hook on every submodule of the model the profiler builds (transformers, and peft
for LoRA). peft registers ModuleDicts and ParameterDicts it only indexes; their hooks never run."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner import collectives as col
from planner.build import build_config
from planner.strategy import Method, Precision

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("method", [Method.full, Method.lora])
def test_hooked_modules_are_the_called_ones(tiny_model: Path, method: Method) -> None:
    from profiler.worker import _load_model

    cfg = build_config(model=str(tiny_model), gpus="1xCPU", method=method, precision=Precision.fp32, seq_len=16)
    model = _load_model(cfg, None, torch.float32)
    called: set[int] = set()
    for mod in model.modules():
        mod.register_forward_pre_hook(lambda mod, args: called.add(id(mod)))
    ids = torch.randint(0, cfg.model.vocab_size, (1, 16))
    model(input_ids=ids, labels=ids)
    assert col.zero3_modules(cfg.model, cfg.model.num_layers, cfg.method, cfg.lora_targets) == len(called)
    if method is Method.lora:  # peft's dicts are modules too, but never called
        assert len(list(model.modules())) > 1.5 * len(called)
