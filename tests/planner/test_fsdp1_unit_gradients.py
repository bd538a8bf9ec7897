"""FSDP1's unit gradient at the end of a unit's backward (planner.engines.fsdp `unit_gradient_copies`): the module's
parameters are `torch.split` views of the unsharded FlatParameter, so SplitWithSizesBackward concatenates their
gradients into the flat one while they are still live: the unit's gradient twice, FSDP2's once. Measured on 2 CPU
ranks in tests/validation/test_memory_sharded_measured.py: fsdp1-freeze peaks in the last decoder layer's `aten.cat`
(0.3% over the planner with the gradient twice, 7.6% under with it once), fsdp1-vocab and fsdp1-rm in the root's."""

from __future__ import annotations

import pytest

from planner.build import build_config
from planner.engines import fsdp
from planner.params import layer_params
from planner.states import stage_params
from planner.strategy import FsdpStrategy, Method, Precision, TrainConfig


def _cfg(version: int, method: Method = Method.full, grad_accum: int = 1) -> TrainConfig:
    return build_config(model="7b", gpus="8xA800", method=method, precision=Precision.bf16_mixed,
                        fsdp=FsdpStrategy.full_shard, fsdp_version=version, grad_accum=grad_accum, check=False)


def test_fsdp1_holds_a_layers_gradient_twice_and_fsdp2_once() -> None:
    layer16 = 2.0 * layer_params(_cfg(1).model)
    for version, copies in ((1, 2), (2, 1)):
        cfg = _cfg(version)
        sp = stage_params(cfg, first=True)
        assert fsdp.unit_gradient_copies(cfg) == copies
        assert fsdp.layer_gradient_bytes(cfg, sp) == copies * layer16
        # the layer all-gathered again, the one prefetched, and its gradient
        assert fsdp.buffers(cfg, sp, 0.0, first=True)["FSDP unsharded layers"] == (2 + copies) * layer16


@pytest.mark.parametrize("version", [1, 2])
def test_the_window_starts_without_gradients(version: int) -> None:
    """The last layer's window at its start holds its two gathered layers alone, whatever the copies at its end."""
    cfg = _cfg(version)
    sp = stage_params(cfg, first=True)
    window = fsdp.buffers(cfg, sp, 0.0, first=True)["FSDP unsharded layers"]
    layer16 = 2.0 * layer_params(cfg.model)
    assert fsdp.last_layer_window_exposed_bytes(cfg, sp, window, layer_activation_bytes=window) == 2 * layer16


@pytest.mark.parametrize(("method", "grad_accum"), [(Method.lora, 1), (Method.full, 2)])
def test_no_layer_gradient_where_none_is_made_anew(method: Method, grad_accum: int) -> None:
    """LoRA's layers train no weight of the unit's size; with accumulation under no_sync the accumulated unsharded
    gradient takes each new one in place (accumulates_unsharded_grads)."""
    cfg = _cfg(1, method=method, grad_accum=grad_accum)
    assert fsdp.layer_gradient_bytes(cfg, stage_params(cfg, first=True)) == 0.0


def test_the_roots_flat_gradient_counts_beyond_the_fp32_shard_the_states_hold() -> None:
    """Under mixed precision the root's parameters, their gradients and the flat one are bf16, the shard the states
    count for it fp32 (planner.engines.fsdp gradients): the flat gradient's item is what it holds beyond that shard."""
    cfg = _cfg(1)
    elements = fsdp.fsdp1_root_params(cfg)
    items = fsdp.fsdp1_root_end_items(cfg, stage_params(cfg, first=True))
    assert items == {"FSDP1 root parameters, unsharded": 2.0 * elements,
                     "FSDP1 root gradients, per parameter": 2.0 * elements,
                     "FSDP1 root gradient, flat (beyond its shard)": 2.0 * elements - 4.0 * elements / cfg.dp}
