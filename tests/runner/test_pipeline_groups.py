"""The pipeline runner's optimizer has the Trainer's parameter groups (transformers trainer.py `create_optimizer`:
weight decay on what `get_decay_parameter_names` names, none on the norms and biases) and is the one the plan asks for
(runner/parallel/pipeline.py pipeline_optimizer). The stage layers are wrapped as the runner wraps them
(pipeline_layers), so their parameter names are the pipeline's, not the Hugging Face model's."""

from __future__ import annotations

import pytest

from planner.build import build_config
from planner.configs.ds_config import DEFAULT_HYPER
from planner.strategy import Method, Optimizer
from runner.parallel.pipeline import pipeline_layers, pipeline_optimizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def _stages(optimizer: Optimizer):  # noqa: ANN202 (the plan, the HF model and the pipeline's layers)
    cfg = build_config(model="llama-2-7b", gpus="2xCPU", pp=2, zero=0, method=Method.full, optimizer=optimizer,
                       check=False)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    return cfg, model, torch.nn.Sequential(*pipeline_layers(model, cfg))


@pytest.mark.parametrize("optimizer", [Optimizer.adamw, Optimizer.sgd])
def test_pipeline_optimizer_has_the_trainers_two_groups(optimizer: Optimizer) -> None:
    cfg, model, stages = _stages(optimizer)
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    assert decay and len(decay) < len(list(model.parameters()))  # both groups hold something
    by_id = {id(p): n for n, p in model.named_parameters()}
    opt = pipeline_optimizer(cfg, stages, lr=1e-3)
    assert type(opt) is (torch.optim.AdamW if optimizer is Optimizer.adamw else torch.optim.SGD)
    groups = opt.param_groups
    assert len(groups) == 2
    assert {by_id[id(p)] for p in groups[0]["params"]} == decay
    assert {by_id[id(p)] for p in groups[1]["params"]} == set(by_id.values()) - decay
    assert all("norm" in by_id[id(p)] for p in groups[1]["params"])
    assert groups[0]["weight_decay"] == DEFAULT_HYPER.weight_decay and groups[1]["weight_decay"] == 0.0


def test_pipeline_optimizer_keeps_only_trained_parameters() -> None:
    cfg, model, stages = _stages(Optimizer.adamw)
    model.model.embed_tokens.weight.requires_grad_(False)
    opt = pipeline_optimizer(cfg, stages, lr=1e-3)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.model.embed_tokens.weight) not in held
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_pipeline_refuses_an_optimizer_it_does_not_run() -> None:
    from planner.errors import PlanError

    cfg, _, stages = _stages(Optimizer.adamw_8bit)
    with pytest.raises(PlanError, match="adamw or sgd"):
        pipeline_optimizer(cfg, stages, lr=1e-3)
