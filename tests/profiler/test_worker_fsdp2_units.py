"""profiler.worker.fsdp2_units: the modules accelerate 1.16's fsdp2_prepare_model shards under FSDP2, in its order,
with its reshard_after_forward each: the decoder layers, the input embedding alone, the tail [final norm, head]
kept gathered (False), the root with torch's default (None); a tied embedding goes with the tail."""

from __future__ import annotations

import pytest

from profiler.worker import fsdp2_units


def _llama(tied: bool):  # noqa: ANN202 - transformers' model class
    pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied))


@pytest.mark.parametrize("reshard", [True, False])
def test_accelerate_units_untied(reshard: bool) -> None:
    model = _llama(tied=False)
    units = fsdp2_units(model, "LlamaDecoderLayer", reshard=reshard)
    layers = list(model.model.layers)
    assert [u for u, _ in units[:2]] == layers and all(r is reshard for _, r in units[:2])
    assert units[2] == (model.model.embed_tokens, reshard)
    assert units[3] == ([model.model.norm, model.lm_head], False)
    assert units[4] == (model, None)


def test_accelerate_units_tied() -> None:
    model = _llama(tied=True)
    units = fsdp2_units(model, "LlamaDecoderLayer", reshard=True)
    assert [u for u, _ in units[2:]] == [[model.model.norm, model.model.embed_tokens, model.lm_head], model]
