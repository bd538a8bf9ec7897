"""One rank of `ftplan profile run`: a few real training steps, measured, reported as JSON.

Run under torchrun (`python -m torch.distributed.run --nproc_per_node N -m profiler.worker --spec S --out D`);
every rank writes D/rank<R>.json. The spec is `{"config": <planner.serialize.config_to_dict>,
"warmup_steps": W, "steps": K, "model_path": str | null}`.

Memory: on CUDA, `torch.cuda.max_memory_allocated` / `max_memory_reserved` over the measured steps, and the
device's memory in use after each measured step (profiler/device_memory.py: the driver's count, nvidia-smi's);
on the CPU, the peak of live tensor bytes (profiler.tracker.StorageTracker, the CPU analogue of
max_memory_allocated, over the whole run: model, engine buffers and steps) and the process's peak
RSS (`resource.getrusage`, which also holds the interpreter, libraries and the allocator's slack).
Time: CUDA events (or perf_counter on the CPU) around each measured optimizer step. The CPU tracker
intercepts every storage allocation and roughly doubles a small model's step time, so timing runs pass
`"track_memory": false` (peak tensor bytes are then reported as 0; peak RSS is still read).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from planner.compute import mfu as compute_mfu
from planner.compute import model_flops_per_token, peak_flops_per_s
from planner.configs.ds_config import DEFAULT_HYPER
from planner.gpus import is_cpu
from planner.serialize import config_from_dict
from planner.states import fp32_adapters
from planner.strategy import Engine, FsdpStrategy, GradCkpt, Method, Optimizer, Precision, TrainConfig
from profiler.device_memory import device_memory_in_use
from profiler.launcher import exit_worker, is_cpu_plan, run_in_fork
from profiler.param_groups import trainer_param_groups


def _load_model(cfg: TrainConfig, model_path: str | None, dtype: Any, device: Any = None) -> Any:
    """The plan's model: a local checkpoint's weights, else built from its config with random weights, on `device`
    (None: torch's default device) under torch's device context, so that a GPU initializes its own weights: the
    CPU's random number generator fills about 1.4e8 values a second, one thread (measured here: normal_ on 2e8
    fp32 values took 1.45 s with 1 or 2 threads), 30-50 s of a 7B plan, while the measured steps are the same."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from profiler.dryrun import hf_config_dict

    attn = "eager" if cfg.attn.value == "eager" else "sdpa"
    if model_path and any(Path(model_path).glob("*.safetensors")) or model_path and any(
            Path(model_path).glob("pytorch_model*.bin")):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=attn)
    else:
        hf_cfg = AutoConfig.for_model(**hf_config_dict(cfg.model))
        hf_cfg._attn_implementation = attn
        torch.manual_seed(0)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    model.config.use_cache = False
    if cfg.method is Method.lora:
        from peft import LoraConfig, get_peft_model

        from planner.params import resolve_lora_targets

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(resolve_lora_targets(cfg.model, cfg.lora_targets)), task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg, autocast_adapter_dtype=fp32_adapters(cfg.precision))
    if cfg.grad_ckpt is GradCkpt.full:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def _param_dtype(cfg: TrainConfig) -> Any:
    import torch

    if cfg.precision is Precision.bf16_true:
        return torch.bfloat16
    if cfg.engine is Engine.deepspeed or cfg.precision is Precision.fp32 or cfg.method is Method.full:
        return torch.float32  # DeepSpeed makes its own 16-bit copies from fp32 modules
    return torch.float16 if cfg.precision is Precision.fp16_mixed else torch.bfloat16


def _optimizer(cfg: TrainConfig, model: Any, device: Any) -> Any:
    import torch

    # neither foreach nor fused given, as the Trainer builds them (transformers trainer_optimizer.py
    # `_get_adamw_torch`): torch picks foreach on a GPU and the single-tensor loop on the CPU, which the planner
    # models per device (planner/torch_adamw.py)
    groups = trainer_param_groups(model)
    if cfg.optimizer is Optimizer.sgd:
        return torch.optim.SGD(groups, lr=1e-5, momentum=DEFAULT_HYPER.sgd_momentum)
    if cfg.fused_adamw:  # torch's fused kernel, as the plan asked
        return torch.optim.AdamW(groups, lr=1e-5, fused=True)
    return torch.optim.AdamW(groups, lr=1e-5)


def _wrap(cfg: TrainConfig, model: Any, device: Any, world: int) -> tuple[Any, Any, bool]:
    """(engine or module, optimizer, is_deepspeed)."""
    import torch

    if cfg.engine is Engine.deepspeed:
        import deepspeed

        from planner.configs.ds_config import build_ds_config

        ds_cfg = build_ds_config(cfg)
        ds_cfg["zero_allow_untested_optimizer"] = True
        ds_cfg["steps_per_print"] = 10**9
        opt = _optimizer(cfg, model, device)
        engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg)
        return engine, opt, True
    if cfg.engine is Engine.fsdp and cfg.fsdp is not FsdpStrategy.no_shard:
        # FSDP2 (`fully_shard`, in accelerate's units: fsdp2_units), which runs on the CPU over gloo, where
        # FSDP1 refuses to start ("FSDP needs a non-CPU accelerator device"). shard_grad_op keeps the
        # parameters gathered between forward and backward (reshard_after_forward=False), like FSDP1's
        # SHARD_GRAD_OP; hybrid_shard on one node shards like full_shard.
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy()
        if cfg.precision in (Precision.bf16_mixed, Precision.fp16_mixed):
            low = torch.bfloat16 if cfg.precision is Precision.bf16_mixed else torch.float16
            mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=low)
        for unit, reshard in fsdp2_units(model, cfg.model.decoder_layer_class,
                                         reshard=cfg.fsdp is not FsdpStrategy.shard_grad_op):
            fully_shard(unit, reshard_after_forward=reshard, mp_policy=mp)
        return model, _optimizer(cfg, model, device), False
    if world > 1:  # DDP, and FSDP no_shard (which is DDP)
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return ddp, _optimizer(cfg, ddp.module, device), False
    return model, _optimizer(cfg, model, device), False


@contextlib.contextmanager
def _no_sync(engine: Any) -> Iterator[None]:
    """What accelerate's `no_sync` does to the engine (accelerate/accelerator.py `no_sync`): FSDP2's
    `set_requires_gradient_sync(False)` until the micro-batch is over (each unit keeps its unsharded gradient),
    DDP's and FSDP1's own `no_sync`; nothing for a module without either."""
    if hasattr(engine, "set_requires_gradient_sync"):
        engine.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            engine.set_requires_gradient_sync(True)
    else:
        with engine.no_sync() if hasattr(engine, "no_sync") else contextlib.nullcontext():
            yield


def fsdp2_units(model: Any, layer_class: str, *, reshard: bool) -> list[tuple[Any, bool | None]]:
    """The modules accelerate's FSDP2 calls `fully_shard` on, in its order, each with its reshard_after_forward
    (accelerate 1.16 utils/fsdp_utils.py `fsdp2_prepare_model`): every decoder layer (the transformer auto-wrap
    policy), then the input embedding alone unless tied to the head, then the tail, the final norm and the head
    (with a tied embedding between them) as one group kept gathered from forward into backward (False), then the
    root with None, which torch resolves to no reshard for the root (torch/distributed/fsdp/_fully_shard/
    _fsdp_state.py `_lazy_init`). The final norm is the last child of the base model whose class names a Norm, as
    accelerate's `_find_final_norm` finds it."""
    units: list[tuple[Any, bool | None]] = [(m, reshard) for m in model.modules() if type(m).__name__ == layer_class]
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = embed is not None and head is not None and embed.weight is head.weight
    if embed is not None and not tied:
        units.append((embed, reshard))
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else model
    norms = [m for _, m in base.named_children() if "Norm" in type(m).__name__] if base is not None else []
    tail = [m for m in (norms[-1] if norms else None, embed if tied else None, head) if m is not None]
    if tail:
        units.append((tail, False))
    units.append((model, None))
    return units


def run(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """One configuration: set up the process group, measure, write rank<R>.json, tear down."""
    import gc

    import torch.distributed as dist

    cfg = config_from_dict(spec["config"])
    _init(cfg)
    result = _measure(spec, cfg, out_dir)
    gc.collect()  # the measured model's DDP reducer holds the group: free it while the interpreter lives
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result


def run_many(spec: dict[str, Any], out_dir: Path) -> list[dict[str, Any]]:
    """`{"runs": [spec, ...]}`: several configurations (same world size) from one interpreter start, each
    written to out_dir/run<i>/rank<R>.json. Saves the start-up of torch, transformers and DeepSpeed per
    configuration (tens of seconds each on a small CPU), which dominates short timing runs.

    On the CPU each configuration runs in a child forked from this rank (`profiler.launcher.run_in_fork`) with
    a process group of its own, as a fresh process: one run after another in one process ran slower by what
    the earlier runs left behind (measured here: a ZeRO-2 step 0.61 s in a fresh process, 0.72-0.74 s after
    another DeepSpeed run in the same process), and its RSS peak included theirs. On CUDA (where a forked
    child cannot use a device its parent initialized) they run one after the other in this process."""
    runs = spec["runs"]
    cfgs = [config_from_dict(sub["config"]) for sub in runs]
    if all(is_cpu_plan(c) for c in cfgs):
        return _run_many_forked(runs, cfgs, out_dir)
    import gc

    import torch.distributed as dist

    _init(cfgs[0], force=True)
    results = []
    for i, (sub, cfg) in enumerate(zip(runs, cfgs, strict=True)):
        results.append(_measure(sub, cfg, out_dir / f"run{i}"))
        gc.collect()
        dist.barrier()
    dist.destroy_process_group()
    return results


def _run_many_forked(runs: list[dict[str, Any]], cfgs: list[TrainConfig], out_dir: Path) -> list[dict[str, Any]]:
    import importlib

    import torch  # noqa: F401 - imported once here, inherited by every forked configuration
    import transformers  # noqa: F401

    for name, wanted in (("deepspeed", any(c.engine is Engine.deepspeed for c in cfgs)),
                         ("peft", any(c.method is Method.lora for c in cfgs))):
        if wanted:
            importlib.import_module(name)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (sub, cfg) in enumerate(zip(runs, cfgs, strict=True)):
        run_dir = out_dir / f"run{i}"
        # the ranks' children meet in a file store of their own (both ranks' out_dir is one directory)
        store = out_dir / f"run{i}.store"
        code = run_in_fork(partial(_measure_in_own_group, sub, cfg, run_dir, store, rank, world))
        if code != 0:
            raise SystemExit(f"configuration {i} ({cfg}) failed on rank {rank} (exit {code})")
        results.append(json.loads((run_dir / f"rank{rank}.json").read_text()))
    return results


def _measure_in_own_group(sub: dict[str, Any], cfg: TrainConfig, run_dir: Path, store: Path, rank: int,
                          world: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    _measure(sub, cfg, run_dir)
    dist.barrier()
    dist.destroy_process_group()


def _device(cfg: TrainConfig) -> tuple[Any, bool]:
    import torch

    cuda = torch.cuda.is_available() and not is_cpu(cfg.cluster.gpu)
    local = int(os.environ.get("LOCAL_RANK", 0))
    return (torch.device("cuda", local) if cuda else torch.device("cpu")), cuda


def _init(cfg: TrainConfig, force: bool = False) -> None:
    import torch
    import torch.distributed as dist

    device, cuda = _device(cfg)
    if cuda:
        torch.cuda.set_device(device)
    if force or int(os.environ.get("WORLD_SIZE", 1)) > 1 or cfg.engine is not Engine.ddp:
        dist.init_process_group("nccl" if cuda else "gloo")


def _measure(spec: dict[str, Any], cfg: TrainConfig, out_dir: Path) -> dict[str, Any]:
    import torch

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device, cuda = _device(cfg)
    from profiler.tracker import StorageTracker

    tracker = StorageTracker() if not cuda and spec.get("track_memory", True) else None
    with tracker if tracker is not None else contextlib.nullcontext():
        model = _load_model(cfg, spec.get("model_path"), _param_dtype(cfg), device).to(device)
        engine, opt, is_ds = _wrap(cfg, model, device, world)
        g = torch.Generator().manual_seed(rank)
        vocab = cfg.model.vocab_size
        batches = [torch.randint(0, vocab, (cfg.micro_batch, cfg.seq_len), generator=g).to(device)
                   for _ in range(cfg.grad_accum)]
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if cfg.precision is Precision.bf16_mixed
                                   else torch.float16)
                    if cfg.precision in (Precision.bf16_mixed, Precision.fp16_mixed) and not is_ds
                    and cfg.engine is not Engine.fsdp else contextlib.nullcontext())
        step_times: list[float] = []
        device_used, non_torch = None, None  # the third reading (profiler/device_memory.py), max over step ends
        warmup, steps = int(spec.get("warmup_steps", 1)), int(spec.get("steps", 2))
        for i in range(warmup + steps):
            if i == warmup and cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            for k, ids in enumerate(batches):
                # DDP and FSDP reduce gradients on the last micro-batch only, as the HF Trainer's
                # `accelerator.no_sync` has them do (planner.engines.ddp `reductions_per_step` for their time,
                # planner.engines.fsdp `accumulates_unsharded_grads` for FSDP's memory), unless the plan reduces
                # every micro-batch (--sync-each-batch). DeepSpeed's engine knows its accumulation boundary
                # itself; its no_sync refuses ZeRO-2/3
                last = k == len(batches) - 1
                sync = contextlib.nullcontext() if last or is_ds or cfg.sync_each_batch else _no_sync(engine)
                # --activation-offload: every saved tensor in (pinned) host memory, as runner.train does
                offload = (torch.autograd.graph.save_on_cpu(pin_memory=cuda) if cfg.activation_offload
                           else contextlib.nullcontext())
                with sync, offload:
                    with autocast:
                        loss = engine(input_ids=ids, labels=ids).loss
                    if is_ds:
                        engine.backward(loss)
                        engine.step()
                    else:
                        loss.backward()
                del loss
            if not is_ds:
                # the Trainer clips every step (max_grad_norm 1.0 by default, as DeepSpeed's emitted
                # gradient_clipping does inside engine.step) and planner.timing counts it
                torch.nn.utils.clip_grad_norm_([p for p in engine.parameters() if p.requires_grad],
                                               DEFAULT_HYPER.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if cuda:
                end.record()
                torch.cuda.synchronize()
                elapsed = start.elapsed_time(end) / 1e3
                if i >= warmup:
                    used, outside = device_memory_in_use(torch.cuda)
                    device_used, non_torch = max(used, device_used or 0), max(outside, non_torch or 0)
            else:
                elapsed = time.perf_counter() - t0
            if i >= warmup:
                step_times.append(elapsed)
    peak_tensor = (torch.cuda.max_memory_allocated(device) if cuda
                   else tracker.finish().total_bytes if tracker is not None else 0)
    reserved = torch.cuda.max_memory_reserved(device) if cuda else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux (getrusage(2))
    step_time_s = statistics.median(step_times)
    tokens_per_s = cfg.micro_batch * cfg.seq_len * cfg.grad_accum * world / step_time_s
    peak_flops = peak_flops_per_s(cfg.cluster.gpu, cfg.precision)
    mfu = compute_mfu(tokens_per_s, model_flops_per_token(cfg), world, peak_flops) if peak_flops else None
    result = {"rank": rank, "world_size": world, "device": str(device), "config_name": str(cfg),
              "peak_allocated_bytes": int(peak_tensor), "peak_reserved_bytes": reserved,
              "device_used_bytes": device_used, "non_torch_bytes": non_torch, "peak_rss_bytes": rss,
              "step_times_s": step_times, "step_time_s": step_time_s, "tokens_per_s": tokens_per_s, "mfu": mfu,
              "versions": versions(cuda)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    return result


def versions(cuda: bool) -> dict[str, str]:
    import torch
    import transformers

    out = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("deepspeed", "peft"):  # read from the installed metadata: importing deepspeed prints to stdout
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    out["device"] = torch.cuda.get_device_name() if cuda else "CPU"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    if "runs" in spec:
        run_many(spec, args.out)
    else:
        run(spec, args.out)


if __name__ == "__main__":
    exit_worker(main)
