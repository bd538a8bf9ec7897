"""Every emitted accelerate.yaml goes through accelerate's own code: the config class, `accelerate launch`'s
argument validation and environment preparation, and the DeepSpeed / FSDP plugin built from that environment."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.build import build_config
from planner.configs.accelerate_config import build_accelerate_config
from planner.configs.ds_config import build_ds_config
from planner.search import candidates
from planner.strategy import Engine, FsdpStrategy, GradCkpt, Method, Offload, TrainConfig, ZeroStage
from planner.validity import problems

pytest.importorskip("accelerate")
from accelerate.commands.config.config_args import ClusterConfig  # noqa: E402
from accelerate.commands.launch import _validate_launch_command, launch_command_parser  # noqa: E402
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env  # noqa: E402

BASES = (("7b", "8xA800"), ("70b", "2x8xH100"), ("mixtral-8x7b", "4x8xA800"), ("qwen2.5-7b", "1xA100-80G"),
         ("llama-3.2-1b", "2xRTX4090"))


@cache
def pool(i: int) -> tuple[TrainConfig, ...]:
    model, gpus = BASES[i]
    base = build_config(model=model, gpus=gpus, check=False)
    return tuple(c for c in candidates(base) if not problems(c))


def launch_env(cfg: TrainConfig, where: Path) -> tuple[dict[str, str], object]:
    """Write the files, run accelerate launch's own config handling; return the process environment it would
    start the script with, and the parsed ClusterConfig."""
    ds_path = where / "ds_config.json"
    ds_path.write_text(json.dumps(build_ds_config(cfg)) if cfg.engine is Engine.deepspeed else "{}")
    yaml_path = where / "accelerate.yaml"
    yaml_path.write_text(yaml.safe_dump(build_accelerate_config(cfg, ds_config_file=str(ds_path)), sort_keys=False))
    cluster = ClusterConfig.from_yaml_file(str(yaml_path))
    args = launch_command_parser().parse_args(["--config_file", str(yaml_path), "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        # what launch_command does before deepspeed_launcher (accelerate/commands/launch.py)
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return env, cluster


def check_plan(cfg: TrainConfig, where: Path) -> None:
    env, cluster = launch_env(cfg, where)
    assert cluster.num_processes == cfg.world_size and cluster.num_machines == cfg.cluster.nodes
    expected = {Engine.deepspeed: "DEEPSPEED", Engine.fsdp: "FSDP"}.get(
        cfg.engine, "MULTI_GPU" if cfg.world_size > 1 else "NO")
    assert str(cluster.distributed_type.value) == expected
    if cfg.engine is Engine.deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        with mock.patch.dict(os.environ, env):
            plugin = DeepSpeedPlugin()  # raises if the yaml also sets what the ds_config owns
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == int(cfg.zero)
        assert plugin.zero3_init_flag == (cfg.zero is ZeroStage.WEIGHTS)
    elif cfg.engine is Engine.fsdp:
        from two_steps import fsdp_plugin_from_yaml

        plugin, precision, loading = fsdp_plugin_from_yaml(where / "accelerate.yaml")
        assert plugin.fsdp_version == int(cfg.fsdp_version)
        if cfg.fsdp_version == 2:
            assert plugin.reshard_after_forward == (cfg.fsdp is not FsdpStrategy.shard_grad_op)
        else:
            assert plugin.sharding_strategy.name == cfg.fsdp.value.upper()
            assert plugin.use_orig_params
        if cfg.fsdp_version == 2:  # FSDP2 takes an OffloadPolicy: CPUOffloadPolicy when parameters go to the host
            from torch.distributed.fsdp import CPUOffloadPolicy

            assert isinstance(plugin.cpu_offload, CPUOffloadPolicy) == (cfg.offload is Offload.all)
        else:
            assert plugin.cpu_offload.offload_params == (cfg.offload is Offload.all)
        assert plugin.transformer_cls_names_to_wrap == [cfg.model.decoder_layer_class]
        assert plugin.state_dict_type.name in ("SHARDED_STATE_DICT", "FULL_STATE_DICT")
        assert loading["cpu_ram_efficient_loading"] and loading["sync_module_states"]
        assert plugin.activation_checkpointing == (cfg.grad_ckpt is GradCkpt.full)
        assert precision == {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(cfg.precision.value, "no")


def test_random_plans_load_through_accelerate(tmp_path: Path):
    seen: set[str] = set()

    @settings(max_examples=120, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(base=st.integers(0, len(BASES) - 1), index=st.integers(0, 10**9),
           engine=st.sampled_from(Engine))
    def prop(base: int, index: int, engine: Engine) -> None:
        plans = [c for c in pool(base) if c.engine is engine] or list(pool(base))
        cfg = plans[index % len(plans)]
        seen.add(f"{BASES[base]} {cfg.method.value} {cfg}")
        check_plan(cfg, tmp_path)

    prop()
    print(f"{len(seen)} distinct accelerate configs loaded")
    assert len(seen) >= 80


@pytest.mark.parametrize("gpus", ["8xA800", "2x8xA800"])
@pytest.mark.parametrize("kind", ["z2", "z3-offload", "fsdp", "fsdp-hybrid", "fsdp2-hybrid", "ddp"])
def test_fixed_plans(tmp_path: Path, kind: str, gpus: str):
    if kind.endswith("hybrid") and gpus == "8xA800":
        pytest.skip("hybrid_shard needs several nodes")
    kw = {"z2": dict(zero=2), "z3-offload": dict(zero=3, offload=Offload.all),
          "fsdp": dict(fsdp=FsdpStrategy.full_shard, method=Method.full),
          "fsdp-hybrid": dict(fsdp=FsdpStrategy.hybrid_shard, fsdp_version=1),
          "fsdp2-hybrid": dict(fsdp=FsdpStrategy.hybrid_shard), "ddp": {}}[kind]
    check_plan(build_config(model="7b", gpus=gpus, **kw), tmp_path)


def test_single_gpu_is_not_distributed(tmp_path: Path):
    cfg = build_config(model="7b", gpus="1xA100-80G")
    env, cluster = launch_env(cfg, tmp_path)
    assert str(cluster.distributed_type.value) == "NO" and cluster.num_processes == 1


def test_fsdp2_hybrid_is_a_2d_mesh_of_nodes_by_gpus(tmp_path: Path):
    """accelerate's own launch path turns the emitted parallelism_config into its ParallelismConfig: 2 replicas
    (nodes) x 8 shards (a node's GPUs), which accelerate calls hybrid sharded data parallel."""
    from accelerate.parallelism_config import ParallelismConfig

    cfg = build_config(model="7b", gpus="2x8xA800", fsdp=FsdpStrategy.hybrid_shard)
    env, _ = launch_env(cfg, tmp_path)
    assert env["ACCELERATE_USE_PARALLELISM_CONFIG"] == "true"
    with mock.patch.dict(os.environ, env):
        pc = ParallelismConfig()
    assert (pc.dp_replicate_size, pc.dp_shard_size) == (2, 8) and pc.dp_replicate_enabled and pc.total_size == 16
