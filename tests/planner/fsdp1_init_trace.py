"""Worker for test_init_allocations.py: one rank of a 2-process gloo run of FSDP1's init on a small peft LoRA Llama, its
tensor allocations and frees traced in order.

The model is built on the meta device on both ranks and materialized by `param_init_fn` (`to_empty`, as Answer.AI's
train.py does on ranks > 0), wrapped by peft's FSDP policy (peft.utils.other.fsdp_auto_wrap_policy: each LoRA A and B a
unit, then the decoder layer, then the root), FULL_SHARD, use_orig_params=False, device_id=cpu. FSDP refuses
sync_module_states on the CPU (`_check_module_states_for_sync_module_states`), so its broadcast is traced apart: the
same `dist._broadcast_coalesced` FSDP calls (`_sync_params_and_buffers`) on one unit's tensors, with a bucket limit
small enough to make several buckets. A TorchDispatchMode sees every storage an op makes and a weakref finalizer every
storage that dies; the FlatParameter's `_typed_storage()._resize_(0)` is no op, so the storages that shrink are looked
for after each op. Rank 0 prints one JSON line: the units' parameter sizes (bytes, in `module.parameters()` order,
units in the order FSDP built them), the init's events, ["alloc", bytes] / ["free", bytes], and the broadcast's (its
tensors' sizes, the limit, the events).

Usage: python -m torch.distributed.run --nproc_per_node 2 fsdp1_init_trace.py (env: OMP_NUM_THREADS=1).

"""

from __future__ import annotations

import json
import weakref

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from peft.utils.other import fsdp_auto_wrap_policy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import ShardingStrategy
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
LORA_R = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]


class Trace(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[list] = []
        self._sizes: dict[int, tuple[weakref.ref, int]] = {}

    def known(self, tensors: list[torch.Tensor]) -> None:
        """Storages made before the trace: their views are no allocation."""
        for t in tensors:
            st = t.untyped_storage()
            self._sizes[st._cdata] = (weakref.ref(st), st.nbytes())
            weakref.finalize(st, self._died, st._cdata)

    def _died(self, key: int) -> None:
        _, nbytes = self._sizes.pop(key)
        if nbytes:
            self.events.append(["free", nbytes])

    def _resized(self) -> None:
        for key, (ref, nbytes) in list(self._sizes.items()):
            st = ref()
            if st is not None and st.nbytes() != nbytes:
                self._sizes[key] = (ref, st.nbytes())
                self.events.append(["free", nbytes] if st.nbytes() == 0 else ["alloc", st.nbytes()])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._resized()
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                if st._cdata not in self._sizes and st.nbytes():
                    self._sizes[st._cdata] = (weakref.ref(st), st.nbytes())
                    weakref.finalize(st, self._died, st._cdata)
                    self.events.append(["alloc", st.nbytes()])
        return out


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**CONFIG)).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    for buf_owner in list(model.modules()):  # buffers are no parameters: keep them out of the trace
        for name, buf in list(buf_owner.named_buffers(recurse=False)):
            buf_owner.register_buffer(name, torch.zeros(buf.shape, dtype=buf.dtype), persistent=False)
    trace = Trace()
    trace.known(list(model.buffers()))
    with trace:
        wrapped = FSDP(model, auto_wrap_policy=fsdp_auto_wrap_policy(model),
                       param_init_fn=lambda m: m.to_empty(device=torch.device("cpu"), recurse=False),
                       device_id=torch.device("cpu"), use_orig_params=False,
                       sharding_strategy=ShardingStrategy.FULL_SHARD)
    built: list[FSDP] = []  # FSDP builds a module's inner units before the module (post-order)

    def post_order(module: torch.nn.Module) -> None:
        for child in module.children():
            post_order(child)
        if isinstance(module, FSDP) and module._handle is not None:
            built.append(module)

    post_order(wrapped)
    units = [[n * m._handle.flat_param.element_size() for n in m._handle.flat_param._numels] for m in built]
    layer = [torch.ones(n, dtype=torch.bfloat16) for n in (4096, 4096, 4096, 8192, 8192, 256)]
    limit = 3 * 4096 * 2  # bytes: buckets [0, 1, 2], [3, 4], [5]
    bcast = Trace()
    bcast.known(layer)
    with bcast:
        dist._broadcast_coalesced(dist.group.WORLD, layer, limit, 0)
    if dist.get_rank() == 0:
        print(json.dumps({"units": units, "events": trace.events, "broadcast": {
            "sizes": [t.numel() * 2 for t in layer], "limit": limit, "events": bcast.events}}), flush=True)
    # both ranks finish before either tears gloo down: a rank that destroys the group and exits while the other
    # still holds the pair's connection once aborted the other in gloo's thread ("terminate called without an
    # active exception", a clean-clone CI run of session 13)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
