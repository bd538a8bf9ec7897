"""Worker for test_memory_sharded_measured.py: one rank of a 2-process gloo run of a sharded engine on a small
Llama (fp32, SGD-free AdamW), live tensor bytes counted by profiler.tracker.StorageTracker over the second step.

Engines: fsdp1 (FullyShardedDataParallel, FULL_SHARD, one unit per decoder layer and the root, use_orig_params,
limit_all_gathers, BACKWARD_PRE; device_id=cpu), fsdp2 (fully_shard in accelerate's units,
profiler.worker.fsdp2_units), zero3 and zero3-offload
(DeepSpeed 0.19.8 on the CPU accelerator, the planner's own ds_config; offload keeps a torch AdamW through
zero_force_ds_cpu_optimizer false, so no CPU-Adam build), zero3-lora (Qwen's finetune.py path under ZeRO-3: peft
LoRA r 16 on every linear, the base frozen, transformers' reentrant gradient checkpointing with
enable_input_require_grads, two micro-batches accumulated; `LORA_R` x 512 lies above the persistence threshold as
Qwen-72B's r 64 x 8192 does). Its LoRA dropout is 0 (Qwen's is 0.05): on the CPU `torch.nn.functional.dropout` draws
its mask in the input's dtype (aten/src/ATen/native/Dropout.cpp: the fused kernel with a 1-byte mask is taken on
CUDA only), four bytes per element where a GPU keeps one, a CPU artifact the planner's GPU figures do not carry.
`freeze` freezes the embedding and the first decoder
layer (the planner's --freeze-layers 1): under FSDP1 the root unit then mixes a frozen embedding with the trained
head and norm. fsdp1-rm, fsdp2-rm and zero3-rm train a reward model the way TRL's RewardTrainer does:
LlamaForSequenceClassification with num_labels=1 (a `score` of h weights, no LM head), a chosen and a rejected row per
sample in one batch, loss -logsigmoid(r_chosen - r_rejected) (trl/trainer/reward_trainer.py `compute_loss`), on
Llama-2's 32000-token vocabulary so that an LM head counted where there is none would show. fsdp1-tied ties that
vocabulary's head to the embedding.

Usage: python -m torch.distributed.run --nproc_per_node 2 sharded_probe.py ENGINE:FREEZE:GRAD_ACCUM:PORT ... (env:
DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1). Each rank imports the libraries once, then runs every case in a process
forked from itself (forked_cases.py), the cases one after the other; the two ranks' children of a case meet in a
gloo group of their own on PORT (a free port the caller chose; rank 0's child holds the store). Rank 0 prints one
JSON line per case, its "case" with:
- before: live bytes before the second step's forward (states and persistent buffers);
- grads_at_backward: bytes of .grad storages when the last micro-batch's backward starts;
- backward_peak, after_backward, step_peak: the tracker's peak of forward + backward, the live bytes after backward,
  and the peak of the optimizer step (zero_grad included);
- sharded_grad_bytes: the gradient bytes held after backward (FSDP: each FlatParameter's or DTensor's .grad);
- persistent_numel (ZeRO-3): elements of parameters DeepSpeed keeps whole (`ds_persist`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from profiler.tracker import StorageTracker

CONFIG = dict(vocab_size=2048, hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=8, max_position_embeddings=256, tie_word_embeddings=False)
MICRO_BATCH, SEQ = 2, 128
# fsdp2-vocab: Llama-2's 32000-token vocabulary on the same layers, the embedding and head then 4/5 of the model as in
# small models with large vocabularies, so the units FSDP2 gathers and reduces apart from the layers (the tail, the
# embedding: planner.engines.fsdp2_traffic outside_units, planner.engines.fsdp end_items) set the peak
VOCAB = {"fsdp2-vocab": 32000, "fsdp1-vocab": 32000, "fsdp1-rm": 32000, "fsdp2-rm": 32000, "fsdp1-tied": 32000,
         "zero3-rm": 32000}
# fsdp1-tied: the large vocabulary with the head tied to the embedding (as Llama 3.2 1B / 3B), one V x H in FSDP1's root
TIED = {"fsdp1-tied"}
# token 0 pads: the reward model pools each row at its last token that is not padding (GenericForSequenceClassification)
PAD = 0


def is_reward_model(engine: str) -> bool:
    return engine.endswith("-rm")


def model_config(engine: str) -> dict:
    return {**CONFIG, "vocab_size": VOCAB.get(engine, CONFIG["vocab_size"]), "tie_word_embeddings": engine in TIED}
LORA_R, LORA_DROPOUT = 16, 0.0
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _grad_bytes(params: list[torch.nn.Parameter]) -> int:
    seen, total = set(), 0
    for p in params:
        g = p.grad
        if g is None:
            continue
        g = getattr(g, "_local_tensor", g)
        st = g.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += st.nbytes()
    return total


def _wrap(engine: str, model: torch.nn.Module) -> tuple[torch.nn.Module, object, bool]:
    if engine.startswith("fsdp1"):
        import functools

        from torch.distributed.fsdp import BackwardPrefetch, ShardingStrategy
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
        wrapped = FSDP(model, device_id=torch.device("cpu"), auto_wrap_policy=policy, use_orig_params=True,
                       sharding_strategy=ShardingStrategy.FULL_SHARD, limit_all_gathers=True,
                       backward_prefetch=BackwardPrefetch.BACKWARD_PRE)
        return wrapped, torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad]), False
    if engine.startswith("fsdp2"):
        from torch.distributed.fsdp import fully_shard

        from profiler.worker import fsdp2_units

        for unit, reshard in fsdp2_units(model, LlamaDecoderLayer.__name__, reshard=True):
            fully_shard(unit, reshard_after_forward=reshard)
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]), False
    import deepspeed

    from planner.build import build_config
    from planner.configs.ds_config import build_ds_config
    from planner.models import spec_from_hf_config

    offload = engine == "zero3-offload"
    from planner.strategy import GradCkpt, Method, Offload, Precision

    lora = dict(method=Method.lora, lora_r=LORA_R, lora_targets=",".join(LORA_TARGETS), grad_ckpt=GradCkpt.full)
    cfg = build_config(model="llama-2-7b", gpus="2xCPU", zero=3, precision=Precision.fp32,
                       offload=Offload.all if offload else Offload.none, micro_batch=MICRO_BATCH, seq_len=SEQ,
                       check=False, **(lora if engine == "zero3-lora" else {"method": Method.full}))
    import dataclasses

    cfg = dataclasses.replace(cfg, model=spec_from_hf_config({"model_type": "llama", **model_config(engine)},
                                                              name="probe"))
    ds = build_ds_config(cfg)
    ds.pop("optimizer", None)
    ds.pop("scheduler", None)
    ds.update(zero_allow_untested_optimizer=True, zero_force_ds_cpu_optimizer=False, steps_per_print=10**9)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=False)
    engine_, opt, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    return engine_, opt, True


def main(engine: str, freeze: bool, grad_accum: int) -> dict:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    if is_reward_model(engine):
        model = LlamaForSequenceClassification(LlamaConfig(**model_config(engine), num_labels=1, pad_token_id=PAD))
    else:
        model = LlamaForCausalLM(LlamaConfig(**model_config(engine)))
    if freeze:  # as --freeze-layers 1: the embedding and the first decoder layer
        model.model.embed_tokens.requires_grad_(False)
        model.model.layers[0].requires_grad_(False)
    if engine == "zero3-lora":  # as Qwen's finetune.py: peft's LoRA, then the Trainer's checkpointing switches
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=16, lora_dropout=LORA_DROPOUT,
                                                 target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
        model.train()
    module, opt, is_ds = _wrap(engine, model)
    params = list(module.parameters())
    g = torch.Generator().manual_seed(dist.get_rank())
    vocab = model_config(engine)["vocab_size"]
    low = PAD + 1 if is_reward_model(engine) else 0  # no padding in a reward model's rows
    batches = [torch.randint(low, vocab, (MICRO_BATCH, SEQ), generator=g) for _ in range(grad_accum)]
    out: dict = {}
    for _ in range(2):  # the second step: every state exists
        gc.collect()
        tracker = StorageTracker()
        tracker.track_all(o for o in gc.get_objects() if isinstance(o, torch.Tensor))
        before = tracker.current_bytes
        with tracker:
            for k, ids in enumerate(batches):
                if engine.startswith("fsdp2"):  # as the Trainer's accelerator.no_sync before the last micro-batch
                    module.set_requires_gradient_sync(k == len(batches) - 1)
                tracker.label = "forward"
                if is_reward_model(engine):  # rows 0 and 1: the chosen and the rejected answer of one sample
                    rewards = module(input_ids=ids).logits.squeeze(-1)
                    loss = -torch.nn.functional.logsigmoid(rewards[0::2] - rewards[1::2]).mean()
                    del rewards
                else:
                    loss = module(input_ids=ids, labels=ids).loss
                if k == len(batches) - 1:
                    out["grads_at_backward"] = _grad_bytes(params)
                tracker.label = "backward"
                if is_ds:
                    module.backward(loss)
                else:
                    loss.backward()
                del loss
            peak = tracker.finish()
            backward_peak, out["backward_peak_label"] = peak.total_bytes, peak.label
            after_backward = tracker.current_bytes
            out["sharded_grad_bytes"] = _grad_bytes(params)
            tracker.reset_peak()
            tracker.label = "step"
            if is_ds:
                module.step()
            else:
                opt.step()
                opt.zero_grad(set_to_none=True)
            step_peak = tracker.finish().total_bytes
        out.update(before=before, backward_peak=backward_peak, after_backward=after_backward, step_peak=step_peak)
    if is_ds:
        out["persistent_numel"] = sum(p.ds_numel for p in params if getattr(p, "ds_persist", False))
    gc.collect()
    with contextlib.suppress(Exception):
        dist.barrier()
    dist.destroy_process_group()
    return out


def _case(case: str) -> None:
    engine, freeze, grad_accum, port = case.split(":")
    # this case's own group: rank 0's child serves the store on PORT (not torchrun's agent store, which the
    # children of every case would share)
    os.environ.update(MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE="False")
    out = main(engine, freeze == "1", int(grad_accum))
    if int(os.environ["RANK"]) == 0:
        print(json.dumps({"case": case, **out}), flush=True)


def _preload() -> None:
    """The engines' libraries, imported once before the cases fork; so is the CPU accelerator's shared-memory
    collectives op that deepspeed.comm loads in every process (its JIT load runs a ninja check each time), and the
    module ZeRO's optimizer check imports (it compiles a Muon step with torch.compile: 3 s)."""
    import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    import peft  # noqa: F401
    from deepspeed.comm.torch import build_shm_op  # deepspeed.comm's `torch` attribute is the torch package

    build_shm_op()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: forked_cases.py
    from forked_cases import run_forked

    _preload()
    run_forked(sys.argv[1:], _case)
