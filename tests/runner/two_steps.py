"""Two optimizer steps of a tiny Llama driven by emitted files; run under torchrun with 2 processes on the CPU.

    torchrun --nproc_per_node 2 tests/runner/two_steps.py deepspeed:PORT:OUT_DIR fsdp:PORT:OUT_DIR ...

The model's shape comes from OUT_DIR/plan.json (load_plan), the engine settings from the emitted
ds_config.json (passed as is to deepspeed.initialize) or accelerate.yaml (through accelerate's own config
and launch code into its FullyShardedDataParallelPlugin, whose settings wrap the model in torch FSDP).
Each rank imports torch, transformers, DeepSpeed and accelerate once, then runs every MODE:PORT:OUT_DIR in a process
forked from itself (tests/forked_cases.py), one after the other: the two ranks' children of a run meet in a gloo
group of their own on PORT (a free port the caller chose). Rank 0 prints one line per step: `OUT_DIR step N loss X`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

from runner.emit import load_plan

STEPS = 2


def tiny_llama(plan_path: Path) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    m = load_plan(plan_path).model
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                         num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                         num_key_value_heads=m.num_kv_heads, max_position_embeddings=m.max_seq_len,
                         tie_word_embeddings=m.tie_embeddings)
    return LlamaForCausalLM(config)


def batch(step: int, micro: int, rank: int, micro_batch: int, seq_len: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)
    return torch.randint(0, vocab, (micro_batch, seq_len), generator=g)


def run_deepspeed(out: Path) -> None:
    import deepspeed

    ds_config = json.loads((out / "ds_config.json").read_text())
    plan = load_plan(out / "plan.json")
    model = tiny_llama(out / "plan.json")
    optimizer = None if "optimizer" in ds_config else torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    rank = dist.get_rank()
    mb, ga = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    for step in range(STEPS):
        losses = []
        for micro in range(ga):
            ids = batch(step, micro, rank, mb, min(plan.seq_len, 32), plan.model.vocab_size)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        if rank == 0:
            print(f"{out} step {step} loss {sum(losses) / len(losses):.4f} global_steps {engine.global_steps} "
                  f"zero {engine.zero_optimization_stage()} world {dist.get_world_size()}", flush=True)
    # tear the gloo group down before interpreter exit, as the FSDP run below does: left to the atexit
    # destructors a rank can abort ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()


def fsdp_plugin_from_yaml(yaml_path: Path):
    """accelerate's own path: config file -> launch args -> FSDP_* environment -> FullyShardedDataParallelPlugin.

    Returns the plugin, the mixed precision, and the two loading switches the yaml asks for
    (`sync_module_states`, `cpu_ram_efficient_loading`). accelerate refuses both on a CPU-only machine
    (FullyShardedDataParallelPlugin.__post_init__: "not supported on cpu"), so the plugin is built here
    without them, through its public constructor, and the caller checks and applies them itself.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(yaml_path), "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_"))}
    loading = {key: env.pop(f"FSDP_{key.upper()}", "false").lower() == "true"
               for key in ("sync_module_states", "cpu_ram_efficient_loading")}
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin(sync_module_states=False, cpu_ram_efficient_loading=False)
    plugin.param_init_fn = lambda module: module.to_empty(device=torch.device("cpu"), recurse=False)
    return plugin, args.mixed_precision, loading


def run_fsdp(out: Path) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import MixedPrecision

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    plan = load_plan(out / "plan.json")
    plugin, precision, loading = fsdp_plugin_from_yaml(out / "accelerate.yaml")
    model = tiny_llama(out / "plan.json")
    plugin.set_auto_wrap_policy(model)
    if loading["sync_module_states"]:
        # torch FSDP1 broadcasts rank 0's states only from a GPU; on the CPU the same broadcast is done here
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
    mixed = None
    if precision == "bf16":
        mixed = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, buffer_dtype=torch.bfloat16)
    model = FSDP(model, sharding_strategy=plugin.sharding_strategy, cpu_offload=plugin.cpu_offload,
                 auto_wrap_policy=plugin.auto_wrap_policy, backward_prefetch=plugin.backward_prefetch,
                 forward_prefetch=plugin.forward_prefetch, use_orig_params=plugin.use_orig_params,
                 sync_module_states=False, mixed_precision=mixed, device_id=torch.device("cpu"))
    wrapped = sum(isinstance(m, FSDP) for m in model.modules())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mb, ga = plan.micro_batch, plan.grad_accum
    for step in range(STEPS):
        losses = []
        for micro in range(ga):
            ids = batch(step, micro, rank, mb, min(plan.seq_len, 32), plan.model.vocab_size)
            loss = model(input_ids=ids, labels=ids).loss / ga
            loss.backward()
            losses.append(loss.item() * ga)
        model.clip_grad_norm_(1.0)
        optimizer.step()
        optimizer.zero_grad()
        if rank == 0:
            print(f"{out} step {step} loss {sum(losses) / len(losses):.4f} fsdp_units {wrapped} "
                  f"strategy {plugin.sharding_strategy.name}", flush=True)
    dist.destroy_process_group()


def _preload() -> None:
    """The libraries both modes use, imported once before the runs fork."""
    import accelerate.commands.launch  # noqa: F401
    import deepspeed.comm.torch  # noqa: F401  (deepspeed.comm's `torch` attribute is the torch package)
    import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401  (ZeRO's optimizer check imports it: 3 s)
    import transformers.models.llama.modeling_llama  # noqa: F401

    # DeepSpeed JIT-compiles a shared-memory all-reduce kernel for the CPU backend (~2 min once); it only
    # speeds up CPU collectives, so the run uses plain gloo collectives instead
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def _run(case: str) -> None:
    mode, port, out_dir = case.split(":", 2)
    # this run's own group: rank 0's child serves the store on PORT (not torchrun's agent store, which the
    # children of every run would share)
    os.environ.update(MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE="False")
    {"deepspeed": run_deepspeed, "fsdp": run_fsdp}[mode](Path(out_dir))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: forked_cases.py
    from forked_cases import run_forked

    _preload()
    run_forked(sys.argv[1:], _run)
