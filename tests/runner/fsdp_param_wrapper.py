"""LoRA on fused MoE experts (peft's ParamWrapper) under torch FSDP, on 2 CPU processes over gloo:

    torchrun --nproc_per_node 2 tests/runner/fsdp_param_wrapper.py PLAN MODEL_DIR VERSION STEPS

`ftplan run` cannot show this on the CPU: the Trainer's `use_cpu` makes accelerate's state MULTI_CPU, and
accelerate assigns DistributedType.FSDP only to GPU-like distributed types (accelerate/state.py, AcceleratorState
.__init__), so a CPU FSDP plan trains as DDP there. Here the model comes from the runner's own loader
(runner.model.load_model: the plan's peft LoRA config) and is wrapped as the Trainer has accelerate wrap it on a GPU:
VERSION 2 calls `fully_shard` on every decoder layer, then on the root (accelerate/utils/fsdp_utils.py
fsdp2_prepare_model; under FSDP2 the Trainer keeps the decoder-layer policy: it creates the optimizer first, so
update_fsdp_plugin_peft is not called, transformers/trainer.py _inner_training_loop); VERSION 1 wraps with
FullyShardedDataParallel(use_orig_params=True), as runner.run_common's fsdp_config asks, under the policy the Trainer
gives a peft model (transformers/distributed/fsdp.py update_fsdp_plugin_peft: peft's fsdp_auto_wrap_policy).
A second copy of the same model trains unsharded in the same process; both ranks feed the same batches, so FSDP's
averaged gradient is the unsharded one's. Rank 0 prints one JSON line: both loss curves, and over the expert LoRA
weights (gathered) the largest difference from the unsharded copy and the smallest change over the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _load(plan: Path, model_dir: Path) -> torch.nn.Module:
    from runner.model import ModelOptions, load_model, model_source
    from runner.train import load_plan

    torch.manual_seed(0)  # peft's lora_A init: the same on both ranks and in both copies
    return load_model(load_plan(plan), model_source(model_dir), ModelOptions())


def _wrap(model: torch.nn.Module, version: int, layer_class: type) -> torch.nn.Module:
    if version == 2:
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if isinstance(module, layer_class):
                fully_shard(module)
        fully_shard(model)
        return model
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import FullyShardedDataParallel

    # the Trainer's policy for a peft model under FSDP1 (transformers/distributed/fsdp.py update_fsdp_plugin_peft):
    # the decoder-layer class, or'ed with every leaf module with a trained weight (each lora_A / lora_B its own unit)
    return FullyShardedDataParallel(model, auto_wrap_policy=fsdp_auto_wrap_policy(model), use_orig_params=True,
                                    device_id=torch.device("cpu"))


def _expert_lora(model: torch.nn.Module, version: int) -> dict[str, torch.Tensor]:
    """The expert LoRA weights, whole: FSDP2's DTensors gathered, FSDP1's flat parameters unsharded."""
    out = {}
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel

        ctx = FullyShardedDataParallel.summon_full_params(model, writeback=False)
    else:
        from contextlib import nullcontext

        ctx = nullcontext()
    with ctx:
        for name, p in model.named_parameters():
            if "experts" in name and "lora_" in name:
                t = p.full_tensor() if hasattr(p, "full_tensor") else p
                out[name.replace("_fsdp_wrapped_module.", "")] = t.detach().clone()
    return out


def main() -> None:
    plan, model_dir, version, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    ref = _load(plan, model_dir)
    model = _load(plan, model_dir)
    layer_class = type(model.base_model.model.model.layers[0])
    before = _expert_lora(ref, 0)
    model = _wrap(model, version, layer_class)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (model, ref)]
    vocab = ref.config.vocab_size
    losses: dict[str, list[float]] = {"fsdp": [], "unsharded": []}
    for step in range(steps):
        ids = torch.randint(4, vocab, (2, 16), generator=torch.Generator().manual_seed(step % 2))
        ids[:, 8:] = ids[:, :8]  # a copy task the adapter can learn
        for key, m, opt in (("fsdp", model, opts[0]), ("unsharded", ref, opts[1])):
            loss = m(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[key].append(loss.item())
    after, expect = _expert_lora(model, version), _expert_lora(ref, 0)
    if dist.get_rank() == 0:
        keys = sorted(expect)
        print(json.dumps({"losses": losses, "expert_keys": keys,
                          "max_diff": max((after[k] - expect[k]).abs().max().item() for k in keys),
                          "min_change": min((expect[k] - before[k]).abs().max().item() for k in keys),
                          "sharded": any(hasattr(p, "to_local") or getattr(p, "_is_flat_param", False)
                                         for p in model.parameters())}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
