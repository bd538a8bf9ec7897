"""The tiny models the runner's end-to-end tests train: a WordLevel tokenizer over "w0".."wN" (plus "Q:" and "A:"
where a test writes question/answer rows) and a Llama built from its config, saved where transformers loads them
without a hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def word_tokenizer(n_words: int, *, qa: bool = True) -> Any:
    """A fast tokenizer splitting on whitespace over the special tokens, "Q:" and "A:" (with `qa`) and n_words words
    w0..w{n-1}: ids pad 0, bos 1, eos 2, unk 3."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + (["Q:", "A:"] if qa else []) + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def save_tiny_llama(path: Path, n_words: int, *, qa: bool = True, vocab: int = 0, **config: Any) -> Path:
    """The tokenizer above and a LlamaConfig model (seed 0) saved under `path`: 64 wide, 2 layers, 4 heads and 2 KV
    heads unless `config` says otherwise; the vocabulary is the tokenizer's unless `vocab` is given."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = word_tokenizer(n_words, qa=qa)
    fast.save_pretrained(path)
    torch.manual_seed(0)
    dims = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 128, **config}
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab or len(fast), bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                 **dims)).save_pretrained(path)
    return path
