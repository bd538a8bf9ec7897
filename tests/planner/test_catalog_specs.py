"""The catalog: every entry's parameter count equals transformers' model built on the meta device, to the parameter;
the shipped specs (planner/model_specs/*.json) belong to the catalog's current config excerpts; the published sizes
(model cards and reports, rounded as published) and active-parameter counts hold.

Every catalog model is built whole on the meta device (about 20 s for the 46 entries on this machine: a meta build
allocates nothing, and transformers 5 stores a MoE layer's experts as a few fused tensors, so even the 671B
DeepSeek-V3 builds in under a second). The remote-code families (baichuan, chatglm) go through the proxies of
tests/planner/test_params.py.
"""

from __future__ import annotations

import json

import pytest

from planner.model_catalog import HF_CONFIGS
from planner.models import HAND_FAMILIES, from_name, model_names
from planner.params import active_params, total_params
from planner.spec_cache import catalog_spec_path, config_sha256

pytestmark = pytest.mark.filterwarnings("ignore")

DERIVED = [n for n in model_names() if str(HF_CONFIGS[n]["model_type"]) not in HAND_FAMILIES]
NATIVE = [n for n in model_names() if HF_CONFIGS[n]["model_type"] not in ("baichuan", "chatglm")]

# Published sizes, as their sources round them (model card or report named in planner/model_catalog.py), in billions
PUBLISHED_B = {
    "qwen3-0.6b": (0.6, 0.15), "qwen3-1.7b": (1.7, 0.05), "qwen3-4b": (4.0, 0.05), "qwen3-8b": (8.2, 0.05),
    "qwen3-14b": (14.8, 0.05), "qwen3-32b": (32.8, 0.05), "qwen3-30b-a3b": (30.5, 0.05),
    "qwen3-235b-a22b": (235, 0.5), "llama-3.3-70b": (70.6, 0.05), "gemma-3-1b": (1.0, 0.05),
    "gemma-3-27b": (27.0, 0.05), "gpt-oss-20b": (20.91, 0.005), "gpt-oss-120b": (116.83, 0.005),
    "deepseek-v3": (671, 0.5), "deepseek-r1-distill-qwen-1.5b": (1.78, 0.005),
    "deepseek-r1-distill-qwen-7b": (7.62, 0.005),
    "deepseek-r1-distill-qwen-14b": (14.8, 0.05), "deepseek-r1-distill-qwen-32b": (32.8, 0.05),
    "deepseek-r1-distill-llama-8b": (8.03, 0.005), "deepseek-r1-distill-llama-70b": (70.6, 0.05),
    "phi-4": (14.7, 0.05), "mistral-small-3-24b": (23.6, 0.05), "mistral-nemo-12b": (12.2, 0.05),
    "olmo-2-1b": (1.48, 0.005), "olmo-2-7b": (7.30, 0.005), "olmo-2-13b": (13.7, 0.05), "olmo-2-32b": (32.2, 0.05),
}
# Text models of multimodal releases: the published total includes the vision encoder
PUBLISHED_WITH_VISION_B = {"gemma-3-4b": (4.3, 0.05, 0.417), "gemma-3-12b": (12.2, 0.05, 0.417),
                           "llama-4-scout-17b-16e": (109, 0.5, 0.0)}
# Activated parameters (model cards and reports; gpt-oss's card counts the unembedding but not the embedding)
ACTIVE_B = {"qwen3-30b-a3b": (3.3, 0.1), "qwen3-235b-a22b": (22, 0.5), "deepseek-v3": (37, 0.6),
            "llama-4-scout-17b-16e": (17, 0.5), "mixtral-8x7b": (12.9, 0.05)}


@pytest.mark.parametrize("name", DERIVED)
def test_shipped_spec_belongs_to_the_catalog_entry(name: str) -> None:
    data = json.loads(catalog_spec_path(name).read_text())
    assert data["config_sha256"] == config_sha256(HF_CONFIGS[name]), \
        f"{name}: the catalog excerpt changed; python -m profiler.spec_derive --catalog {name}"
    m = from_name(name)
    assert m.derived and total_params(m) == data["spec"]["params_total"]
    assert all(kind.saved for kind in m.layer_kinds), f"{name}: no saved-tensor tables"


@pytest.mark.parametrize("name", NATIVE)
def test_params_total_equals_the_meta_model(name: str) -> None:
    pytest.importorskip("transformers")
    from profiler.spec_structure import build_meta_model, load_config

    model = build_meta_model(load_config(dict(HF_CONFIGS[name]), name=name), name=name)
    assert total_params(from_name(name)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PUBLISHED_B))
def test_published_size(name: str) -> None:
    size, tol = PUBLISHED_B[name]
    assert total_params(from_name(name)) / 1e9 == pytest.approx(size, abs=tol)


@pytest.mark.parametrize("name", list(PUBLISHED_WITH_VISION_B))
def test_published_size_of_multimodal_releases(name: str) -> None:
    size, tol, vision = PUBLISHED_WITH_VISION_B[name]
    text = total_params(from_name(name)) / 1e9
    assert text + vision == pytest.approx(size, abs=tol + (1.5 if not vision else 0.0))


@pytest.mark.parametrize("name", list(ACTIVE_B))
def test_active_parameters(name: str) -> None:
    size, tol = ACTIVE_B[name]
    assert active_params(from_name(name)) / 1e9 == pytest.approx(size, abs=tol)


def test_gpt_oss_active_parameters_as_its_card_counts_them() -> None:
    """gpt-oss model card, Table 1: 3.61B / 5.13B active counting the unembedding (not the embedding)."""
    for name, active in (("gpt-oss-20b", 3.61), ("gpt-oss-120b", 5.13)):
        m = from_name(name)
        assert (active_params(m) - m.vocab_size * m.hidden_size) / 1e9 == pytest.approx(active, abs=0.01)
