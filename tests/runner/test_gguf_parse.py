"""A GGUF file's config is parsed once per version of the file (runner.model.model_config), and loading its tokenizer
does not parse the metadata again to learn the model type. Counted as opens of the file: each of transformers'
readers (its own, integrations/gguf/reader.py, and gguf-py's GGUFReader behind load_gguf_checkpoint) maps the file
once (np.memmap -> open, a Python audit event, seen through sys.addaudithook: nothing is patched)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from smollm2 import SKIP_REASON, smollm2_gguf

from runner.model import load_tokenizer, model_config, model_source

_OPENS: list[str] | None = None  # the .gguf files opened while a test counts them
_HOOKED = False


def _hook(event: str, args: tuple) -> None:
    if _OPENS is not None and event == "open" and str(args[0]).endswith(".gguf"):
        _OPENS.append(str(args[0]))


@contextmanager
def counting() -> Iterator[list[str]]:
    global _OPENS, _HOOKED
    if not _HOOKED:  # an audit hook stays for the process's life: one, which counts only inside this block
        sys.addaudithook(_hook)
        _HOOKED = True
    _OPENS = []
    try:
        yield _OPENS
    finally:
        _OPENS = None


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason=SKIP_REASON)
def test_a_gguf_is_parsed_once_for_its_config_and_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    shipped = smollm2_gguf()
    assert shipped is not None
    gguf = tmp_path / shipped.name  # a copy of its own: the test rewrites its modification time
    shutil.copyfile(shipped, gguf)
    src = model_source(gguf)
    with counting() as opens:
        config = model_config(src)
    # a llama GGUF: transformers' metadata read finds an architecture its reader does not map, gguf-py's reads it
    assert len(opens) == 2 and config.model_type == "llama"
    with counting() as opens:
        again = model_config(src)
        tokenizer = load_tokenizer(src)
    assert len(opens) == 1  # the tokenizer's vocabulary (get_gguf_tokenizer); the config is the memoized one
    again.vocab_size = 1  # a copy: the caller may change it (load_model sets RoPE scaling, num_labels)
    assert model_config(src).vocab_size == config.vocab_size == len(tokenizer)

    with counting() as opens:
        reference = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert len(opens) == 3  # AutoTokenizer alone parses the config (twice over) only to choose the class
    text = "<|im_start|>user\nAdd one to 41.<|im_end|>\n héllo wörld 12345"
    assert type(tokenizer) is type(reference)
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    assert tokenizer.get_vocab() == reference.get_vocab() and tokenizer.chat_template == reference.chat_template

    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten file is read again
    with counting() as opens:
        model_config(src)
    assert len(opens) == 2
