"""The discrete choices of a fine-tuning run, as enums shared with the CLI (typer takes them as choices)."""

from __future__ import annotations

from enum import Enum, IntEnum


class Method(str, Enum):
    full = "full"
    lora = "lora"
    qlora = "qlora"


class Quant(str, Enum):
    none = "none"
    nf4 = "nf4"  # bitsandbytes 4-bit NormalFloat (Dettmers et al. 2023, QLoRA)
    int8 = "int8"  # bitsandbytes LLM.int8() (Dettmers et al. 2022)


class Precision(str, Enum):
    fp32 = "32-true"
    fp16_mixed = "16-mixed"
    bf16_mixed = "bf16-mixed"  # 16-bit compute, fp32 master weights
    bf16_true = "bf16-true"  # everything in bf16, no master copy


class Optimizer(str, Enum):
    adamw = "adamw"
    adamw_8bit = "adamw_8bit"  # bitsandbytes blockwise 8-bit states (Dettmers et al. 2021)
    paged_adamw = "paged_adamw"  # bitsandbytes paged 32-bit AdamW (unified memory)
    paged_adamw_8bit = "paged_adamw_8bit"
    sgd = "sgd"  # with momentum


class Engine(str, Enum):
    ddp = "ddp"  # torch DistributedDataParallel (a single GPU is DDP at world size 1)
    deepspeed = "deepspeed"
    fsdp = "fsdp"


class ZeroStage(IntEnum):
    DISABLED = 0
    OPTIMIZER_STATES = 1
    GRADIENTS = 2
    WEIGHTS = 3


class FsdpStrategy(str, Enum):
    full_shard = "full_shard"
    shard_grad_op = "shard_grad_op"
    hybrid_shard = "hybrid_shard"
    no_shard = "no_shard"


class Offload(str, Enum):
    none = "none"
    optimizer = "optimizer"
    all = "all"  # optimizer states, gradients and parameters


class OffloadDevice(str, Enum):
    cpu = "cpu"
    nvme = "nvme"


class GradCkpt(str, Enum):
    none = "none"
    selective = "selective"  # recompute attention only (Korthikanti et al. 2022, Sec. 4.2)
    full = "full"  # keep each layer's input only


class Attn(str, Enum):
    eager = "eager"  # materializes the s x s scores
    sdpa = "sdpa"
    flash = "flash"  # flash_attention_2


class Stage(str, Enum):
    pt = "pt"
    sft = "sft"
    rm = "rm"  # reward model: a scalar value head
    dpo = "dpo"  # frozen reference model beside the policy
    ppo = "ppo"  # actor, critic, reference and reward models (planned here, run by verl)
    grpo = "grpo"  # online RL through TRL's GRPOTrainer: generations scored by rewards, group-relative advantages
    rloo = "rloo"  # TRL's RLOOTrainer: REINFORCE with the leave-one-out baseline


class PipeSchedule(str, Enum):
    one_f_one_b = "1f1b"
    interleaved = "interleaved"


class CrossEntropy(str, Enum):
    """How the LM head's loss is computed (planner.loss_memory)."""

    standard = "standard"  # transformers' ForCausalLMLoss: all logits upcast to fp32 at once
    chunked = "chunked"  # torchtune's CEWithChunkedOutputLoss: head and fp32 upcast chunk by chunk
    fused = "fused"  # Liger's fused linear cross-entropy: the logits are never materialized


class Kernels(str, Enum):
    eager = "eager"  # transformers' PyTorch modules
    liger = "liger"  # Liger-Kernel's fused RMSNorm, SwiGLU and RoPE (planner.liger_kernels)


class FsdpVersion(IntEnum):
    ONE = 1  # FlatParameter FSDP (torch.distributed.fsdp.FullyShardedDataParallel)
    TWO = 2  # per-parameter FSDP (torch.distributed.fsdp.fully_shard), accelerate `fsdp_version: 2`
