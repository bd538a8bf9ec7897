"""Published strategy comparisons as rank goldens: does the time model order plans as measured?

Sources (each: same model and hardware, several strategies, measured speeds):
- Hugging Face transformers, DeepSpeed integration guide ("How to choose which ZeRO stage and offloads
  to use for best performance"): "speed-wise (left is faster than right): Stage 0 (DDP) > Stage 1 >
  Stage 2 > Stage 2 + offload > Stage 3 > Stage 3 + offloads". Checked for Llama 1B-70B on 8-GPU A100
  and H100 nodes, full fine-tuning, bf16-mixed, micro-batch 2, 4 accumulation steps, seq 2048, pair by
  pair. Stages 0, 1 and 2 may tie: within 1% counts as in order (the planner's own tie rule,
  planner/search.py); the others must be strictly slower. "Stage 0 > Stage 1" is a strict xfail:
  llm.c measured ZeRO-1 ahead of ZeRO-0 (below), and the planner follows the measurement. "Stage 2 +
  offload > Stage 3" is a strict xfail: the gist below measures the opposite on 8x A800, and the planner
  follows the measurement.
- chenyaofo, "Benchmark of LLaMA-7B models using deepspeed-based training code" (GitHub gist
  d4cd6a20ab4b95cb3a49491747e2139a): 8x A800, seq 4096, DeepSpeed 0.14.2, PyTorch 2.2, global batch 64
  (128 in one row); eleven runs over ZeRO-2/3, HF gradient checkpointing, optimizer / parameter offload
  and micro-batch 1-8, throughput as printed there. Checked: Kendall's tau between the measured and
  the predicted order >= 0.6 (tolerance chosen before running), and the individual orders below.
The model is asked for time only (step_time), so plans that would not fit are still compared.
"""

from __future__ import annotations

import pytest

from planner.build import build_config
from planner.strategy import GradCkpt, Method, Offload, Precision
from planner.timing import step_time
from profiler.calibrate import kendall_tau

TIE = 0.01
STAGES = [("Z0", {"zero": 0}), ("Z1", {"zero": 1}), ("Z2", {"zero": 2}),
          ("Z2+off", {"zero": 2, "offload": Offload.optimizer}), ("Z3", {"zero": 3}),
          ("Z3+off", {"zero": 3, "offload": Offload.all})]
MODELS = ["llama-3.2-1b", "llama-2-7b", "llama-3-8b", "llama-2-13b", "llama-2-70b"]
CLUSTERS = ["8xA100-80G", "8xH100", "2x8xH100"]


def _tokens_per_s(model: str, gpus: str, **kw) -> float:
    cfg = build_config(model=model, gpus=gpus, method=Method.full, precision=Precision.bf16_mixed, micro_batch=2,
                       grad_accum=4, seq_len=2048, check=False, **kw)
    return step_time(cfg).tokens_per_s


_Z2_OFF_VS_Z3 = ("the guide's 'Stage 2 + offload > Stage 3' is contradicted on 8x A800 by the gist below (ZeRO-2 + "
                 "optimizer offload 1.81 vs ZeRO-3 4.45 samples/s, both with checkpointing): the planner follows "
                 "the measurement (host Adam, one core per rank under torchrun / accelerate, and PCIe traffic per "
                 "step exceed ZeRO-3's gathers and hooks, for the 1B model too)")
_Z0_VS_Z1 = ("ZeRO-1 partitions the optimizer step (each rank updates 1/N of the parameters): torch's foreach AdamW "
             "reads and writes 20 values per parameter, which saves more than the 1/N all-gather costs, so the "
             "planner puts ZeRO-1 ahead, as llm.c measured for GPT-2 XL on 8 A100 (karpathy/llm.c PR 469: ZeRO-1 "
             "102,266 vs ZeRO-0 99,540 tokens/s)")
# pairs that the guide's order gets wrong where the planner's terms say why (strict: an improvement shows)
MISSES: dict[tuple[str, str, str, str], str] = {}
PAIRS = [("Z0", "Z1", True, _Z0_VS_Z1), ("Z1", "Z2", True, None), ("Z2", "Z2+off", False, None),
         ("Z2+off", "Z3", False, _Z2_OFF_VS_Z3), ("Z3", "Z3+off", False, None), ("Z2", "Z3", False, None)]


def _pair_params():
    for model in MODELS:
        for gpus in CLUSTERS:
            for fast, slow, tie_ok, miss in PAIRS:
                # across two nodes ZeRO-1/2 issue one reduce per rank and bucket (16 per bucket), which for
                # the 1B model costs more than the partitioned optimizer step saves: the guide's order holds
                if miss is _Z0_VS_Z1 and (model, gpus) == ("llama-3.2-1b", "2x8xH100"):
                    miss = None
                miss = MISSES.get((model, gpus, fast, slow), miss)
                marks = [pytest.mark.xfail(strict=True, reason=miss)] if miss else []
                yield pytest.param(model, gpus, fast, slow, tie_ok, id=f"{model}-{gpus}-{fast}>{slow}", marks=marks)


@pytest.mark.parametrize(("model", "gpus", "fast", "slow", "tie_ok"), list(_pair_params()))
def test_hf_guide_stage_order(model: str, gpus: str, fast: str, slow: str, tie_ok: bool) -> None:
    kw = dict(STAGES)
    fast_tps, slow_tps = _tokens_per_s(model, gpus, **kw[fast]), _tokens_per_s(model, gpus, **kw[slow])
    print(f"[rank golden] HF DeepSpeed guide, {model} on {gpus}: {fast} {fast_tps:,.0f} > {slow} {slow_tps:,.0f}")
    assert slow_tps <= fast_tps * (1 + TIE if tie_ok else 1.0), f"{slow} predicted faster than {fast}"


# chenyaofo gist: (ZeRO stage, checkpointing, optimizer offload, parameter offload, micro-batch, global batch,
# measured throughput)
GIST = [
    (2, False, False, False, 1, 64, 5.33), (2, True, False, False, 1, 64, 4.19), (2, True, True, False, 1, 64, 1.81),
    (2, True, False, False, 4, 64, 4.69), (3, False, False, False, 2, 64, 4.95), (3, True, False, False, 2, 64, 4.45),
    (3, True, True, False, 2, 64, 2.05), (3, True, True, True, 4, 64, 2.06), (3, True, False, False, 8, 64, 4.73),
    (3, True, False, False, 8, 128, 4.32),
]


def _gist_predicted(z: int, ckpt: bool, opt_off: bool, param_off: bool, mb: int, gbs: int) -> float:
    offload = Offload.all if param_off else Offload.optimizer if opt_off else Offload.none
    cfg = build_config(model="llama-2-7b", gpus="8xA800", method=Method.full, precision=Precision.bf16_mixed, zero=z,
                       offload=offload, micro_batch=mb, grad_accum=gbs // (8 * mb), seq_len=4096,
                       grad_ckpt=GradCkpt.full if ckpt else GradCkpt.none, check=False)
    return step_time(cfg).samples_per_s


def test_llama7b_a800_gist_rank_agreement() -> None:
    measured = [row[-1] for row in GIST]
    predicted = [_gist_predicted(*row[:-1]) for row in GIST]
    tau = kendall_tau(measured, predicted)
    for row, p in zip(GIST, predicted, strict=True):
        print(f"[rank golden] gist LLaMA-7B 8xA800 Z{row[0]} ckpt={row[1]} off={row[2]}/{row[3]} mb{row[4]} "
              f"gbs{row[5]}: measured {row[6]}, predicted {p:.2f} samples/s")
    print(f"[rank golden] Kendall tau {tau:.3f} (tolerance >= 0.6)")
    assert tau >= 0.6


@pytest.mark.parametrize(("faster", "slower", "why"), [
    (0, 4, "ZeRO-2 at micro-batch 1 beats ZeRO-3 at micro-batch 2 (no checkpointing)"),
    (0, 1, "checkpointing costs ZeRO-2 its recompute"),
    (4, 5, "checkpointing costs ZeRO-3 its recompute"),
    (1, 2, "optimizer offload halves ZeRO-2's speed"),
    (5, 6, "optimizer offload halves ZeRO-3's speed"),
    (3, 1, "ZeRO-2 with checkpointing: micro-batch 4 beats 1"),
    (8, 5, "ZeRO-3 with checkpointing: micro-batch 8 beats 2"),
    (3, 5, "ZeRO-2 beats ZeRO-3 (checkpointing, larger micro-batch on both)"),
])
def test_llama7b_a800_gist_pairs(faster: int, slower: int, why: str) -> None:
    assert _gist_predicted(*GIST[faster][:-1]) > _gist_predicted(*GIST[slower][:-1]), why
