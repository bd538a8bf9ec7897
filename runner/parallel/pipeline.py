"""Pipeline parallelism through DeepSpeed's pipeline engine: the Hugging Face model's embedding, decoder layers and
norm + LM head become a `deepspeed.pipe.PipelineModule` of p stages, trained by `PipelineEngine.train_batch` on the
1F1B schedule (deepspeed/runtime/pipe/schedule.py, `TrainSchedule`; Narayanan et al. 2021, Sec. 2.2.1, which the
planner's bubble term models) with ZeRO-0/1 across the data-parallel replicas of each stage.

The Trainer cannot drive a pipeline engine (its forward is the whole schedule), so this module runs the loop the
Trainer would: the plan's micro-batch and accumulation (the engine's micro-batches per step), AdamW/SGD in the
Trainer's two parameter groups with its defaults and linear decay, gradient clipping from the ds_config,
metrics.jsonl rows, checkpoint-N/ folders that `--resume` continues, eval loss, and the trained model saved in Hugging
Face's sharded format (one safetensors file per stage plus model.safetensors.index.json), so `from_pretrained` loads
it like any other run.

Stages exchange one tensor, the hidden states (b, s, h). Decoder layers take their rotary embeddings and positions
from the sequence length; sequences are right-padded to the plan's seq_len (the engine sends tensor shapes once,
deepspeed/runtime/pipe/engine.py `first_output_send`), so causal attention alone keeps real tokens from seeing pads
and padded labels are -100. Layers are split so each stage holds an equal share of decoder layers
(`partition_method="type:DecoderPipe"`), the embedding on the first stage and the head on the last.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import PlanError
from planner.strategy import Attn, Method, Optimizer, Precision, TrainConfig

if TYPE_CHECKING:
    from runner.run_common import RunOptions

STATE_FILE = "trainer_state.json"  # the file `runner.run_common.latest_checkpoint` looks for in checkpoint-N/
CKPT_TAG = "pipeline"


def _modules() -> Any:
    """nn.Module subclasses defined when torch is imported (this module is importable without torch)."""
    import torch
    from torch import nn

    class EmbedPipe(nn.Module):
        def __init__(self, embed: nn.Module) -> None:
            super().__init__()
            self.embed_tokens = embed

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.embed_tokens(input_ids)

    class DecoderPipe(nn.Module):
        def __init__(self, layer: nn.Module, rotary: nn.Module, eager: bool) -> None:
            super().__init__()
            self.layer = layer
            self.rotary = rotary
            self.eager = eager

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            s = hidden.shape[1]
            pos = torch.arange(s, device=hidden.device).unsqueeze(0)
            mask = None
            if self.eager:
                # eager attention adds the mask to the scores; sdpa / flash apply is_causal when it is None
                mask = torch.full((s, s), torch.finfo(hidden.dtype).min, device=hidden.device).triu(1)[None, None]
            return self.layer(hidden, attention_mask=mask, position_ids=pos,
                              position_embeddings=self.rotary(hidden, pos))

    class HeadPipe(nn.Module):
        def __init__(self, norm: nn.Module, lm_head: nn.Module) -> None:
            super().__init__()
            self.norm = norm
            self.lm_head = lm_head

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.lm_head(self.norm(hidden))

    return EmbedPipe, DecoderPipe, HeadPipe


def pipeline_layers(model: Any, cfg: TrainConfig) -> list[Any]:
    """[embedding, decoder layer 0..L-1, norm + head] of a Llama-style causal LM (Llama, Mistral, Qwen2, Mixtral)."""
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) \
            or not hasattr(model, "lm_head"):
        raise PlanError(f"pipeline parallelism wraps Llama-style decoders (model.embed_tokens, .layers, .norm, "
                        f".rotary_emb, lm_head); {type(model).__name__} has another layout")
    if getattr(model.config, "tie_word_embeddings", False):
        raise PlanError("pipeline parallelism here does not tie the first stage's embedding to the last "
                        "stage's head: the model ties them")
    embed_cls, decoder_cls, head_cls = _modules()
    eager = cfg.attn is Attn.eager
    return [embed_cls(inner.embed_tokens), *(decoder_cls(layer, inner.rotary_emb, eager) for layer in inner.layers),
            head_cls(inner.norm, model.lm_head)]


def _loss_fn(vocab_size: int) -> Any:
    from transformers.loss.loss_utils import ForCausalLMLoss

    def loss(logits: Any, labels: Any) -> Any:
        # the same shifted token cross-entropy as LlamaForCausalLM's loss, mean over the micro-batch's tokens
        return ForCausalLMLoss(logits, labels, vocab_size)

    return loss


def ds_config(cfg: TrainConfig, on_cuda: bool) -> dict[str, Any]:
    """The emitted ds_config (planner.configs.ds_config), with 16-bit compute only where the device has it: on the CPU a
    mixed-precision plan trains in fp32, as the Trainer path does (runner.model.load_dtype)."""
    from planner.configs.ds_config import build_ds_config

    out = build_ds_config(cfg)
    out["bf16"]["enabled"] = on_cuda and cfg.precision in (Precision.bf16_mixed, Precision.bf16_true)
    out["fp16"]["enabled"] = on_cuda and cfg.precision is Precision.fp16_mixed
    return out


@dataclass(frozen=True, slots=True)
class MicroBatch:
    inputs: Any  # input_ids, for the first stage
    labels: Any  # for the loss on the last stage
    tokens: int  # non-padding tokens


def _collate(rows: list[Any], pad_id: int, seq_len: int) -> MicroBatch:
    import torch

    from runner.data import IGNORE_INDEX

    ids = [r.input_ids + [pad_id] * (seq_len - len(r.input_ids)) for r in rows]
    labels = [r.labels + [IGNORE_INDEX] * (seq_len - len(r.labels)) for r in rows]
    return MicroBatch(inputs=torch.tensor(ids), labels=torch.tensor(labels),
                      tokens=sum(len(r.input_ids) for r in rows))


def micro_batches(examples: list[Any], *, micro_batch: int, dp_rank: int, dp: int, seed: int, pad_id: int,
                  seq_len: int) -> Iterator[MicroBatch]:
    """Endless micro-batches of this data-parallel rank: each epoch a seeded permutation, dealt round-robin to
    the dp replicas (torch DistributedSampler's split), incomplete micro-batches dropped."""
    import torch

    if len(examples) < micro_batch * dp:
        raise PlanError(f"{len(examples)} training examples cannot fill one micro-batch of {micro_batch} on each "
                        f"of {dp} data-parallel replicas")
    epoch = 0
    while True:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        mine = order[dp_rank::dp]
        for i in range(0, len(mine) - micro_batch + 1, micro_batch):
            yield _collate([examples[j] for j in mine[i:i + micro_batch]], pad_id, seq_len)
        epoch += 1


def pipeline_optimizer(cfg: TrainConfig, module: Any, lr: float) -> Any:
    """The plan's optimizer over the stage's trained parameters in the Trainer's two groups (transformers trainer.py
    `create_optimizer`: the parameters `get_decay_parameter_names` names with the run's weight decay, the norms and
    biases without; profiler.param_groups.trainer_param_groups, which the profiler's worker builds too), with the
    Trainer's defaults (planner.configs.ds_config.DEFAULT_HYPER). The Trainer hands SGD the same groups. DeepSpeed
    drops a group left empty (a LoRA stage's second: runtime/engine.py `_configure_optimizer`); with bf16 the
    pipeline engine's BF16_Optimizer flattens each group on its own (runtime/bf16_optimizer.py, bf16_groups_flat)."""
    import torch

    from planner.configs.ds_config import DEFAULT_HYPER as hp
    from profiler.param_groups import trainer_param_groups

    groups = trainer_param_groups(module)
    if cfg.optimizer is Optimizer.adamw:
        return torch.optim.AdamW(groups, lr=lr, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay)
    if cfg.optimizer is Optimizer.sgd:
        return torch.optim.SGD(groups, lr=lr, momentum=hp.sgd_momentum)
    raise PlanError(f"pipeline runs adamw or sgd, not {cfg.optimizer.value}")


def pipeline_param_groups(cfg: TrainConfig) -> int:
    """The optimizer groups each stage's engine holds (pipeline_optimizer): the Trainer's two under full fine-tuning,
    since every stage trains decoder layers, whose norms take no weight decay; one with adapters, whose no-decay group
    is empty and which DeepSpeed drops."""
    return 2 if cfg.method is Method.full else 1


def saved_param_groups(checkpoint: Path) -> list[int]:
    """The parameter-group count of each optimizer state a pipeline checkpoint-N holds (deepspeed 0.19.8
    runtime/engine.py): the engine's file (mp_rank_XX_model_states.pt, `optimizer`: the torch optimizer's state_dict,
    or BF16_Optimizer's, whose `base_optimizer_state` is that; _common_checkpoint_state) and ZeRO's
    (*zero_pp_rank_*_optim_states.pt, `optimizer_state_dict`: DeepSpeedZeroOptimizer's or BF16_Optimizer's, with
    `base_optimizer_state` the torch state_dict, or one entry per group in an elastic checkpoint;
    _save_zero_checkpoint). The stages' weights (layer_XX-model_states.pt) are not read; the rest memory-mapped, and
    without importing deepspeed (_NoDeepSpeedUnpickler), which would log its accelerator detection."""
    import types

    import torch

    reader = types.SimpleNamespace(Unpickler=_NoDeepSpeedUnpickler, load=pickle.load, __name__="pickle")
    counts = []
    for path in sorted((checkpoint / CKPT_TAG).glob("*.pt")):
        if path.name.startswith("layer_"):
            continue
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True, pickle_module=reader)
        n = _group_count(state.get("optimizer") or state.get("optimizer_state_dict"))
        if n is not None:
            counts.append(n)
    return counts


class _Opaque:
    """What a DeepSpeed object in a checkpoint (its loss scaler, its config's enums) reads back as: the group counts
    are in plain dicts and lists."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _NoDeepSpeedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "deepspeed":
            return _Opaque
        return super().find_class(module, name)


def _group_count(state: Any) -> int | None:
    if not isinstance(state, dict):
        return None
    if "param_groups" in state:
        return len(state["param_groups"])
    base = state.get("base_optimizer_state")
    return len(base) if isinstance(base, list) else _group_count(base)


def check_resumable(cfg: TrainConfig, checkpoint: Path) -> None:
    """Refuse, in one line, a checkpoint whose stages' optimizers hold fewer groups than this runner builds: those
    ftplan wrote before the pipeline took the Trainer's two groups (one group of every trained parameter). DeepSpeed
    keeps each group's fp32 weights and optimizer moments as one flat tensor, partitioned over the data-parallel
    ranks (ZeRO-1 and BF16_Optimizer), and loads them group by group (the torch optimizer's load_state_dict refuses
    another group count; ZeRO-1's fails on the flat layout first), so there is no clean split of one into two."""
    counts = saved_param_groups(checkpoint)
    if counts and max(counts) < pipeline_param_groups(cfg):
        raise PlanError(f"--resume: {checkpoint} holds the pipeline optimizer in one parameter group, as ftplan wrote "
                        "it before pipeline runs took the Trainer's two (weight decay, and none on norms and biases); "
                        "DeepSpeed stores each group's optimizer state as one flat tensor, which cannot be split: "
                        "resume it with the ftplan version that wrote it, or start the plan afresh in another --output")


@dataclass(kw_only=True)
class _Run:
    """What the loop shares with its helpers."""

    cfg: TrainConfig
    opts: RunOptions
    engine: Any
    is_main: bool
    on_cuda: bool


def _save_checkpoint(run: _Run, step: int) -> None:
    import torch.distributed as dist

    from planner.atomic import write_text_atomic

    folder = run.opts.output / f"checkpoint-{step}"
    run.engine.save_checkpoint(str(folder), tag=CKPT_TAG)
    dist.barrier()
    if run.is_main:
        # written last: latest_checkpoint only takes folders that hold it, so a checkpoint cut short is skipped
        write_text_atomic(folder / STATE_FILE, json.dumps({"global_step": step, "engine": "deepspeed-pipeline"}) + "\n")


def _save_model(run: _Run, config: Any, names: dict[int, str], generation_config: Any) -> None:
    """Each stage's weights under their Hugging Face names into one safetensors file, and the index."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from planner.atomic import write_text_atomic

    eng, out = run.engine, run.opts.output
    p = eng.num_stages
    shard = f"model-{eng.stage_id + 1:05d}-of-{p:05d}.safetensors"
    tensors = {names[id(t)]: t.detach().contiguous() for t in eng.module.parameters()}
    if eng.grid.data_parallel_id == 0:
        tmp = out / f".{shard}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / shard)
    mine = {"shard": shard, "names": sorted(tensors),
            "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}
    per_rank: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, mine)
    if run.is_main:
        stages = {r["shard"]: r for r in per_rank}
        index = {"metadata": {"total_size": sum(r["bytes"] for r in stages.values())},
                 "weight_map": {n: r["shard"] for r in stages.values() for n in r["names"]}}
        write_text_atomic(out / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        config.save_pretrained(str(out))
        if generation_config is not None:
            generation_config.save_pretrained(str(out))
    dist.barrier()


def build_engine(cfg: TrainConfig, opts: RunOptions, model: Any, config: dict[str, Any]) -> Any:
    """The pipeline engine as the ds_config's "pipeline" section describes it (stages, partition, recompute), its
    optimizer in the Trainer's groups (pipeline_optimizer). `config`: ds_config's, which on the CPU trains in fp32;
    the measured-memory probe passes the emitted one (tests/validation/pipeline_step_probe.py)."""
    import deepspeed
    from deepspeed.pipe import PipelineModule
    from deepspeed.runtime.activation_checkpointing.checkpointing import non_reentrant_checkpoint
    from transformers import get_linear_schedule_with_warmup

    from planner.configs.ds_config import learning_rate

    layout = config["pipeline"]  # HF-style checkpointing recomputes whole layers; "selective" maps to it too
    pipe = PipelineModule(layers=pipeline_layers(model, cfg), num_stages=layout["stages"],
                          loss_fn=_loss_fn(model.config.vocab_size), partition_method=layout["partition"],
                          activation_checkpoint_interval=layout["activation_checkpoint_interval"],
                          activation_checkpoint_func=non_reentrant_checkpoint,
                          checkpointable_layers=["DecoderPipe"])
    params = [p for p in pipe.parameters() if p.requires_grad]
    lr = opts.learning_rate if opts.learning_rate is not None else learning_rate(cfg)
    optimizer = pipeline_optimizer(cfg, pipe, lr)
    # the Trainer's lr_scheduler_type="linear": warm-up, then linear decay to 0 at max_steps
    scheduler = get_linear_schedule_with_warmup(optimizer, opts.warmup_steps, opts.max_steps)
    engine, *_ = deepspeed.initialize(model=pipe, optimizer=optimizer, lr_scheduler=scheduler,
                                      model_parameters=params, config=config)
    return engine


def _eval_loss(run: _Run, eval_set: list[Any], pad_id: int) -> float | None:
    """Mean loss over the held-out examples, in micro-batches of the plan's size (the last one filled by
    cycling, since the engine's tensor shapes are fixed)."""
    if not eval_set:
        return None
    mb = run.cfg.micro_batch
    n = math.ceil(len(eval_set) / mb)
    rows = [eval_set[i % len(eval_set)] for i in range(n * mb)]
    batches = [_collate(rows[i * mb:(i + 1) * mb], pad_id, run.cfg.seq_len) for i in range(n)]
    loss = run.engine.eval_batch(iter((b.inputs, b.labels) for b in batches), num_micro_batches=n)
    return float(loss)


def _layout(run: _Run, unsharded_bytes: int) -> dict[str, Any]:
    import torch.distributed as dist

    eng = run.engine
    parts = [int(x) for x in eng.module.parts]  # layer index bounds per stage over [embed, decoders..., head]
    mine = {"stage": eng.stage_id,
            "bytes": sum(p.numel() * p.element_size() for p in eng.module.parameters())}
    per_rank: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, mine)
    n_layers = run.cfg.model.num_layers
    # decoder layers are indices 1..L of the pipeline's layer list
    stage_layers = [[max(0, a - 1), min(n_layers, b - 1)] for a, b in zip(parts, parts[1:], strict=False)]
    return {"parameter_bytes": unsharded_bytes, "rank_parameter_bytes": [r["bytes"] for r in per_rank],
            "rank_stage": [r["stage"] for r in per_rank], "stage_decoder_layers": stage_layers}


def _train_steps(run: _Run, batches: Iterator[MicroBatch], start: int, writer: Any,
                 probe: Any) -> tuple[float, float, int]:
    """Steps start+1..max_steps; returns (summed loss, summed step seconds, summed tokens)."""
    import torch
    import torch.distributed as dist

    from planner.compute import mfu
    from runner import metrics as mt

    cfg, opts, eng = run.cfg, run.opts, run.engine
    loss_sum = time_sum = 0.0
    tokens_sum = 0
    probe.step_begin_clock()
    for step in range(start + 1, opts.max_steps + 1):
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        lr = eng.get_lr()[0]
        t0 = time.perf_counter()
        loss = float(eng.train_batch(iter((m.inputs, m.labels) for m in micro)))
        dt = time.perf_counter() - t0
        probe.step_end()
        count = torch.tensor(sum(m.tokens for m in micro))
        dist.all_reduce(count)
        tokens = int(count) // cfg.pp  # every stage of a pipeline counted its replica's batch
        loss_sum, time_sum, tokens_sum = loss_sum + loss, time_sum + dt, tokens_sum + tokens
        row: dict[str, Any] = {"step": step, "step_time_s": dt, "tokens": tokens, "tokens_per_s": tokens / dt,
                               "mfu": mfu(tokens / dt, writer.flops_token, cfg.world_size, writer.peak_flops),
                               "peak_memory_bytes": mt.peak_memory_bytes(run.on_cuda), "loss": loss, "lr": lr}
        norm = eng.get_global_grad_norm()
        if norm is not None:
            row["grad_norm"] = float(norm)
        writer.write(row)
        if step % opts.save_steps == 0 or step == opts.max_steps:
            _save_checkpoint(run, step)
    return loss_sum, time_sum, tokens_sum


@dataclass(kw_only=True)
class _Writer:
    """metrics.jsonl rows and TensorBoard scalars from rank 0."""

    path: Path
    tb: Any
    flops_token: float
    peak_flops: float
    is_main: bool

    def write(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key in ("loss", "lr", "tokens_per_s", "mfu", "peak_memory_bytes", "grad_norm"):
                if key in row:
                    self.tb.add_scalar(f"train/{key}", row[key], row["step"])


def run_pipeline(cfg: TrainConfig, opts: RunOptions, *, on_cuda: bool) -> dict[str, Any]:
    """Train a PP > 1 plan in this process (one rank of torchrun's group); returns the summary on every rank."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from planner.compute import model_flops_per_token, peak_flops_per_s
    from runner.memory_probe import MemoryProbe, gather
    from runner.model import ModelOptions, load_model, load_tokenizer, model_source
    from runner.run_common import checkpoint_step, latest_checkpoint, prepare_data, start_metrics, write_run_files

    deepspeed.init_distributed(dist_backend="nccl" if on_cuda else "gloo")
    src = model_source(opts.model_path)
    tokenizer = load_tokenizer(src)
    train_set, eval_set = prepare_data(cfg, opts, tokenizer)
    resume_from = latest_checkpoint(opts.output) if opts.resume else None
    if resume_from is not None:
        check_resumable(cfg, resume_from)  # also here: launch.sh's torchrun line starts ranks without `ftplan run`
    start = checkpoint_step(resume_from)
    torch.manual_seed(opts.seed)
    probe = MemoryProbe(on_cuda=on_cuda, rank=dist.get_rank())  # RSS baseline before the model
    model = load_model(cfg, src, ModelOptions(rope_scaling=opts.rope_scaling, on_cuda=on_cuda))
    names = {id(p): n for n, p in model.named_parameters()}
    unsharded_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config, generation_config = model.config, getattr(model, "generation_config", None)
    engine = build_engine(cfg, opts, model, ds_config(cfg, on_cuda))
    del model  # the other stages' layers go with it
    run = _Run(cfg=cfg, opts=opts, engine=engine, is_main=dist.get_rank() == 0, on_cuda=on_cuda)
    metrics_path = start_metrics(opts.output, resume_from, is_main=run.is_main)
    if resume_from is not None:
        engine.load_checkpoint(str(resume_from), tag=CKPT_TAG, load_optimizer_states=True,
                               load_lr_scheduler_states=True)
    batches = micro_batches(train_set, micro_batch=cfg.micro_batch, dp_rank=engine.grid.data_parallel_id,
                            dp=engine.grid.data_parallel_size, seed=opts.seed, pad_id=tokenizer.pad_token_id,
                            seq_len=cfg.seq_len)
    for _ in range(start * cfg.grad_accum):  # the micro-batches the resumed checkpoint already trained on
        next(batches)
    tb = None
    if run.is_main:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(log_dir=str(opts.output / "runs"), flush_secs=30)
    writer = _Writer(path=metrics_path, tb=tb, flops_token=model_flops_per_token(cfg),
                     peak_flops=peak_flops_per_s(cfg.cluster.gpu, cfg.precision), is_main=run.is_main)
    t_start = time.perf_counter()
    probe.start(engine.module)  # this stage's weights; the first stage's forward sees the (b, s) token batches
    try:
        loss_sum, time_sum, tokens_sum = _train_steps(run, batches, start, writer, probe)
    finally:
        probe.stop()
    runtime = time.perf_counter() - t_start
    ranks = gather(probe.m)  # every rank's memory and step figures, for rank 0's summary
    if tb is not None:
        tb.close()
    eval_loss = _eval_loss(run, eval_set, tokenizer.pad_token_id)
    summary: dict[str, Any] = {
        "plan": str(cfg), "steps": opts.max_steps, "resumed_from_step": start,
        "train_loss": loss_sum / max(1, opts.max_steps - start), "train_runtime_s": runtime,
        "tokens_per_s_logged": tokens_sum / time_sum if time_sum else 0.0, "world_size": cfg.world_size,
        "engine": "deepspeed-pipeline", **_layout(run, unsharded_bytes)}
    if eval_loss is not None:
        summary["eval_loss"] = eval_loss
        summary["eval_perplexity"] = math.exp(min(eval_loss, 50.0))
    _save_model(run, config, names, generation_config)
    if run.is_main:
        write_run_files(cfg, ranks, summary, opts=opts, tokenizer=tokenizer, src=src, on_cuda=on_cuda)
    return summary
