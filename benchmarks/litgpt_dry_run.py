"""litgpt's own model code on fake tensors, against ftplan and litgpt's published peaks.

ftplan's litgpt cases (tests/validation/published_peaks.py, LITGPT) set --litgpt: litgpt's own saved set
(planner.activations.litgpt_layer_bytes_per_token, measured op by op in tests/profiler/test_litgpt_saved_measured.py)
and the fp32 logit chunks Fabric's bf16-true hands the loop (`_FabricModule.forward` -> convert_output to the
default dtype), which this script does not apply: its logits stay bf16, so its head and loss read below ftplan's.
This script runs the code that produced the published figures: `lit_gpt/model.py` and
`lit_gpt/lora.py` of litgpt commit 8641822 (the resource table's), LoRA r 8, alpha 16, dropout 0.05 on
the query and value of the fused qkv, bf16 weights, one training iteration of finetune/lora.py (the LM
head in 128-token chunks, `chunked_cross_entropy`, torch AdamW over the adapters), at full size on fake
tensors with profiler.tracker.StorageTracker (as `ftplan profile dry-run` does). The rotary cache is
rebuilt in fp32, as finetune/lora.py's `model.max_seq_length = longest_seq_length` does outside
Fabric's bf16 context, and dropout keeps CUDA's 1-byte mask (profiler.dryrun.emulate_cuda_dropout).

What it tells: whether ftplan's per-layer bookkeeping holds for litgpt's layers (bf16 RMSNorm, one
dropout shared by q and v, zero-padded conv1d LoRA B), and so whether the published gap lies in the
tensors or outside them (CUDA kernels, allocator).

Usage: python benchmarks/litgpt_dry_run.py LITGPT_SRC
LITGPT_SRC holds lit_gpt/ of commit 8641822 (profiler/litgpt_source.py imports it without lightning). About 15 s
per case.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30
# (litgpt config name, micro-batch, published max_memory_allocated in GB, ftplan case id)
CASES = [("Llama-2-7b-hf", 1, 21.30, "litgpt:7B-none-mb1"), ("Llama-2-7b-hf", 2, 29.07, "litgpt:7B-none-mb2"),
         ("Llama-2-13b-hf", 1, 38.12, "litgpt:13B-none-mb1")]
SEQ_LEN = 1304  # the longest Alpaca sample in Llama 2 tokens: litgpt's first iteration


def litgpt_peak_bytes(name: str, micro_batch: int) -> dict[str, float]:
    import torch
    from lit_gpt.lora import GPT, Config, mark_only_lora_as_trainable
    from lit_gpt.utils import chunked_cross_entropy
    from torch._subclasses.fake_tensor import FakeTensorMode

    from profiler.dryrun import emulate_cuda_dropout
    from profiler.tracker import StorageTracker

    cfg = Config.from_name(name, r=8, alpha=16, dropout=0.05, to_query=True, to_key=False, to_value=True)
    torch.set_default_dtype(torch.bfloat16)  # Fabric's bf16-true init_module
    with torch.device("meta"):
        model = GPT(cfg)
    mark_only_lora_as_trainable(model)
    emulate_cuda_dropout(model)
    tracker = StorageTracker()
    with FakeTensorMode(allow_non_fake_inputs=True), tracker:
        model.to_empty(device="cpu")
        torch.set_default_dtype(torch.float32)
        model.max_seq_length = SEQ_LEN  # rebuilds cos/sin in the default dtype, fp32 by then
        torch.set_default_dtype(torch.bfloat16)
        params = list(model.parameters())
        trainable = [p for p in params if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=3e-4, foreach=True)  # CUDA's default implementation
        for p in trainable:  # the state a first step leaves
            p.grad = torch.empty_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        weights = {s for p in params if (s := tracker.serial_of(p)) is not None}
        idx = torch.zeros(micro_batch, SEQ_LEN, dtype=torch.long)
        targets = torch.zeros(micro_batch, SEQ_LEN, dtype=torch.long)
        tracker.reset_peak()
        tracker.label = "forward"
        with tracker.saved_tensors():
            logits = model(idx, lm_head_chunk_size=128)
            logits[-1] = logits[-1][..., :-1, :]
            loss = chunked_cross_entropy(logits, targets[..., 1:])
        tracker.label = "backward"
        loss.backward()
        tracker.label = "optimizer"
        opt.step()
        opt.zero_grad(set_to_none=True)
        snap = tracker.finish()
        peak = tracker.categorize(snap, weights=weights, gradients=set(), optimizer=set())
    torch.set_default_dtype(torch.float32)
    return {**peak, "phase": snap.label}


def main() -> None:
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "lit_gpt" / "lora.py").is_file():
        sys.exit("usage: python benchmarks/litgpt_dry_run.py LITGPT_SRC (a folder with lit_gpt/ of commit 8641822)")
    from profiler.litgpt_source import import_lit_gpt

    import_lit_gpt(Path(sys.argv[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "validation"))
    from published_peaks import CASES as PUBLISHED
    from test_memory_published_peaks import planner_bytes

    by_id = {c.id: c for c in PUBLISHED}
    print("| case | litgpt code, fake tensors | ftplan | ftplan / litgpt code | published (allocated) | "
          "published / litgpt code |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, mb, published_gb, case_id in CASES:
        peak = litgpt_peak_bytes(name, mb)
        ftplan, _ = planner_bytes(by_id[case_id])
        published = published_gb * 1e9
        print(f"| {case_id} | {peak['total'] / GiB:.2f} GiB ({peak['phase']}; activations "
              f"{peak['activations'] / GiB:.2f}) | {ftplan / GiB:.2f} GiB | {ftplan / peak['total'] - 1:+.1%} | "
              f"{published / GiB:.2f} GiB | {published / peak['total'] - 1:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
