"""Published training throughputs and the configurations behind them, for the time-model goldens.

The models are GPT (4h GeLU MLP, learned positions, LayerNorm with bias, tied embeddings, vocab
51,200): built here as test-local ModelSpecs with BLOOM's layer layout (query_key_value, dense,
dense_h_to_4h, dense_4h_to_h, all with bias), which is the same set of matmuls. Details the papers
leave out are stated per case as assumptions (micro-batch 1, the 1F1B schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.compute import megatron_iteration_flops
from planner.gpus import GPUS, Cluster
from planner.models import ModelSpec
from planner.strategy import (
    Attn,
    Engine,
    GradCkpt,
    Kernels,
    Method,
    PipeSchedule,
    Precision,
    Stage,
    TrainConfig,
    ZeroStage,
)
from planner.timing import step_time


def report(source: str, figure: str, published: float, planner: float, unit: str, tolerance: str) -> float:
    """Print the deviation of the planner from a published figure (pytest -s shows it); return it."""
    dev = planner / published - 1.0
    print(f"[golden] {source} | {figure}: published {published:.2f} {unit}, planner {planner:.2f} {unit}, "
          f"deviation {dev:+.1%} (tolerance {tolerance})")
    return dev


def gpt(name: str, *, h: int, a: int, L: int, V: int = 51200, s: int = 2048) -> ModelSpec:
    return ModelSpec(name=name, model_type="bloom", vocab_size=V, hidden_size=h, intermediate_size=4 * h,
                     num_layers=L, num_heads=a, num_kv_heads=a, head_dim=h // a, tie_embeddings=True, qkv_bias=True,
                     linear_bias=True, gated_mlp=False, layernorm_bias=True, max_seq_len=s)


def megatron_config(m: ModelSpec, *, gpus: int, tp: int, pp: int, batch: int, ckpt: GradCkpt,
                    sp: bool = False, gpu: str = "A100-80G", mb: int = 1, v: int = 1) -> TrainConfig:
    """Megatron-LM: fp16 mixed precision, data parallelism with an all-reduce of 16-bit gradients
    (modelled as DeepSpeed ZeRO-0, the same collective), TP inside a node, PP across. Its fused kernels
    (Narayanan et al. 2021, Sec. 4.2: bias + GeLU, bias + dropout + add, scale + mask + softmax; apex's fused
    LayerNorm) are counted as the planner counts fused elementwise kernels (Kernels.liger: one read and one
    write per tensor), its attention as materialized scores (no FlashAttention in 2021-2022)."""
    per_node = GPUS[gpu].gpus_per_node
    cluster = Cluster(gpu=GPUS[gpu], nodes=gpus // per_node, gpus_per_node=per_node) if gpus >= per_node else \
        Cluster(gpu=GPUS[gpu], nodes=1, gpus_per_node=gpus)
    dp = gpus // (tp * pp)
    return TrainConfig(model=m, cluster=cluster, method=Method.full, precision=Precision.fp16_mixed,
                       engine=Engine.deepspeed, zero=ZeroStage.DISABLED, tp=tp, pp=pp, sequence_parallel=sp,
                       micro_batch=mb, grad_accum=batch // (dp * mb), seq_len=2048, grad_ckpt=ckpt, stage=Stage.pt,
                       attn=Attn.eager, kernels=Kernels.liger,
                       pp_schedule=PipeSchedule.interleaved if v > 1 else PipeSchedule.one_f_one_b,
                       virtual_stages=v)


@dataclass(frozen=True)
class Case:
    id: str
    source: str
    figure: str
    published: float
    unit: str
    tolerance: float  # relative
    config: TrainConfig
    # planner/kernels.py SCORE_PASSES: the kernel a case's eager attention runs ("gpt2_eager": GPT-2's own _attn)
    attention_kernel: str | None = None

    def planner_value(self) -> float:
        # megatron_config plans Megatron-LM's attention as eager attention; its scores pass through one fused
        # scale + mask + softmax kernel (planner/kernels.py SCORE_PASSES "fused_softmax"), not transformers' ops
        kernel = self.attention_kernel or ("fused_softmax" if self.config.attn is Attn.eager else None)
        t = step_time(self.config, attention_kernel=kernel)
        if self.unit == "TFLOP/s per GPU":
            c, m = self.config, self.config.model
            flops = megatron_iteration_flops(c.global_batch, c.seq_len, m.num_layers, m.hidden_size, m.vocab_size)
            return flops / t.step_time_s / c.world_size / 1e12
        if self.unit == "s":
            return t.step_time_s
        if self.unit == "samples/s":
            return t.samples_per_s
        raise ValueError(self.unit)


# Narayanan et al. 2021 (arXiv 2104.04473), Table 1: weak scaling on Selene (A100 80GB, 8 per node,
# 8x 200 Gb/s HDR), full activation recomputation, fp16; TFLOP/s per GPU by eq. 3.
# (params, heads, hidden, layers, TP, PP, GPUs, batch, TFLOP/s per GPU)
TABLE1 = [
    ("1.7B", 24, 2304, 24, 1, 1, 32, 512, 137),
    ("3.6B", 32, 3072, 30, 2, 1, 64, 512, 138),
    ("7.5B", 32, 4096, 36, 4, 1, 128, 512, 142),
    ("18.4B", 48, 6144, 40, 8, 1, 256, 1024, 135),
    ("39.1B", 64, 8192, 48, 8, 2, 512, 1536, 138),
    ("76.1B", 80, 10240, 60, 8, 4, 1024, 1792, 140),
    ("145.6B", 96, 12288, 80, 8, 8, 1536, 2304, 148),
    ("310.1B", 128, 16384, 96, 8, 16, 1920, 2160, 155),
    ("529.6B", 128, 20480, 105, 8, 35, 2520, 2520, 163),
    ("1008.0B", 160, 25600, 128, 8, 64, 3072, 3072, 163),
]

# Korthikanti et al. 2022 (arXiv 2205.05198), Table 3 configurations and Table 5 iteration times (s),
# full recomputation vs sequence parallelism + selective recomputation, A100 80GB; micro-batch and
# interleaving as Calculon reproduces them (calculon-ai/calculon validation/seqsel/tab5/*.json).
# (name, heads, hidden, layers, TP, PP, GPUs, global batch, micro-batch, virtual stages, full s, SP+sel s)
KORTHIKANTI = [
    ("22B", 64, 6144, 48, 8, 1, 8, 4, 4, 1, 1.42, 1.10),
    ("175B", 96, 12288, 96, 8, 8, 64, 64, 1, 3, 18.13, 13.75),
    ("530B", 128, 20480, 105, 8, 35, 280, 280, 1, 3, 49.05, 37.83),
    ("1T", 160, 25600, 128, 8, 64, 512, 512, 1, 1, 94.42, 71.49),
]

# Smith et al. 2022 (MT-NLG 530B, arXiv 2201.11990), Sec. 3.3: global batch 1920, TP 8, PP 35, seq 2048;
# 60.1 / 50.2 / 44.4 s per iteration on 280 / 350 / 420 DGX A100 nodes (2240 / 2800 / 3360 GPUs).
MTNLG = [(2240, 60.1), (2800, 50.2), (3360, 44.4)]

# DeepSpeedExamples autotuning/hf/README.md: GPT-2 large fine-tuned with the HF Trainer on 16 V100s
# (one DGX-2-class node, fp16, ZeRO-1): 56.80 samples/s hand-tuned (micro-batch 2), 69.06 autotuned
# (micro-batch 3). Assumed: sequence length 1024 (run_clm's block size for GPT-2), no accumulation.
# Attention: the gpt2-large README names transformers 4.12.0.dev0, whose GPT-2 had no SDPA path: GPT2Attention._attn
# materializes the scores and passes over them with its own ops (planner/kernels.py SCORE_PASSES "gpt2_eager";
# DeepSpeed's fp16 engine runs the model in half precision, so softmax stays fp16).
GPT2_LARGE = gpt("gpt2-large", h=1280, a=20, L=36, V=50257, s=1024)


def _gpt2_config(mb: int) -> TrainConfig:
    cluster = Cluster(gpu=GPUS["V100-32G"], nodes=1, gpus_per_node=16)
    return TrainConfig(model=GPT2_LARGE, cluster=cluster, method=Method.full, precision=Precision.fp16_mixed,
                       engine=Engine.deepspeed, zero=ZeroStage.OPTIMIZER_STATES, micro_batch=mb, grad_accum=1,
                       seq_len=1024, stage=Stage.sft, attn=Attn.eager)


def cases() -> list[Case]:
    out = []
    for name, a, h, L, tp, pp, n, batch, tflops in TABLE1:
        out.append(Case(f"megatron-table1-{name}", "Narayanan et al. 2021, Table 1", f"GPT {name} on {n} A100s",
                        tflops, "TFLOP/s per GPU", 0.25,
                        megatron_config(gpt(name, h=h, a=a, L=L), gpus=n, tp=tp, pp=pp, batch=batch,
                                        ckpt=GradCkpt.full)))
    for name, a, h, L, tp, pp, n, batch, mb, v, full_s, sel_s in KORTHIKANTI:
        m = gpt(name, h=h, a=a, L=L)
        out.append(Case(f"korthikanti-{name}-full", "Korthikanti et al. 2022, Table 5", f"{name} full recompute",
                        full_s, "s", 0.25,
                        megatron_config(m, gpus=n, tp=tp, pp=pp, batch=batch, ckpt=GradCkpt.full, mb=mb, v=v)))
        out.append(Case(f"korthikanti-{name}-selective", "Korthikanti et al. 2022, Table 5",
                        f"{name} SP + selective recompute", sel_s, "s", 0.25,
                        megatron_config(m, gpus=n, tp=tp, pp=pp, batch=batch, ckpt=GradCkpt.selective, sp=True,
                                        mb=mb, v=v)))
    mtnlg = gpt("mt-nlg-530b", h=20480, a=128, L=105)
    for n, secs in MTNLG:
        out.append(Case(f"mtnlg-530b-{n}", "Smith et al. 2022 (MT-NLG), Sec. 3.3", f"530B on {n} A100s", secs, "s",
                        0.25, megatron_config(mtnlg, gpus=n, tp=8, pp=35, batch=1920, ckpt=GradCkpt.full)))
    for mb, published in ((2, 56.80), (3, 69.06)):
        out.append(Case(f"ds-autotuning-gpt2-large-mb{mb}", "DeepSpeedExamples autotuning/hf README",
                        f"GPT-2 large, 16 V100, ZeRO-1, micro-batch {mb}", published, "samples/s", 1.0,
                        _gpt2_config(mb), attention_kernel="gpt2_eager"))
    return out
