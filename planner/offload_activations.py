"""Activations kept in host memory: torchtune's OffloadActivations, Unsloth's offloaded checkpoints,
torch.autograd.graph.save_on_cpu.

torchtune (torchtune/training/_activation_offloading.py, OffloadActivations) installs saved-tensor hooks
that copy every tensor autograd saves to pinned host memory on a side stream during forward and bring
it back, one layer ahead, during backward; with activation checkpointing only the checkpoints (each
layer's input) are saved, so only they travel (torchtune docs, "Memory optimization overview:
activation offloading"). Unsloth's `use_gradient_checkpointing="unsloth"` moves the same checkpoints.
On the GPU stay the layer being computed and the one in flight (its copy not yet done, or prefetched
for backward): two layers' saved tensors, plus, with checkpointing, the one layer backward recomputes.

Time: the copies cross PCIe once each way per micro-batch, D2H under forward and H2D under backward,
on their own stream; what exceeds the compute they overlap is exposed.
"""

from __future__ import annotations

RESIDENT_LAYERS = 2  # the layer computing and the one whose copy (or prefetch) is in flight


def gpu_resident_activation_bytes(per_layer_bytes: float, layers: int) -> float:
    """Saved-activation bytes left on the GPU when every layer's saved tensors go to the host."""
    return per_layer_bytes * min(layers, RESIDENT_LAYERS)


def host_activation_bytes(per_layer_bytes: float, layers: int) -> float:
    """Bytes of pinned host memory per rank: every layer's saved tensors (the GPU copy of the resident
    layers is freed once their copy lands, so the host holds all of them)."""
    return per_layer_bytes * layers


def offload_transfer_s(bytes_per_micro_batch: float, host_link_bytes_per_s: float) -> float:
    """One direction of the copies for one micro-batch over the host link (PCIe), seconds."""
    return bytes_per_micro_batch / host_link_bytes_per_s


def exposed_offload_s(transfer_s: float, overlapped_compute_s: float) -> float:
    """Copy time not hidden under the compute it overlaps (side stream; serial when it is longer)."""
    return max(0.0, transfer_s - overlapped_compute_s)
