"""FSDP1's model initialization, allocation by allocation, and the cache it leaves reserved for the training step
(planner.caching_allocator).

FSDP1 (torch.distributed.fsdp.FullyShardedDataParallel) builds its units one at a time, inner units first
(torch/distributed/fsdp/wrap.py `_recursive_wrap`: a module's children are wrapped before the module), and each unit's
constructor runs `_init_param_handle_from_module` (torch/distributed/fsdp/_init_utils.py, torch 2.2 to 2.13 alike):
- `_move_module_to_device`: with `device_id` set, every parameter still on the CPU is copied to the GPU
  (`param.data = param.to(device)`); under `param_init_fn` a meta module is materialized there instead
  (`module.to_empty(device="cuda")`): either way one block per parameter;
- with `sync_module_states`, `_sync_module_params_and_buffers` broadcasts them from rank 0 through
  `dist._broadcast_coalesced(..., PARAM_BROADCAST_BUCKET_SIZE = 250 MiB)` (torch/csrc/distributed/c10d/comm.cpp
  `broadcast_coalesced`): the tensors are cut into buckets that close once they reach 250 MiB
  (`compute_bucket_assignment_by_size`, reducer.cpp), a bucket of several tensors is concatenated into one flat
  buffer (`flatten_dense_tensors`; a bucket of one tensor is a view), and at most 2 buckets are in flight: the third
  waits for the first to finish (its copy back) and its buffer to go;
- `FlatParamHandle.__init__` concatenates the unit's parameters into one FlatParameter (_flat_param.py
  `flatten_tensors`: `torch.cat`, one new block of the unit's size; use_orig_params=False adds no alignment padding);
- `FlatParamHandle.shard` clones this rank's chunk (`_get_shard`: `chunk.clone()`, ceil(size / world) on rank 0) and
  frees the unsharded storage (`_typed_storage()._resize_(0)`); NO_SHARD keeps the flat parameter whole;
- the original parameters go when `_init_param_handle_from_module` returns (its `managed_params` list holds them
  through the shard).
Nothing calls `torch.cuda.empty_cache` afterwards (FSDP does not; Answer.AI's train.py calls it only after loading,
before the wrap; the HF Trainer only with torch_empty_cache_steps), so every segment these steps cudaMalloc'ed stays
reserved into training: the step's blocks reuse what fits and `max_memory_reserved` (also after
`reset_peak_memory_stats`, which restarts the peak at the current reservation, as Answer.AI's train.py does after the
wrap) is at least the reservation the init leaves.

Units as peft's FSDP policy and Answer.AI's train.py wrap a LoRA model (peft/utils/other.py `fsdp_auto_wrap_policy`,
train.py `get_wrapping_policy`: a lambda policy on every leaf module with a trainable weight, or'ed with the decoder
layer class): each LoRA A and B a unit of its own, then the decoder layer (its frozen linears and norms), then the
root (embedding, final norm, LM head or a reward model's score: planner.states.head_weight_params). A full
fine-tune wraps the decoder layers and the root.

QLoRA as Answer.AI's train.py loads it (`load_and_quantize`, low_memory): each 4-bit linear's 16-bit weight is copied
to the GPU, quantized there (bitsandbytes/functional.py `quantize_4bit`: an fp32 absmax per 64 weights, the packed
codes, and with double quantization `absmax.mean()` and `quantize_blockwise`'s fp32 absmax per 256 blocks and uint8
codes; the fp32 absmax is then deleted), and the packed codes go to the CPU (rank 0) or the meta device; the
quantization statistics stay on the GPU. `torch.cuda.empty_cache()` follows the loading. Threads may interleave the
linears (train.py `parallel(..., threadpool=True)`); the replay takes them in the checkpoint's order.

FSDP materializes or moves a unit's parameters breadth-first (norms and non-adapted linears before the adapted
linears' base weights); the replay takes them in `module.parameters()` order, the order the flat parameter and the
broadcast use: on Llama-2-7B both orders leave the same reservation (LoRA 8.15, QLoRA 3.23 GiB). Traced on 2 CPU
ranks (tests/planner/test_init_allocations.py), every unit makes and frees the replay's tensors.

Not modelled: buffers (the rotary caches, transformers 4.38's causal-mask buffer: non-persistent, moved with their
unit, each a live block; tens of MiB), the CPU-offload variant (the shard goes to the host, the GPU blocks are freed
but stay cached) and rank k > 0's padding (`F.pad` of a short last chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from planner.caching_allocator import CachingAllocator, Event, round_size, segment_bytes
from planner.choices import Engine, Method, Offload, Quant
from planner.engines import ddp, fsdp
from planner.params import embedding_params, norm_params, resolve_lora_targets
from planner.states import head_weight_params

if TYPE_CHECKING:
    from planner.strategy import TrainConfig

PARAM_BROADCAST_BUCKET_BYTES = 250 * 1024 * 1024  # torch/distributed/fsdp/_init_utils.py PARAM_BROADCAST_BUCKET_SIZE
MAX_BROADCASTS_IN_FLIGHT = 2  # torch/csrc/distributed/c10d/comm.cpp broadcast_coalesced: max_in_flight
NF4_BLOCK = 64  # bitsandbytes quantize_4bit blocksize (QLoRA's default)
NESTED_BLOCK = 256  # quantize_4bit with compress_statistics: quantize_blockwise(absmax, blocksize=256)


@dataclass(frozen=True, slots=True)
class InitReplay:
    """What the GPU holds when the wrap returns: the live blocks (the shards, the quantization statistics) and the
    segments reserved, and the reservation's peak during the init."""

    allocated_bytes: int
    reserved_bytes: int
    peak_reserved_bytes: int

    @property
    def cached_free_bytes(self) -> int:
        return self.reserved_bytes - self.allocated_bytes


def broadcast_buckets(sizes: tuple[int, ...], limit: int = PARAM_BROADCAST_BUCKET_BYTES) -> list[list[int]]:
    """`compute_bucket_assignment_by_size` for tensors of one dtype and device: indices in order, a bucket closing
    once its bytes reach `limit`."""
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, nbytes in enumerate(sizes):
        current.append(i)
        size += nbytes
        if size >= limit:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


def broadcast_events(sizes: tuple[int, ...], *, unit: int = 0, limit: int = PARAM_BROADCAST_BUCKET_BYTES
                     ) -> list[Event]:
    """`broadcast_coalesced` (torch/csrc/distributed/c10d/comm.cpp) on tensors of `sizes`: a flat buffer per bucket of
    several tensors, and before a third bucket starts the oldest in flight finishes and its buffer goes."""
    ev: list[Event] = []
    in_flight: list[str | None] = []
    for j, bucket in enumerate(broadcast_buckets(sizes, limit)):
        if len(in_flight) >= MAX_BROADCASTS_IN_FLIGHT:
            done = in_flight.pop(0)
            if done is not None:
                ev.append(("free", done))
        name = f"u{unit}.bucket{j}" if len(bucket) > 1 else None  # one tensor: flatten_dense_tensors makes a view
        if name is not None:
            ev.append(("alloc", name, sum(sizes[i] for i in bucket)))  # flatten_dense_tensors: at::cat
        in_flight.append(name)
    return ev + [("free", done) for done in in_flight if done is not None]


def unit_events(sizes: tuple[int, ...], *, unit: int = 0, world: int, shard: bool, sync: bool,
                offload: bool = False) -> list[Event]:
    """One unit's `_init_param_handle_from_module` on rank 0, as ("alloc", name, bytes) / ("free", name) events;
    what it leaves live: the shard (the whole flat parameter under NO_SHARD; nothing under CPU offload)."""
    ev: list[Event] = [("alloc", f"u{unit}.p{i}", n) for i, n in enumerate(sizes)]  # the move / to_empty
    if sync and world > 1:
        ev += broadcast_events(sizes, unit=unit)
    total = sum(sizes)
    ev.append(("alloc", f"u{unit}.flat", total))  # flatten_tensors: torch.cat
    local = f"u{unit}.flat"
    if shard and world > 1:
        local = f"u{unit}.shard"
        ev += [("alloc", local, -(-total // world)),  # _get_shard: chunk.clone()
               ("free", f"u{unit}.flat")]  # shard(): _typed_storage()._resize_(0)
    if offload:  # _init_param_handle_from_params: handle.flat_param_to(cpu)
        ev.append(("free", local))
    ev += [("free", f"u{unit}.p{i}") for i in range(len(sizes))]  # managed_params released on return
    return ev


def quantize_events(numels: tuple[int, ...], *, double_quant: bool) -> list[Event]:
    """Answer.AI's load_and_quantize of each 4-bit linear: its 16-bit weight on the GPU, quantize_4bit, the packed
    codes moved off; the statistics stay. (torch.cuda.empty_cache() follows: fsdp1_init_replay.)"""
    ev: list[Event] = []
    for k, n in enumerate(numels):
        blocks = -(-n // NF4_BLOCK)
        ev += [("alloc", f"w{k}", 2 * n),  # value.to(device, bf16)
               ("alloc", f"absmax{k}", 4 * blocks),  # torch.zeros((blocks,), float32)
               ("alloc", f"packed{k}", -(-n // 2))]  # torch.zeros(((n + 1) // mod, 1), quant_storage)
        if double_quant:
            ev.append(("alloc", f"offset{k}", 4))  # offset = absmax.mean()
            if k == 0:
                ev.append(("alloc", "code", 256 * 4))  # the dynamic map, made once on the device
            ev += [("alloc", f"absmax2.{k}", 4 * -(-blocks // NESTED_BLOCK)),  # quantize_blockwise: fp32 absmax
                   ("alloc", f"qabsmax{k}", blocks),  # quantize_blockwise: uint8 codes of the absmax
                   ("free", f"absmax{k}")]  # del absmax
        ev += [("free", f"w{k}"),  # Params4bit._quantize: self.data = w_4bit
               ("free", f"packed{k}")]  # value.data.to("cpu" / "meta")
    return ev


def _run(alloc: CachingAllocator, events: list[Event], live: dict[str, int]) -> None:
    for event in events:
        if event[0] == "alloc":
            live[event[1]] = alloc.malloc(event[2])
        else:
            alloc.free(live.pop(event[1]))


@lru_cache(maxsize=256)
def fsdp1_init_replay(units: tuple[tuple[int, ...], ...], *, world: int, shard: bool, sync: bool,
                      quantized_numels: tuple[int, ...] = (), double_quant: bool = True,
                      offload: bool = False) -> InitReplay:
    """The caching allocator after loading (`quantized_numels`: the 4-bit linears Answer.AI quantizes on the GPU,
    then torch.cuda.empty_cache()) and FSDP1's init of `units` (each the byte sizes of its parameters, in the
    module's order, inner units first), on rank 0."""
    alloc = CachingAllocator()
    live: dict[str, int] = {}
    if quantized_numels:
        _run(alloc, quantize_events(quantized_numels, double_quant=double_quant), live)
        alloc.release_cached()
    for k, sizes in enumerate(units):
        _run(alloc, unit_events(sizes, unit=k, world=world, shard=shard, sync=sync, offload=offload), live)
    return InitReplay(allocated_bytes=alloc.allocated_bytes, reserved_bytes=alloc.reserved_bytes,
                      peak_reserved_bytes=alloc.peak_reserved_bytes)


# --- the units of a plan ------------------------------------------------------------------------------------------

def plan_units(cfg: TrainConfig) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]] | None:
    """(units, the 4-bit linears' sizes) of a dense model under FSDP1 as peft's policy wraps it (module docstring);
    None where ftplan does not lay the units out (MoE or layer-varying models, tensor or pipeline parallelism)."""
    m = cfg.model
    if m.derived or m.is_moe or cfg.tp != 1 or cfg.pp != 1:
        return None
    trainable_bytes, frozen_bytes = ddp.weight_bytes_per_param(cfg)
    lora = cfg.method is not Method.full
    linear_bytes = trainable_bytes if not lora else frozen_bytes
    nf4 = cfg.quant is Quant.nf4
    targets = set(resolve_lora_targets(m, cfg.lora_targets)) if lora else set()
    adapters: list[tuple[int, ...]] = []
    base: list[int] = []
    for lin in m.linears():
        numel = lin.in_features * lin.out_features * lin.copies
        base.append(-(-numel // 2) if nf4 else round(numel * linear_bytes))  # quant_storage bf16: n/2 bytes
        if lin.bias:
            base.append(round(lin.out_features * linear_bytes))
        if lin.name in targets:  # lora_A (r x in) and lora_B (out x r), each its own unit
            adapters += [(round(cfg.lora_r * lin.in_features * trainable_bytes),),
                         (round(lin.out_features * cfg.lora_r * trainable_bytes),)]
    norm_bytes = (trainable_bytes if not lora else frozen_bytes) * norm_params(m)
    layer = (*adapters, (*base, round(norm_bytes), round(norm_bytes)))
    embed_bytes = (trainable_bytes if not lora else frozen_bytes)
    root = [round(embed_bytes * embedding_params(m)), round(norm_bytes)]
    head = head_weight_params(m, cfg.stage)  # the LM head's own (none when tied) or a reward model's score
    if head:
        root.append(round(embed_bytes * head))
    units = (*layer * m.num_layers, tuple(root))
    quantized = tuple(lin.in_features * lin.out_features * lin.copies for lin in m.linears()) * m.num_layers \
        if nf4 else ()
    return units, quantized


def reserved_floor_bytes(cfg: TrainConfig) -> float:
    """`max_memory_reserved`'s floor under an FSDP1 plan: the reservation its init leaves (fsdp1_init_replay, with
    sync_module_states as ftplan's accelerate configs and Answer.AI's low_memory loading set it) plus the segments
    FSDP's all-gathers make on their own stream. FSDP1 unshards on `_unshard_stream`
    (torch/distributed/fsdp/_runtime_utils.py `_unshard`: `with state._device_handle.stream(unshard_stream)`), and
    the caching allocator serves a request only from blocks freed on its own stream
    (c10/cuda/CUDACachingAllocator.cpp `get_free_block`: `(*it)->stream != p.stream()` fails), so the init's cached
    blocks, made on the default stream, never serve them: the root unit gathered whole and the two decoder-layer
    units limit_all_gathers lets in flight (torch/distributed/fsdp/_limiter_utils.py) each get a segment of their
    own on top. The step's default-stream blocks (activations, the loss, the optimizer's states) may reuse the
    init's cache, so nothing else is added: a floor, not a sum. 0 where the plan is not FSDP1 or not laid out.

    Adapter runs (LoRA, QLoRA) only: there the replay is checked against a published figure (Answer.AI's QLoRA log,
    3.72 GiB reserved after the wrap, replay 3.23: below it, so the floor errs low). A full fine-tune's init is the
    same sequence, but the one full-FSDP1 reserved figure held (Liger-Kernel's Trainer run, Llama-3-8B on 8 GPUs,
    19.16 GiB at 1024 tokens) sits below the 20.4 GiB floor the replay gives with fp32 weights: that run's loading
    (its dtype, whether rank 0 alone loads) is not stated, so no floor is claimed for full fine-tunes."""
    if cfg.engine is not Engine.fsdp or int(cfg.fsdp_version) != 1 or cfg.method is Method.full:
        return 0.0
    # what plan_units and the replay read: the search asks once per strategy, seq_len and accumulation, so cache
    key = (cfg.model, cfg.stage, cfg.adapter, cfg.precision, cfg.switches, cfg.engine_choice, cfg.tp, cfg.pp,
           fsdp.shard_group(cfg))
    floor = _FLOORS.get(key)
    if floor is None:
        if len(_FLOORS) >= 1024:
            _FLOORS.clear()
        floor = _FLOORS[key] = _reserved_floor_bytes(cfg)
    return floor


_FLOORS: dict[tuple, float] = {}


def _reserved_floor_bytes(cfg: TrainConfig) -> float:
    laid_out = plan_units(cfg)
    if laid_out is None:
        return 0.0
    units, quantized = laid_out
    world = fsdp.shard_group(cfg)
    sharded = fsdp.is_sharded(cfg)
    init = fsdp1_init_replay(units, world=world, shard=sharded, sync=True, quantized_numels=quantized,
                             double_quant=cfg.double_quant, offload=cfg.offload is not Offload.none)
    gathered = 0
    if sharded and world > 1:
        layer_unit = max(sum(u) for u in units[:-1])
        gathered = segment_bytes(round_size(sum(units[-1]))) + 2 * segment_bytes(round_size(layer_unit))
    return float(init.reserved_bytes + gathered)
