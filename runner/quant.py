"""bitsandbytes quantization for QLoRA plans and its 8-bit / paged optimizers, on CUDA and on the CPU.

bitsandbytes >= 0.48 ships a CPU backend (bitsandbytes/backends/cpu): NF4/FP4 quantize and dequantize,
Linear4bit and Linear8bitLt forward and backward, and its optimizers (AdamW8bit, PagedAdamW*, ...) all run
there (checked on bitsandbytes 0.50.2, torch 2.13 CPU). So a QLoRA plan trains on `--gpus NxCPU` through the
same code as on CUDA. One difference: paging (unified memory that CUDA evicts to the host) has no meaning on
the CPU, where the states already live in host memory; bitsandbytes warns "Paged optimizers are not supported
on CPU. Falling back to non-paged optimizer behavior." and steps the same optimizer unpaged.

FSDP + QLoRA: FSDP flattens every parameter of a wrapped unit into one buffer of a single dtype, so the 4-bit
weights are stored in the dtype of the other parameters: `bnb_4bit_quant_storage` = the load dtype
(transformers docs, "FSDP-QLoRA": bnb_4bit_quant_storage=torch.bfloat16 beside torch_dtype=torch.bfloat16).
"""

from __future__ import annotations

from typing import Any

from planner.errors import PlanError
from planner.strategy import Engine, FsdpStrategy, Precision, Quant, TrainConfig

BNB_CONFIG_FILE = "bnb_config.json"  # written by `ftplan emit` for quantized plans


def compute_dtype_name(cfg: TrainConfig, on_cuda: bool) -> str:
    """The dtype bitsandbytes dequantizes to for the matmuls: QLoRA's bf16 (Dettmers et al. 2023, Sec. 3),
    fp16 under fp16 mixed precision; on the CPU the runner trains mixed precision in fp32
    (runner.model.load_dtype), so the compute dtype follows the weights' load dtype there."""
    if not on_cuda:
        return "bfloat16" if cfg.precision is Precision.bf16_true else "float32"
    return "float16" if cfg.precision is Precision.fp16_mixed else "bfloat16"


def quant_storage_name(cfg: TrainConfig) -> str | None:
    """FSDP (sharded) needs the packed 4-bit weights in the dtype of the other parameters, which the runner
    loads in runner.model.load_dtype's dtype (bf16 for bf16-true, else fp32 masters); None elsewhere
    (bitsandbytes' default uint8 storage)."""
    sharded = cfg.engine is Engine.fsdp and cfg.fsdp is not FsdpStrategy.no_shard and cfg.world_size > 1
    if cfg.quant is not Quant.nf4 or not sharded:
        return None
    return "bfloat16" if cfg.precision is Precision.bf16_true else "float32"


def bnb_config_dict(cfg: TrainConfig, *, on_cuda: bool = True) -> dict[str, Any] | None:
    """transformers.BitsAndBytesConfig keyword arguments for the plan (None when it quantizes nothing);
    pure data, so `ftplan emit` and the runner share it."""
    if cfg.quant is Quant.none:
        return None
    if cfg.quant is Quant.int8:
        return {"load_in_8bit": True}
    out: dict[str, Any] = {"load_in_4bit": True, "bnb_4bit_quant_type": cfg.quant.value,
                           "bnb_4bit_use_double_quant": cfg.double_quant,
                           "bnb_4bit_compute_dtype": compute_dtype_name(cfg, on_cuda)}
    storage = quant_storage_name(cfg)
    if storage is not None:
        out["bnb_4bit_quant_storage"] = storage
    return out


def require_bitsandbytes(what: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ModuleNotFoundError:
        raise PlanError(f"{what} needs bitsandbytes: pip install 'bitsandbytes>=0.48' "
                        "(its CPU backend serves --gpus NxCPU plans too)") from None


def bnb_config(cfg: TrainConfig, on_cuda: bool) -> Any:
    """The BitsAndBytesConfig the model is loaded with, or None."""
    kwargs = bnb_config_dict(cfg, on_cuda=on_cuda)
    if kwargs is None:
        return None
    require_bitsandbytes(f"{cfg.method.value} with {cfg.quant.value} weights")
    import torch
    from transformers import BitsAndBytesConfig

    for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if key in kwargs:
            kwargs[key] = getattr(torch, kwargs[key])
    return BitsAndBytesConfig(**kwargs)
