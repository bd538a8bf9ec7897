"""Registry-wide checks of the GPU catalog, and datasheet figures of the most used entries."""

from __future__ import annotations

import pytest

from planner.errors import PlanError
from planner.gpus import GPUS, gpu_from_name, parse_gpus

TF, GB = 1e12, 1e9


ACCELERATORS = [n for n in GPUS if n != "CPU"]  # the CPU pseudo-device has no tensor cores


@pytest.mark.parametrize("name", list(GPUS))
def test_entry_is_complete(name: str) -> None:
    g = GPUS[name]
    assert g.hbm_bytes > 0 and g.hbm_bytes_per_s > 0 and g.gpus_per_node >= 1 and g.source
    assert g.intra_node_bytes_per_s > 0 and g.inter_node_bytes_per_s > 0 and g.host_link_bytes_per_s > 0
    assert gpu_from_name(name.lower()) is g
    assert str(parse_gpus(f"1x{name}")) == f"1x{name}"


@pytest.mark.parametrize("name", ACCELERATORS)
def test_entry_is_consistent(name: str) -> None:
    g = GPUS[name]
    assert g.peak_fp32_flops_per_s <= g.peak_tf32_flops_per_s <= g.peak_fp16_flops_per_s
    assert g.peak_bf16_flops_per_s in (0.0, g.peak_fp16_flops_per_s)


# name -> (GiB nvidia-smi shows, dense bf16/fp16 TF/s, tf32, fp32, HBM GB/s), datasheet figures
DATASHEET = {
    "A100-80G": (80, 312, 156, 19.5, 2039),  # NVIDIA A100 datasheet (SXM 80GB)
    "A100-40G": (40, 312, 156, 19.5, 1555),  # NVIDIA A100 datasheet (SXM 40GB)
    "A800": (80, 312, 156, 19.5, 2039),  # A100-80G compute, NVLink cut to 400 GB/s
    "H100": (79.65, 989.4, 494.7, 66.9, 3350),  # NVIDIA H100 datasheet (SXM5), 1979 TF bf16 with sparsity / 2
    "A10G": (22.49, 70, 35, 35, 600),  # AWS g5; Baseten A10 vs A10G spec table
    "RTX4090": (23.99, 165.2, 82.6, 82.6, 1008),  # Ada whitepaper, fp16 tensor with fp32 accumulate
    "T4": (15, 65, 8.1, 8.1, 320),  # NVIDIA T4 datasheet, no bf16 (fp16 column)
}


@pytest.mark.parametrize("name", list(DATASHEET))
def test_datasheet_figures(name: str) -> None:
    gib, half, tf32, fp32, bw = DATASHEET[name]
    g = GPUS[name]
    assert g.hbm_bytes / 2**30 == pytest.approx(gib, abs=0.01)
    assert g.peak_fp16_flops_per_s == pytest.approx(half * TF)
    assert g.peak_tf32_flops_per_s == pytest.approx(tf32 * TF)
    assert g.peak_fp32_flops_per_s == pytest.approx(fp32 * TF)
    assert g.hbm_bytes_per_s == pytest.approx(bw * GB)


def test_no_bf16_before_ampere() -> None:
    assert not GPUS["V100-32G"].supports_bf16 and not GPUS["T4"].supports_bf16


@pytest.mark.parametrize(("text", "nodes", "per_node", "gpu"), [
    ("8xA800", 1, 8, "A800"), ("2x8xH100", 2, 8, "H100"), ("4xRTX4090", 1, 4, "RTX4090"), ("A100", 1, 1, "A100-80G"),
    ("16xA800", 2, 8, "A800"), ("2xCPU", 1, 2, "CPU"),
])
def test_parse_gpus(text: str, nodes: int, per_node: int, gpu: str) -> None:
    c = parse_gpus(text)
    assert (c.nodes, c.gpus_per_node, c.gpu.name) == (nodes, per_node, gpu)


@pytest.mark.parametrize("text", ["8@A800", "x8xA800", "0xA800", "2x9xA800", "12xA800", "8xA8000", ""])
def test_parse_gpus_rejects(text: str) -> None:
    with pytest.raises(PlanError):
        parse_gpus(text)
