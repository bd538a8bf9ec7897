"""torch DistributedDataParallel (a single GPU is DDP at world size 1): every rank holds the whole
model, its gradients and optimizer states; gradients are all-reduced in buckets during backward."""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner import collectives as col
from planner.choices import Engine, FsdpStrategy, Method, Offload, OffloadDevice, Precision, Stage, ZeroStage
from planner.comm import Group, allreduce_time_s, split_time_s
from planner.engines.sharded import overlap_for
from planner.states import StageParams, grad_dtype_bytes, is_mixed, kbit_prepared
from planner.torch_adamw import AdamwKernel, adamw_kernel, single_tensor_temporary_bytes, step_temporaries

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

ROWS = ((Engine.ddp, ZeroStage.DISABLED, FsdpStrategy.full_shard, Offload.none, OffloadDevice.cpu),)


def problems(cfg: TrainConfig) -> list[str]:
    if cfg.pp > 1 or cfg.tp > 1:
        return ["TP and PP need DeepSpeed (pipeline engine, AutoTP) here, not plain DDP"]
    return []


# --- memory -------------------------------------------------------------------------------------

def weight_bytes_per_param(cfg: TrainConfig) -> tuple[float, float]:
    """(trainable, frozen): with mixed precision the trainable weights are the fp32 master and frozen
    ones stay in 16 bits (how LLaMA-Factory and peft load them), or in fp32 with --frozen-fp32 (a script
    that calls from_pretrained without torch_dtype, which transformers 4.x answers with fp32 weights;
    autocast computes in 16 bits either way)."""
    if cfg.precision is Precision.fp32:
        return 4.0, 4.0
    if cfg.precision is Precision.bf16_true:
        return 2.0, 2.0
    # a 4-bit model after prepare_model_for_kbit_training: its weights that are not quantized are fp32
    return 4.0, 4.0 if cfg.frozen_fp32 or kbit_prepared(cfg) else 2.0


def shards_weights(cfg: TrainConfig) -> bool:
    return False


def gradients(cfg: TrainConfig, trained: float, n: int) -> tuple[float, float]:
    """(GPU, host) bytes of gradients: whole, in the parameter's dtype."""
    return trained * grad_dtype_bytes(cfg.precision), 0.0


def backward_grad_bytes(cfg: TrainConfig, trained: float, held_grads: float) -> float:
    """Gradient bytes resident when a micro-batch's backward starts: the gradients held, only when earlier
    micro-batches accumulated them."""
    return held_grads if cfg.grad_accum > 1 else 0.0


def master_bytes(cfg: TrainConfig) -> float:
    return 0.0


def shards_optimizer(cfg: TrainConfig) -> bool:
    return False


def autocast_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """autocast caches a 16-bit copy of every fp32 weight it casts; backward keeps them."""
    if is_mixed(cfg.precision) and cfg.method is Method.full:
        # fused experts under transformers' grouped_mm are not autocast ops (the input is cast to the weight's
        # dtype instead): no 16-bit copies of them (planner/moe.py)
        from planner.moe import grouped_expert_params

        return {"autocast weight copies": 2.0 * (sp.trainable - grouped_expert_params(cfg.model, sp.layers) / cfg.tp)}
    return {}


def buffers(cfg: TrainConfig, sp: StageParams, trained: float, *, first: bool) -> dict[str, float]:
    """DDP buckets hold a flat copy of every gradient (gradient_as_bucket_view=False, the default)."""
    if cfg.dp > 1:
        return {"DDP gradient buckets": trained * grad_dtype_bytes(cfg.precision)}
    return {}


def end_items(cfg: TrainConfig, sp: StageParams) -> dict[str, float]:
    """Nothing beyond the buckets at the end of backward: DDP's last bucket reduces in place."""
    return {}


def step_items(cfg: TrainConfig, trained: float, n: int, state_bytes: float, sp: StageParams | None = None
               ) -> dict[str, float]:
    """The step's items (adamw_step_items); `sp`, the pipeline stage, is for DeepSpeed's pipeline engine only
    (planner.engines.zero step_items): DDP has no pipeline."""
    return adamw_step_items(cfg, trained, state_bytes, 1)


def adamw_step_items(cfg: TrainConfig, trained: float, state_bytes: float, n: int) -> dict[str, float]:
    """What torch's AdamW allocates during step() beyond its states, by the implementation the run gets
    (planner/torch_adamw.py): foreach (the GPU default) materializes sqrt(exp_avg_sq) for the whole parameter list
    (`_multi_tensor_adam`: `exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)`), one state-sized buffer; the
    single-tensor loop (the CPU default) two buffers the size of the largest parameter (`_single_tensor_adam`). Its
    fused kernel (`_fused_adam`, fused=True) and bitsandbytes' optimizers (paged 32-bit included:
    `optimizer_update_32bit`, one kernel per parameter) update in place."""
    kernel = adamw_kernel(cfg)
    if kernel is AdamwKernel.foreach:
        return {"AdamW foreach temporaries": step_temporaries(kernel, trained / n, 0.0) * state_bytes / 2}
    if kernel is AdamwKernel.single_tensor:
        return {"AdamW single-tensor temporaries": single_tensor_temporary_bytes(cfg, state_bytes / 2, n)}
    return {}


# --- time ---------------------------------------------------------------------------------------

def optimizer_shards(cfg: TrainConfig) -> int:
    return 1


def syncs_each_micro_batch(cfg: TrainConfig) -> bool:
    """Whether the training loop reduces gradients on every micro-batch rather than under the HF Trainer's no_sync:
    --sync-each-batch (accelerate's `sync_each_batch`), and verl's PPO actor (verl/workers/actor/dp_actor.py
    `update_policy`: one `loss.backward()` per micro-batch, no no_sync)."""
    return cfg.sync_each_batch or cfg.stage is Stage.ppo


def reductions_per_step(cfg: TrainConfig) -> int:
    """Micro-batches per optimizer step whose backward reduces gradients (DDP and FSDP: the engine's reduce-side
    collectives and the copies around them run in these only). The HF Trainer runs every micro-batch but the last
    under `accelerator.no_sync` (transformers/trainer.py `_inner_training_loop`, unless the accelerator's
    `sync_each_batch`; accelerate/accelerator.py `no_sync`: DDP's own `no_sync`, FSDP1's, FSDP2's
    `set_requires_gradient_sync(False)`), so one reduces: DDP's `no_sync` clears `require_backward_grad_sync`, and
    without it `_post_forward` does not arm the reducer (torch/nn/parallel/distributed.py `_post_forward`:
    `reducer.prepare_for_backward` only under it), so that backward reduces nothing. Every micro-batch where the loop
    syncs each (syncs_each_micro_batch)."""
    return cfg.grad_accum if syncs_each_micro_batch(cfg) else 1


def gradient_offloads_per_step(cfg: TrainConfig) -> int:
    """DDP offloads nothing; its gradients would leave once per reduction."""
    return reductions_per_step(cfg)


def dp_comm(cfg: TrainConfig, g: Group, trainable_gpu: float, param_bytes_gpu: float, fwd_s: float, bwd_s: float,
            comm_eff: float) -> tuple[float, float, float]:
    """(total, exposed) all-reduce seconds per step, and 0 host-link seconds. DDP reduces gradients in
    the parameter's dtype (fp32 master weights under *-mixed), one all-reduce per bucket
    (planner/collectives.py)."""
    grad_bytes = trainable_gpu * grad_dtype_bytes(cfg.precision)
    return bucketed_allreduce(cfg, g, grad_bytes, bwd_s)


def bucketed_allreduce(cfg: TrainConfig, g: Group, grad_bytes: float, bwd_s: float) -> tuple[float, float, float]:
    """(total, exposed) seconds per step of the bucket all-reduces of `grad_bytes` in every micro-batch that reduces
    (reductions_per_step; FSDP1's NO_SHARD likewise: torch/distributed/fsdp/_runtime_utils.py `_post_backward_hook`
    returns before `_reduce_grad_no_shard` under no_sync), each hidden behind its own micro-batch's backward."""
    calls = col.ddp_buckets(grad_bytes)
    if calls == 0:
        return 0.0, 0.0, 0.0
    ar = split_time_s(allreduce_time_s, grad_bytes, calls, g)
    r = reductions_per_step(cfg)
    return r * ar, r * overlap_for(cfg)(ar, bwd_s, ar / calls), 0.0


def reduce_chain_s(cfg: TrainConfig, g: Group, trainable_gpu: float, param_bytes_gpu: float) -> float:
    """DDP offloads nothing: no gradient copy waits behind its all-reduces."""
    return 0.0


def hook_host_s(cfg: TrainConfig, layers: int) -> float:
    """DDP's autograd hooks only copy gradients into buckets (counted in the op dispatch)."""
    return 0.0
