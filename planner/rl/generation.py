"""Generation in an online RL step: what the engine holds and how long decoding takes.

Engines, as TRL 1.16 configures them (trl/trainer/grpo_trainer.py `_generate_single_turn`,
trl/generation/vllm_generation.py `VLLMGeneration`):
- transformers: each training rank calls `model.generate` once on its whole generation batch (left-padded
  prompts), with a DynamicCache holding K and V of every layer for every sequence; under ZeRO-3 the weights are
  gathered whole first (`ds3_gather_for_generation`, unwrap_model_for_generation), under FSDP2 every forward
  gathers its units again (trl/distributed.py: summon_full_params is a no-op for FSDP2);
- vLLM colocated: one `LLM(..., gpu_memory_utilization=u, max_num_seqs=per_device_train_batch_size x tp x
  steps_per_generation, max_num_batched_tokens=4096, distributed_executor_backend="external_launcher")` per rank
  (per group of `vllm_tensor_parallel_size` ranks, each generating the group's prompts); vLLM takes u x the GPU's
  memory for its weights, activations and a preallocated KV cache (vLLM's gpu_memory_utilization: "the fraction
  of GPU memory to be used for the model executor"), held for the whole run unless sleep mode frees it between
  generations (`llm.sleep(level=2)`: weights and KV cache discarded, re-pushed from the trainer at wake-up);
- vLLM server: `trl vllm-serve` on GPUs of its own (data-parallel engines of --tensor-parallel-size GPUs each,
  gpu_memory_utilization 0.9 by default) generates the whole step's prompts while the trainer waits; rank 0
  broadcasts the new weights to it over NCCL (VLLMClient.update_named_params) after each optimizer step.

Decoding (one token for every running sequence) is bound by memory traffic: each step reads every weight once
and each sequence's KV cache so far (the roofline model of Williams et al. 2009 applied to decoding, as in
Pope et al. 2022, "Efficiently Scaling Transformer Inference", Sec. 2.1); prefill is bound by FLOPs
(2 x parameters per token, Kaplan et al. 2020). Traffic runs at the datasheet bandwidth here, FLOPs at the
planner's compute efficiency (planner.compute): an upper bound on decoding speed until a GPU run calibrates
it.

Completion lengths (planner.rl.lengths). Without `completion_len_mean` (or with it at the cap) every completion
runs `completion_len` tokens. With a mean below the cap, completions stop at EOS and:
- decoding lasts until the longest of a batch stops, every step reading every weight: transformers' `generate`
  keeps feeding finished rows (pad tokens, generation/utils.py `_sample`: `unfinished_sequences`) until all are done
  or max_new_tokens, each step over the whole batch; vLLM's scheduler runs continuous batching (Yu et al. 2022,
  Orca, iteration-level scheduling; Kwon et al. 2023, PagedAttention): a finished request leaves the running
  batch and frees its KV blocks, a waiting one takes its place (vllm/v1/core/sched/scheduler.py `schedule`,
  `_free_request`), so its KV reads and per-token FLOPs follow the mean length while its weight reads follow the
  steps: (waves - 1) x the mean while requests wait, then the longest of the last wave;
- the training step waits for the slowest engine (TRL gathers every process's completions and rewards before it
  trains), so the last wave's longest is that of every engine's last wave together;
- memory still plans every sequence at full length (vLLM's max_model_len, the longest batch's peak).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner import compute as cp
from planner.comm import DEFAULT_COMM_EFFICIENCY, Group, allgather_time_s
from planner.gpus import is_cpu
from planner.kernels import OPS_PER_LAYER_FORWARD, OPS_PER_LORA_LINEAR
from planner.models import ModelSpec
from planner.params import active_params, adapted_count, quantizable_params, total_params
from planner.rl import lengths
from planner.rl.settings import Generation, lengths_vary, prompt_len
from planner.states import activation_dtype_bytes, quant_bytes_per_param
from planner.strategy import Engine, Method, Precision, Quant, TrainConfig, ZeroStage

# vLLM's chunked-prefill budget as TRL sets it for colocated engines (vllm_generation.py: max_num_batched_tokens=4096)
VLLM_BATCHED_TOKENS = 4096
# `trl vllm-serve`'s default gpu_memory_utilization (trl/scripts/vllm_serve.py ScriptArguments)
VLLM_SERVER_MEMORY = 0.9
# fp32 copies of the last position's logits that transformers' sampling loop keeps at once: the float copy of
# outputs.logits[:, -1], the processed scores (temperature / top-k / top-p warpers return new tensors) and the
# softmax probabilities (transformers/generation/utils.py `_sample`)
SAMPLING_FP32_COPIES = 3
# eager ops of one decoding step outside the layers: embedding, final norm, head, the logits processors,
# softmax, multinomial, the stopping criteria and cache bookkeeping (generation/utils.py `_sample`)
GENERATE_STEP_OPS = 30


def kv_bytes_per_token(m: ModelSpec, elem_bytes: float) -> float:
    """K and V of every layer for one token: 2 x L x kv_heads x head_dim x bytes (transformers' DynamicCache;
    vLLM's paged cache holds the same per token)."""
    return 2.0 * m.num_layers * m.kv_dim * elem_bytes


def compute_bytes(cfg: TrainConfig) -> int:
    """Element size of generation: the compute dtype (accelerate's autocast wraps the model's forward, so
    `generate` under mixed precision runs and caches in 16 bits; fp32 plans in fp32)."""
    return activation_dtype_bytes(cfg.precision)


def inference_weight_bytes(cfg: TrainConfig, m: ModelSpec | None = None) -> float:
    """The policy's weights as an inference engine holds them: 16-bit, or for QLoRA 4-bit linears (TRL starts vLLM
    with quantization="bitsandbytes" when the model holds Linear4bit modules) and 16-bit others; fp32 plans fp32."""
    m = m or cfg.model
    e = 4.0 if cfg.precision is Precision.fp32 else 2.0
    total = float(total_params(m))
    if cfg.quant is Quant.nf4:
        q = float(quantizable_params(m))
        return (total - q) * e + q * quant_bytes_per_param(cfg.quant, cfg.double_quant)
    return total * e


def rank_generation_batch(cfg: TrainConfig) -> int:
    """Completions one training rank generates per generation: per_device_train_batch_size x steps_per_generation
    (GRPOConfig: generation_batch_size = per_device x processes x steps_per_generation)."""
    return cfg.micro_batch * cfg.grad_accum * cfg.generation_steps


def train_world(cfg: TrainConfig) -> int:
    return cfg.world_size


def engines(cfg: TrainConfig) -> int:
    """vLLM engines generating in parallel: one per TP group of training ranks (colocated), or the server's
    data-parallel replicas; transformers: one per rank."""
    r = cfg.rollout
    if r.generation is Generation.vllm_server:
        return max(1, r.vllm_server_gpus // r.vllm_tp)
    if r.generation is Generation.vllm_colocate:
        return max(1, cfg.world_size // r.vllm_tp)
    return cfg.world_size


def engine_tp(cfg: TrainConfig) -> int:
    return 1 if cfg.rollout.generation is Generation.transformers else cfg.rollout.vllm_tp


def engine_batch(cfg: TrainConfig) -> int:
    """Sequences one engine generates per generation: its rank's batch (transformers), its TP group's prompts
    (colocated: all_gather_object over the group), or its share of every rank's (server)."""
    per_rank = rank_generation_batch(cfg)
    r = cfg.rollout
    if r.generation is Generation.vllm_server:
        return math.ceil(per_rank * cfg.world_size / engines(cfg))
    if r.generation is Generation.vllm_colocate:
        return per_rank * r.vllm_tp
    return per_rank


def vllm_activation_bytes(m: ModelSpec, max_num_seqs: int, tp: int, elem_bytes: float) -> float:
    """vLLM's activation peak, which its memory profiler measures with a dummy forward of max_num_batched_tokens
    tokens and a dummy sampler run over max_num_seqs rows (vllm v1 gpu_model_runner profile_run): one layer's
    MLP intermediates (gate, up and their product, 3 x i) and residual / norm tensors (4 h) per token, plus the
    sampler's fp32 logits and probabilities."""
    tokens = VLLM_BATCHED_TOKENS
    layer = tokens * (3.0 * m.intermediate_size / tp + 4.0 * m.hidden_size) * elem_bytes
    return layer + 2.0 * 4.0 * max_num_seqs * m.vocab_size / tp


@dataclass(frozen=True, kw_only=True, slots=True)
class VllmBudget:
    """One vLLM engine's memory per GPU (bytes) and how many sequences its KV cache holds at full length."""

    budget: float  # u x the GPU's memory: what vLLM takes
    weights: float
    activations: float
    kv_cache: float
    max_sequences: int  # concurrent sequences of seq_len tokens the KV cache holds


def vllm_budget(cfg: TrainConfig) -> VllmBudget:
    """vLLM's own accounting (vllm v1 Worker.determine_available_memory): KV cache = u x GPU memory - weights -
    activation peak; its blocks hold `max_sequences` sequences of seq_len (prompt + completion) tokens."""
    r = cfg.rollout
    gpu = cfg.cluster.gpu
    tp = r.vllm_tp
    budget = r.vllm_memory * gpu.hbm_bytes
    weights = inference_weight_bytes(cfg) / tp
    acts = vllm_activation_bytes(cfg.model, engine_batch(cfg), tp, _kv_elem_bytes(cfg))
    kv = max(0.0, budget - weights - acts)
    return VllmBudget(budget=budget, weights=weights, activations=acts, kv_cache=kv,
                      max_sequences=int(kv // kv_bytes_per_sequence(cfg, cfg.seq_len)))


def wave_tokens_per_sequence(cfg: TrainConfig) -> float:
    """Tokens a sequence of a wave holds in vLLM's KV cache at the wave's peak: seq_len when every completion runs
    to the cap; with completions stopping at EOS, the peak over the steps of the running share x prompt + steps
    (planner.rl.lengths.peak_tokens_per_sequence; finished requests free their blocks)."""
    r = cfg.rollout
    if not lengths_vary(r):
        return cfg.seq_len
    return lengths.peak_tokens_per_sequence(r.completion_len_mean, r.completion_len, prompt_len(cfg.seq_len, r))


def concurrency(cfg: TrainConfig) -> int:
    """Sequences decoded together: the whole engine batch for transformers (it runs them as one batch), and for
    vLLM what its KV cache holds (its scheduler runs the rest as the running ones finish)."""
    batch = engine_batch(cfg)
    if cfg.rollout.generation is Generation.transformers:
        return batch
    if not lengths_vary(cfg.rollout):
        return max(1, min(batch, vllm_budget(cfg).max_sequences))
    kv_cache = vllm_budget(cfg).kv_cache
    return max(1, min(batch, int(kv_cache // kv_bytes_per_sequence(cfg, wave_tokens_per_sequence(cfg)))))


def _kv_elem_bytes(cfg: TrainConfig) -> float:
    """The element size of vLLM's KV cache and activations: 16 bits on a GPU, the training precision's on the CPU."""
    return compute_bytes(cfg) if is_cpu(cfg.cluster.gpu) else 2.0


def kv_bytes_per_sequence(cfg: TrainConfig, tokens: float) -> float:
    """Bytes of one sequence of `tokens` tokens in one vLLM engine's KV cache (per GPU of its TP group)."""
    return kv_bytes_per_token(cfg.model, _kv_elem_bytes(cfg)) / cfg.rollout.vllm_tp * tokens


# --- transformers' generate: memory -----------------------------------------------------------------

def transformers_generation_items(cfg: TrainConfig) -> dict[str, float]:
    """Bytes per GPU that `model.generate` adds on top of the trainer's resident states: the KV cache of the
    rank's whole generation batch at full length, the sampling loop's logits, the prefill's largest transient
    (one layer's MLP intermediates over every prompt token), and under ZeRO-3 the weights gathered whole."""
    m = cfg.model
    e = compute_bytes(cfg)
    b = rank_generation_batch(cfg)
    p = prompt_len(cfg.seq_len, cfg.rollout)
    items = {
        "KV cache": kv_bytes_per_token(m, e) * b * cfg.seq_len,
        "sampling logits": b * m.vocab_size * (4.0 * SAMPLING_FP32_COPIES + e),
        "prefill activations": b * p * (3.0 * m.intermediate_size + 4.0 * m.hidden_size) * e,
    }
    if cfg.engine is Engine.deepspeed and cfg.zero is ZeroStage.WEIGHTS:
        # GatheredParameters(model.parameters()) for the whole generate call (ds3_gather_for_generation=True):
        # every rank holds the 16-bit weights whole, its own shard included
        items["ZeRO-3 weights gathered for generation"] = inference_weight_bytes(cfg) * (1 - 1 / cfg.dp)
    return items


# --- time ------------------------------------------------------------------------------------------

def _peak_flops(cfg: TrainConfig) -> float:
    gpu = cfg.cluster.gpu
    if cfg.rollout.generation is not Generation.transformers and not is_cpu(gpu):
        return cp.peak_flops_per_s(gpu, Precision.bf16_mixed)  # vLLM runs the model in 16 bits
    return cp.peak_flops_per_s(gpu, cfg.precision)


def decode_step_s(cfg: TrainConfig, sequences: int, context: float, eff: float) -> float:
    """One decoding step of `sequences` sequences at `context` tokens on one engine (its tp GPUs): the larger
    of its memory traffic (every weight once, every sequence's KV cache) and its FLOPs (2 x active parameters
    and 4 x context x q_dim per layer, per sequence), per GPU of the engine."""
    m = cfg.model
    gpu = cfg.cluster.gpu
    tp = engine_tp(cfg)
    e = compute_bytes(cfg)
    traffic = inference_weight_bytes(cfg) / tp + sequences * kv_bytes_per_token(m, e) / tp * context
    flops = sequences * (2.0 * active_params(m) + 4.0 * context * m.q_dim * m.num_layers) / tp
    return max(traffic / gpu.hbm_bytes_per_s, flops / (_peak_flops(cfg) * eff))


def prefill_s(cfg: TrainConfig, tokens: float, context: float, eff: float) -> float:
    """Prefill of `tokens` prompt tokens on one engine: FLOPs-bound (2 x active parameters + attention per token)."""
    m = cfg.model
    flops = tokens * (2.0 * active_params(m) + 2.0 * context * m.q_dim * m.num_layers) / engine_tp(cfg)
    return flops / (_peak_flops(cfg) * eff)


def _generate_host_ops(cfg: TrainConfig) -> float:
    """Eager ops transformers' generate dispatches per decoding step: the layers' forward ops (peft's adapters
    stay unmerged during generation, four more ops per adapted linear) and the sampling loop's."""
    m = cfg.model
    lora = adapted_count(m, cfg.lora_targets) if cfg.method is not Method.full else 0.0  # share-weighted per layer
    return m.num_layers * (OPS_PER_LAYER_FORWARD + OPS_PER_LORA_LINEAR * lora) + GENERATE_STEP_OPS


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationTime:
    """Seconds of one generation (every engine in parallel) and the shape it ran at."""

    total_s: float
    prefill_s: float
    decode_s: float
    gather_s: float  # weights gathered for generation (ZeRO-3 once, FSDP2 every forward)
    concurrency: int
    waves: int


def generation_time(cfg: TrainConfig, eff: float, dp_group: Group | None) -> GenerationTime:
    """One generation: prefill and decoding per wave of `concurrency` sequences, waves until the engine's batch is
    done; every completion at `completion_len` tokens, or stopping at EOS around `completion_len_mean`
    (`_decode_steps`, `_continuous_decode_s`). transformers adds its host dispatch per step (beside the device on a
    GPU, before it on the CPU) and the weight gathers of sharded engines."""
    gpu = cfg.cluster.gpu
    r = cfg.rollout
    p = prompt_len(cfg.seq_len, r)
    batch = engine_batch(cfg)
    conc = concurrency(cfg)
    waves = math.ceil(batch / conc)
    prefill = prefill_s(cfg, conc * p, p / 2, eff)
    gather = 0.0
    if lengths_vary(r) and r.generation is not Generation.transformers:
        decode_total = _continuous_decode_s(cfg, conc, waves, p, eff)
        return GenerationTime(total_s=waves * prefill + decode_total, prefill_s=waves * prefill,
                              decode_s=decode_total, gather_s=0.0, concurrency=conc, waves=waves)
    c_len = _decode_steps(cfg, batch)
    mean_context = p + c_len / 2
    step = decode_step_s(cfg, conc, mean_context, eff)
    if r.generation is Generation.transformers:
        host = _generate_host_ops(cfg) * gpu.host_op_s
        step = step + host if gpu.sm_count <= 0 else max(step, host)
        if dp_group is not None and cfg.dp > 1:
            w16 = inference_weight_bytes(cfg)
            if cfg.engine is Engine.deepspeed and cfg.zero is ZeroStage.WEIGHTS:
                gather = allgather_time_s(w16, dp_group)
            elif cfg.engine is Engine.fsdp and cfg.fsdp.value in ("full_shard", "hybrid_shard"):
                gather = (c_len + 1) * allgather_time_s(w16, dp_group)  # every forward gathers every unit
    decode = c_len * step
    total = waves * (prefill + decode) + gather
    return GenerationTime(total_s=total, prefill_s=waves * prefill, decode_s=waves * decode, gather_s=gather,
                          concurrency=conc, waves=waves)


def _decode_steps(cfg: TrainConfig, batch: int) -> float:
    """Decoding steps of one batch run as a block (transformers' generate): completion_len, or with completions
    stopping at EOS the longest of every rank's batch (finished rows keep decoding pad tokens until the batch's
    longest is done, and the step waits for the slowest rank)."""
    r = cfg.rollout
    if not lengths_vary(r):
        return r.completion_len
    return lengths.expected_longest(r.completion_len_mean, r.completion_len, batch * engines(cfg))


def _continuous_decode_s(cfg: TrainConfig, conc: int, waves: int, p: int, eff: float) -> float:
    """vLLM's decoding of one engine's batch with completions stopping at EOS (continuous batching): the
    steps are (waves - 1) x the mean length while requests wait for a slot (the slots stay full), then the longest of
    the last wave, taken over every engine's last wave (the trainer waits for the slowest); each step reads every
    weight; the KV reads and FLOPs follow each completion's own length, sum over its L steps of (prompt + tokens so
    far) = p L + L^2 / 2, in expectation p E[L] + E[L^2] / 2 (planner.rl.lengths). Charged as `waves` full waves of
    `conc` sequences, as the uniform plan charges them; the roofline of the whole decode (larger of its traffic
    and its FLOPs) rather than step by step."""
    m_spec = cfg.model
    r = cfg.rollout
    mean, cap = r.completion_len_mean, r.completion_len
    tp = engine_tp(cfg)
    last = lengths.expected_longest(mean, cap, conc * engines(cfg))
    steps = (waves - 1) * mean + last
    sequences = waves * conc
    context_tokens = p * mean + lengths.mean_square(mean, cap) / 2  # sum over a completion's steps of its context
    traffic = (steps * inference_weight_bytes(cfg) / tp
               + sequences * kv_bytes_per_token(m_spec, compute_bytes(cfg)) / tp * context_tokens)
    flops = sequences * (2.0 * active_params(m_spec) * mean
                         + 4.0 * context_tokens * m_spec.q_dim * m_spec.num_layers) / tp
    return max(traffic / cfg.cluster.gpu.hbm_bytes_per_s, flops / (_peak_flops(cfg) * eff))


def weight_sync_s(cfg: TrainConfig, dp_group: Group | None) -> float:
    """Pushing the trained weights into vLLM once per generation (VLLMGeneration.sync_weights): sharded engines
    gather each parameter first; peft merges the adapters into the base weights and unmerges them after (a read
    and a write of every adapted weight each way); colocated, vLLM's load_weights copies them on the GPU (read +
    write); in server mode rank 0 broadcasts them over NCCL to the server (NVLink within a node, the network
    across nodes)."""
    r = cfg.rollout
    if r.generation is Generation.transformers:
        return 0.0
    gpu = cfg.cluster.gpu
    w = inference_weight_bytes(cfg)
    s = 0.0
    if dp_group is not None and cfg.dp > 1 and (
            (cfg.engine is Engine.deepspeed and cfg.zero is ZeroStage.WEIGHTS)
            or (cfg.engine is Engine.fsdp and cfg.fsdp.value in ("full_shard", "hybrid_shard"))):
        s += allgather_time_s(w, dp_group)
    if cfg.method is not Method.full:
        adapted = float(quantizable_params(cfg.model))
        s += 2 * 2 * adapted * 2.0 / gpu.hbm_bytes_per_s
    if r.generation is Generation.vllm_colocate:
        return s + 2 * w / r.vllm_tp / gpu.hbm_bytes_per_s
    # the server sits on its own GPUs: in another node when it takes whole nodes, else beside the trainer
    link = gpu.inter_node_bytes_per_s if r.vllm_server_gpus >= gpu.gpus_per_node else gpu.intra_node_bytes_per_s
    return s + w / (link * DEFAULT_COMM_EFFICIENCY)
