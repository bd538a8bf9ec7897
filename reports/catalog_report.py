"""The model and GPU catalogs (`ftplan models`, `ftplan gpus`) as rich tables and JSON rows."""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.table import Table

from planner.gpus import GPUSpec
from planner.models import ModelSpec
from planner.params import total_params
from reports.fit import Col, FitTable
from reports.fmt import params


def models_json(rows: list[ModelSpec]) -> list[dict[str, Any]]:
    return [{"name": m.name, "params": total_params(m), "layers": m.num_layers, "hidden": m.hidden_size,
             "heads": m.num_heads, "kv_heads": m.num_kv_heads, "vocab": m.vocab_size,
             "experts": m.num_experts, "source": m.source} for m in rows]


def models_table(rows: list[ModelSpec]) -> Table:
    table = Table(title="Models (aliases: 7b, 13b, 70b = Llama-2)", title_justify="left")
    for col in ("name", "params", "layers", "hidden", "heads/kv", "vocab", "experts"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for m in rows:
        table.add_row(m.name, params(total_params(m)), str(m.num_layers), str(m.hidden_size),
                      f"{m.num_heads}/{m.num_kv_heads}", f"{m.vocab_size:,}",
                      f"{m.experts_per_token}/{m.num_experts}" if m.is_moe else "")
    return table


def gpus_json(rows: list[GPUSpec]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(g) for g in rows]


def gpus_table(rows: list[GPUSpec]) -> FitTable:
    # names and numbers never wrap; the link's name does; a narrow terminal drops the fp32 peak first
    table = FitTable([Col("name"), Col("memory\nGiB", "right"), Col("bf16\nTF/s", "right"),
                      Col("fp32\nTF/s", "right", drop=2), Col("HBM\nGB/s", "right"),
                      Col("intra-node", wrap=True, min_width=10), Col("GB/s", "right"),
                      Col("inter-node\nGB/s", "right", drop=1)],
                     title="GPUs (dense peaks; link bandwidth per GPU, one direction)", title_justify="left")
    for g in rows:
        table.add_row(g.name, f"{g.hbm_bytes / 2**30:.1f}", f"{g.peak_bf16_flops_per_s / 1e12:.1f}",
                      f"{g.peak_fp32_flops_per_s / 1e12:.1f}", f"{g.hbm_bytes_per_s / 1e9:.0f}", g.intra_node_link,
                      f"{g.intra_node_bytes_per_s / 1e9:.0f}", f"{g.inter_node_bytes_per_s / 1e9:.1f}")
    return table
