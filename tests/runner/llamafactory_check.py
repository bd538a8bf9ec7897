"""Run by tests/runner/test_llamafactory_parser.py with the Python of a separate virtualenv holding
LLaMA-Factory 0.9.5 (its pins conflict with ours): parse each emitted llamafactory.yaml with LLaMA-Factory's
own `get_train_args`, as `llamafactory-cli train FILE` does under torchrun, and print what it understood.

A one-process gloo group stands in for torchrun (LLaMA-Factory refuses to train undistributed); the model is
never loaded; without a GPU `use_cpu` is added (transformers refuses bf16 on a machine without one).
Usage: python llamafactory_check.py FILE.yaml ... -> one JSON line per file."""

from __future__ import annotations

import json
import sys

import yaml


def main() -> None:
    import importlib.util
    import re
    from pathlib import Path

    from llamafactory.hparams import get_train_args
    from llamafactory.hparams import parser as parser_module

    # the registered chat templates, read from the source: importing llamafactory.data needs torchaudio
    source = Path(importlib.util.find_spec("llamafactory").origin).parent / "data" / "template.py"
    templates = set(re.findall(r'register_template\(\s*name="([^"]+)"', source.read_text()))

    def value(x: object) -> object:
        return getattr(x, "value", x)

    for path in sys.argv[1:]:
        with open(path) as f:
            args = yaml.safe_load(f)
        import torch

        if not torch.cuda.is_available():
            # the files are for GPUs: transformers refuses bf16 without one unless told the run is on the CPU,
            # and LLaMA-Factory's pure_bf16 asks whether the GPU has bf16; both are the machine, not the file
            args["use_cpu"] = True
            parser_module.is_torch_bf16_gpu_available = lambda: True
        try:
            model, data, training, finetuning, _ = get_train_args(args)
        except (ValueError, ImportError, TypeError) as exc:
            print(json.dumps({"file": path, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        print(json.dumps({
            "file": path, "finetuning_type": finetuning.finetuning_type, "stage": finetuning.stage,
            "lora_rank": finetuning.lora_rank, "lora_alpha": finetuning.lora_alpha,
            "lora_target": finetuning.lora_target, "freeze_trainable_layers": finetuning.freeze_trainable_layers,
            "quantization_bit": model.quantization_bit, "flash_attn": value(model.flash_attn),
            "rope_scaling": value(model.rope_scaling), "cutoff_len": data.cutoff_len,
            "neat_packing": data.neat_packing, "packing": data.packing, "template": data.template,
            "template_known": data.template in templates, "pure_bf16": finetuning.pure_bf16,
            "per_device_train_batch_size": training.per_device_train_batch_size,
            "gradient_accumulation_steps": training.gradient_accumulation_steps,
            "deepspeed": training.deepspeed, "bf16": training.bf16, "fp16": training.fp16,
            "optim": value(training.optim), "gradient_checkpointing": not model.disable_gradient_checkpointing,
            "learning_rate": training.learning_rate,
            "gradient_accumulation_kwargs": training.accelerator_config.gradient_accumulation_kwargs}), flush=True)


if __name__ == "__main__":
    main()
