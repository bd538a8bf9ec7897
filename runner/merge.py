"""`ftplan merge ADAPTER --output DIR`: fold a LoRA adapter into its base model (peft merge_and_unload) and save
the merged model with its tokenizer, all or nothing."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from planner.errors import PlanError

ADAPTER_CONFIG = "adapter_config.json"  # peft's file name (peft/utils/constants.py CONFIG_NAME)


def base_model_of(adapter: Path, override: Path | None = None) -> Path:
    """The base model directory (or .gguf file): `override`, else what `ftplan run` recorded, else peft's
    base_model_name_or_path."""
    from runner.train import RUN_INFO_FILE

    if override is not None:
        return override
    info = adapter / RUN_INFO_FILE
    if info.exists():
        data = json.loads(info.read_text())
        base = Path(data["model_path"])
        return base / data["gguf_file"] if data.get("gguf_file") else base
    return Path(json.loads((adapter / ADAPTER_CONFIG).read_text())["base_model_name_or_path"])


def merge(adapter: Path, output: Path, *, model_path: Path | None = None, force: bool = False) -> Path:
    adapter, output = Path(adapter), Path(output)
    if not (adapter / ADAPTER_CONFIG).exists():
        raise PlanError(f"{adapter}: no {ADAPTER_CONFIG}; give the output directory of a LoRA `ftplan run`")
    if output.exists() and any(output.iterdir()) and not force:
        raise PlanError(f"--output {output} is not empty; pass --force to replace it")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from runner.model import model_source

    src = model_source(base_model_of(adapter, model_path))
    kwargs: dict = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    # a reward model's adapter (peft task SEQ_CLS, `ftplan run --stage rm`) carries its trained `score` head
    # and merges into the sequence-classification model with one output; the others into the causal LM
    seq_cls = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("task_type") == "SEQ_CLS"
    if seq_cls:
        kwargs["num_labels"] = 1
    auto = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
    base = auto.from_pretrained(str(src.directory), dtype="auto", **kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    if seq_cls:
        # the score is read at the last non-padding token, so the merged model needs the run's pad token id
        merged.config.pad_token_id = tokenizer.pad_token_id
    # written beside the destination, then renamed into place: a failure leaves no half-written model
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        merged.save_pretrained(str(stage))
        tokenizer.save_pretrained(str(stage))
        if output.exists():
            shutil.rmtree(output)
        os.replace(stage, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return output
