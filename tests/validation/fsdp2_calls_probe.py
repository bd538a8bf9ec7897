"""Worker for test_fsdp2_calls_measured.py: one rank of a 2-process gloo run of FSDP2 in accelerate's units
(profiler.worker.fsdp2_units) on a small Llama, counting the all-gathers and reduce-scatters of one micro-batch's
forward and backward (the second step's) by the names FSDP2 records them under with torch.profiler.record_function
(torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py: `FSDP::all_gather (<unit>)` in `unshard`, around
`foreach_all_gather`; `FSDP::post_backward_reduce (<unit>)` in `post_backward`, around `foreach_reduce`, entered only
for a unit with gradients) and the process group's own calls (`c10d::_allgather_base_`,
`c10d::_reduce_scatter_base_`, what foreach_all_gather and foreach_reduce issue).

Case TIED:TRAIN:RESHARD:PORT. TIED: 1 ties the head to the embedding (Gemma, Llama-3.2-1B). TRAIN: full (everything
trains), freeze (the planner's --freeze-layers 1: the embedding and the first decoder layer frozen, runner/model.py
_freeze_first_layers), or layers (only a linear in each decoder layer trains, the embedding, norms and head frozen:
where LoRA's adapters train). RESHARD: 1 FULL_SHARD, 0 SHARD_GRAD_OP (accelerate's reshard_after_forward False).

Usage: python -m torch.distributed.run --nproc_per_node 2 fsdp2_calls_probe.py CASE ... (OMP_NUM_THREADS=1). Rank 0
prints one JSON line per case: {"case", "forward_gathers", "backward_gathers", "reduce_scatters", "c10d_all_gather",
"c10d_reduce_scatter"}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=64)
MICRO_BATCH, SEQ = 2, 16


def _counts(prof: profile) -> dict[str, int]:
    out = {"gathers": 0, "reduce_scatters": 0, "c10d_all_gather": 0, "c10d_reduce_scatter": 0}
    for ev in prof.events():
        label = ev.name.split(" (")[0]  # "<label> (<unit's fqn>)", the root's without one
        if label == "FSDP::all_gather":
            out["gathers"] += 1
        elif label == "FSDP::post_backward_reduce":
            out["reduce_scatters"] += 1
        elif ev.name.startswith("c10d::_allgather_base_"):
            out["c10d_all_gather"] += 1
        elif ev.name.startswith("c10d::_reduce_scatter_base_"):
            out["c10d_reduce_scatter"] += 1
    return out


def main(tied: bool, train: str, reshard: bool) -> dict:
    from torch.distributed.fsdp import fully_shard

    from profiler.worker import fsdp2_units

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG, tie_word_embeddings=tied))
    if train == "freeze":
        model.get_input_embeddings().requires_grad_(False)
        model.model.layers[0].requires_grad_(False)
    elif train == "layers":
        model.requires_grad_(False)
        for layer in model.model.layers:
            layer.self_attn.q_proj.requires_grad_(True)
    for unit, keep in fsdp2_units(model, LlamaDecoderLayer.__name__, reshard=reshard):
        fully_shard(unit, reshard_after_forward=keep)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(0, CONFIG["vocab_size"], (MICRO_BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    out: dict = {}
    for step in range(2):  # the second step's counts: every state exists
        with profile(activities=[ProfilerActivity.CPU]) as fwd:
            loss = model(input_ids=ids, labels=ids).loss
        with profile(activities=[ProfilerActivity.CPU]) as bwd:
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 1:
            f, b = _counts(fwd), _counts(bwd)
            out = {"forward_gathers": f["gathers"], "backward_gathers": b["gathers"],
                   "reduce_scatters": b["reduce_scatters"],
                   "c10d_all_gather": f["c10d_all_gather"] + b["c10d_all_gather"],
                   "c10d_reduce_scatter": b["c10d_reduce_scatter"]}
    dist.barrier()
    dist.destroy_process_group()
    return out


def _case(case: str) -> None:
    tied, train, reshard, port = case.split(":")
    os.environ.update(MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE="False")
    out = main(tied == "1", train, reshard == "1")
    if int(os.environ["RANK"]) == 0:
        print(json.dumps({"case": case, **out}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: forked_cases.py
    from forked_cases import run_forked

    run_forked(sys.argv[1:], _case)
