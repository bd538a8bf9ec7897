"""Which plans `ftplan run` executes, as a table of rules: each row names a combination the runner does not run
and says why, in the words a user reads. The planner ranks every valid plan (a plan can be valid for its engine
and still be one the runner has no code path for); `plan` and `tune` mark each plan with `runnable(cfg)` and pick
a runnable winner unless asked to rank everything.

Pure and import-free beyond planner.strategy: planning must not import the runner, so the runner's abilities
are restated here as data, and `runner.train.validate_inputs` refuses a plan with the same reasons.

The engines behind the rules (what each one really runs, measured on 2 gloo processes on the CPU):
- TP > 1: DeepSpeed AutoTP training through the transformers Trainer (ds_config `tensor_parallel.autotp_size`;
  transformers/integrations/deepspeed.py calls `deepspeed.tp_model_init`, accelerate's `_prepare_deepspeed`
  builds the TP mesh and feeds every rank of a TP group the same batch).
- PP > 1: DeepSpeed's pipeline engine (`deepspeed.pipe.PipelineModule`, 1F1B `TrainSchedule`) over the model's
  Hugging Face decoder layers (runner/parallel/pipeline.py).
"""

from __future__ import annotations

from collections.abc import Callable

from planner.rl.settings import Generation
from planner.runnable_stages import FUSED_LOSS_REFUSAL, PPO_REFUSAL, SERVER_REFUSAL, TRL_STAGES, trl_refuses_fused_loss
from planner.strategy import Engine, FsdpStrategy, Method, Offload, Optimizer, PipeSchedule, Stage, TrainConfig

# decoder layers with Llama's interface (hidden states in and out, rotary embeddings from the model's rotary_emb)
PIPELINE_LAYER_CLASSES = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "MixtralDecoderLayer")

Rule = tuple[str, Callable[[TrainConfig], bool]]  # (why the runner does not run it, when the rule applies)


RULES: tuple[Rule, ...] = (
    # stages (planner/runnable_stages.py): pt / sft through the Trainer, rm / dpo through TRL's trainers with every
    # method and optimizer (bitsandbytes' NF4 layers and 8-bit / paged optimizers run on its CPU backend too)
    (PPO_REFUSAL, lambda c: c.stage is Stage.ppo),
    (SERVER_REFUSAL, lambda c: c.stage in (Stage.grpo, Stage.rloo) and c.rollout.generation is Generation.vllm_server),
    ("stage '{stage}' runs through TRL's trainers, which take data parallelism only (DDP, FSDP, DeepSpeed ZeRO): "
     "re-plan with --tp 1 --pp 1", lambda c: c.stage in TRL_STAGES and (c.tp > 1 or c.pp > 1)),
    (FUSED_LOSS_REFUSAL, trl_refuses_fused_loss),
    # tensor parallelism: DeepSpeed AutoTP through the Trainer
    ("TP with LoRA: DeepSpeed AutoTP shards the layers after peft wrapped them and ZeRO's parameter map then "
     "fails (KeyError in stage_1_and_2 _create_param_mapping); TP runs full fine-tuning",
     lambda c: c.tp > 1 and c.method is not Method.full),
    ("TP and PP together: DeepSpeed's pipeline engine and AutoTP are not combined by the runner",
     lambda c: c.tp > 1 and c.pp > 1),
    ("TP with offload: DeepSpeed's CPU Adam over AutoTP shards is not run by the runner",
     lambda c: c.tp > 1 and c.offload is not Offload.none),
    # pipeline parallelism: DeepSpeed's pipeline engine over the decoder layers
    ("PP runs full fine-tuning (LoRA adapters are not wrapped into pipeline stages)",
     lambda c: c.pp > 1 and c.method is not Method.full),
    ("PP with offload: DeepSpeed's pipeline engine runs ZeRO-0/1 without offload here",
     lambda c: c.pp > 1 and c.offload is not Offload.none),
    ("PP needs DeepSpeed's pipeline engine (--zero 0 or 1)",
     lambda c: c.pp > 1 and c.engine is not Engine.deepspeed),
    ("interleaved pipeline schedule: DeepSpeed's pipeline engine runs 1F1B only "
     "(deepspeed/runtime/pipe/schedule.py, TrainSchedule)",
     lambda c: c.pp > 1 and (c.pp_schedule is PipeSchedule.interleaved or c.virtual_stages > 1)),
    ("PP wraps Llama-style decoder layers ({layer_classes}); {model} has {layer_class}",
     lambda c: c.pp > 1 and c.model.decoder_layer_class not in PIPELINE_LAYER_CLASSES),
    ("PP with tied embeddings: the runner does not tie the first stage's embedding to the last stage's head",
     lambda c: c.pp > 1 and c.model.tie_embeddings),
    ("PP runs adamw or sgd (the pipeline runner builds the optimizer itself)",
     lambda c: c.pp > 1 and c.optimizer not in (Optimizer.adamw, Optimizer.sgd)),
    # FSDP through the Trainer needs accelerate's FSDP state, which it sets up only on GPU-like devices
    # (accelerate/state.py AcceleratorState.__init__: DistributedType.FSDP is chosen inside the MULTI_GPU / NPU / XPU
    # ... branch; MULTI_CPU never becomes FSDP), so on the CPU the Trainer would train the plan as DDP, unsharded
    # (measured: a 2-process run's sharded parameter bytes 0 on both ranks, its peak DDP's to 0.01%)
    ("FSDP on the CPU: accelerate sets FSDP up only on GPUs (accelerate/state.py), so the Trainer would train "
     "this plan as DDP; run it on GPUs, or plan DDP / DeepSpeed ZeRO for the CPU (`ftplan profile run` measures "
     "FSDP2 on the CPU with its own loop)",
     lambda c: c.engine is Engine.fsdp and c.world_size > 1 and c.cluster.gpu.name == "CPU"),
    # FSDP2's hybrid sharding is accelerate's parallelism_config (a 2-D mesh); the runner passes
    # TrainingArguments.fsdp, which takes full_shard / shard_grad_op for FSDP2
    ("FSDP2 hybrid sharding runs from the emitted accelerate config (parallelism_config), not `ftplan run`: "
     "launch it with `accelerate launch --config_file accelerate.yaml`",
     lambda c: c.engine is Engine.fsdp and c.fsdp is FsdpStrategy.hybrid_shard and c.fsdp_version == 2),
    # expert parallelism: transformers 5.25 runs it from DistributedConfig(ep_size=..., fsdp_size=...) on its own
    # FSDP2 device mesh (transformers/distributed/expert_parallel.py, all-to-all token dispatch); the runner
    # drives the Trainer's FSDP / DeepSpeed, which build no expert-parallel group
    # packed documents: runner/data.py feeds the Trainer one example per row, padded; it packs nothing
    ("packed documents (--doc-len): `ftplan run` trains unpacked, padded examples; run the plan from the emitted "
     "llamafactory.yaml (neat_packing: true, FlashAttention-2)", lambda c: c.doc_len is not None),
    ("expert parallelism (EP{ep}) runs in transformers' DistributedConfig(ep_size={ep}) with its own FSDP2 mesh, which "
     "ftplan run does not set up: ranked for comparison, run it with transformers' distributed API",
     lambda c: c.ep > 1),
)


def unrunnable_reasons(cfg: TrainConfig) -> list[str]:
    """Why `ftplan run` does not execute `cfg` (empty when it does)."""
    fields = {"stage": cfg.stage.value, "STAGE": cfg.stage.value.upper(), "optimizer": cfg.optimizer.value,
              "method": cfg.method.value, "quant": cfg.quant.value, "model": cfg.model.name,
              "layer_class": cfg.model.decoder_layer_class, "layer_classes": ", ".join(PIPELINE_LAYER_CLASSES),
              "ep": cfg.ep}
    return [reason.format(**fields) for reason, applies in RULES if applies(cfg)]


def runnable(cfg: TrainConfig) -> bool:
    return not any(applies(cfg) for _, applies in RULES)


def runnable_first(plans: list, key: Callable[[object], TrainConfig] = lambda e: e.config) -> list:
    """`plans` (best first) with the runnable ones ahead, each group keeping its order: the default winner is
    the best plan `ftplan run` executes."""
    return sorted(plans, key=lambda e: not runnable(key(e)))
