"""The discrete choices of a fine-tuning run (enums shared with the CLI) and one configuration."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from planner.gpus import Cluster
from planner.models import ModelSpec


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
    ppo = "ppo"  # actor, critic, reference and reward models


class CrossEntropy(str, Enum):
    """How the LM head's loss is computed (planner.loss_memory)."""

    standard = "standard"  # transformers' ForCausalLMLoss: all logits upcast to fp32 at once
    chunked = "chunked"  # torchtune's CEWithChunkedOutputLoss: head and fp32 upcast chunk by chunk
    fused = "fused"  # Liger's fused linear cross-entropy: the logits are never materialized


class Kernels(str, Enum):
    eager = "eager"  # transformers' PyTorch modules
    liger = "liger"  # Liger-Kernel's fused RMSNorm, SwiGLU and RoPE (planner.kernels)


class FsdpVersion(IntEnum):
    ONE = 1  # FlatParameter FSDP (torch.distributed.fsdp.FullyShardedDataParallel)
    TWO = 2  # per-parameter FSDP (torch.distributed.fsdp.fully_shard), accelerate `fsdp_version: 2`


class PipeSchedule(str, Enum):
    one_f_one_b = "1f1b"
    interleaved = "interleaved"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """One fine-tuning configuration on one cluster; `str()` names it like Z3-TP2-PP1-DP4-mb2-ga8."""

    model: ModelSpec
    cluster: Cluster
    method: Method = Method.lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("all",)
    lora_dropout: float = 0.05
    quant: Quant = Quant.none
    double_quant: bool = True
    freeze_layers: int = 0  # full method: the first N decoder layers (and the embedding) stay frozen
    precision: Precision = Precision.bf16_mixed
    optimizer: Optimizer = Optimizer.adamw
    engine: Engine = Engine.ddp
    zero: ZeroStage = ZeroStage.DISABLED
    fsdp: FsdpStrategy = FsdpStrategy.full_shard
    offload: Offload = Offload.none
    offload_device: OffloadDevice = OffloadDevice.cpu
    tp: int = 1
    sequence_parallel: bool = False
    pp: int = 1
    pp_schedule: PipeSchedule = PipeSchedule.one_f_one_b
    virtual_stages: int = 1
    micro_batch: int = 1
    grad_accum: int = 1
    seq_len: int = 2048
    grad_ckpt: GradCkpt = GradCkpt.none
    attn: Attn = Attn.sdpa
    stage: Stage = Stage.sft
    cross_entropy: CrossEntropy = CrossEntropy.standard
    kernels: Kernels = Kernels.eager
    activation_offload: bool = False  # saved activations / checkpoints kept in host memory
    fsdp_version: FsdpVersion = FsdpVersion.TWO

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.dp

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def trains_adapter(self) -> bool:
        return self.method is not Method.full

    def strategy_name(self) -> str:
        if self.engine is Engine.deepspeed:
            head = f"Z{int(self.zero)}"
        elif self.engine is Engine.fsdp:
            head = {"full_shard": "FSDP", "shard_grad_op": "FSDP-SGO", "hybrid_shard": "FSDP-HYB",
                    "no_shard": "FSDP-NS"}[self.fsdp.value]
        else:
            head = "DDP" if self.world_size > 1 else "1GPU"
        if self.offload is not Offload.none:
            head += f"+off-{'opt' if self.offload is Offload.optimizer else 'all'}"
            if self.offload_device is OffloadDevice.nvme:
                head += "-nvme"
        return head

    def __str__(self) -> str:
        sp = "SP" if self.sequence_parallel else ""
        parts = [self.strategy_name(), f"TP{self.tp}{sp}", f"PP{self.pp}", f"DP{self.dp}",
                 f"mb{self.micro_batch}", f"ga{self.grad_accum}"]
        if self.grad_ckpt is not GradCkpt.none:
            parts.append(f"ckpt-{self.grad_ckpt.value}")
        if self.optimizer is not Optimizer.adamw:
            parts.append(self.optimizer.value)
        return "-".join(parts)
