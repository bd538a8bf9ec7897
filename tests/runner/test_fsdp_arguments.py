"""The Trainer's FSDP arguments in transformers 5.25's words: `fsdp=True` with everything in `fsdp_config`
(runner.run_common.fsdp_arguments), without the deprecation transformers logs for `fsdp` given as words
(training_args.py _apply_legacy_fsdp_to_config), and to the same accelerate FSDP plugin arguments as those words
gave: FSDP version, sharding (reshard_after_forward), CPU offload and the wrapped layer class."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from planner.build import build_config
from planner.strategy import FsdpStrategy, FsdpVersion, Method, Offload, TrainConfig
from runner.run_common import fsdp_arguments

PLANS = {
    "fsdp2-full_shard": dict(fsdp=FsdpStrategy.full_shard, fsdp_version=FsdpVersion.TWO),
    "fsdp2-shard_grad_op": dict(fsdp=FsdpStrategy.shard_grad_op, fsdp_version=FsdpVersion.TWO),
    "fsdp2-full_shard-offload": dict(fsdp=FsdpStrategy.full_shard, fsdp_version=FsdpVersion.TWO, offload=Offload.all),
    "fsdp1-full_shard": dict(fsdp=FsdpStrategy.full_shard, fsdp_version=FsdpVersion.ONE),
    "fsdp1-shard_grad_op-offload": dict(fsdp=FsdpStrategy.shard_grad_op, fsdp_version=FsdpVersion.ONE,
                                        offload=Offload.all),
    "fsdp1-no_shard": dict(fsdp=FsdpStrategy.no_shard, fsdp_version=FsdpVersion.ONE),
    "fsdp1-hybrid_shard": dict(fsdp=FsdpStrategy.hybrid_shard, fsdp_version=FsdpVersion.ONE, gpus="2x8xH100"),
}


def _plan(name: str) -> TrainConfig:
    kw = {"model": "llama-3-8b", "gpus": "8xH100", "method": Method.full, "micro_batch": 1, "grad_accum": 2,
          "check": False, **PLANS[name]}
    return build_config(**kw)


def _legacy(cfg: TrainConfig) -> dict:
    """The arguments the runner gave before transformers 5.25 deprecated them: FSDPOption words, and the
    FSDP1-only keys for FSDP1."""
    words = [cfg.fsdp.value, "auto_wrap"] + (["offload"] if cfg.offload is Offload.all else [])
    fsdp_config = {"transformer_layer_cls_to_wrap": [cfg.model.decoder_layer_class], "activation_checkpointing": False,
                   "version": int(cfg.fsdp_version)}
    if cfg.fsdp_version is FsdpVersion.ONE:
        fsdp_config |= {"backward_prefetch": "backward_pre", "forward_prefetch": False, "use_orig_params": True,
                        "sync_module_states": True}
    return {"fsdp": " ".join(words), "fsdp_config": fsdp_config}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _built(make, monkeypatch: pytest.MonkeyPatch):
    """(TrainingArguments, the deprecation messages about `fsdp` it logged or warned)."""
    monkeypatch.delenv("FSDP_CPU_RAM_EFFICIENT_LOADING", raising=False)  # _process_fsdp_args sets it
    handler = _Records()
    logger = logging.getLogger("transformers.training_args")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = make()
    finally:
        logger.removeHandler(handler)
    said = handler.messages + [str(w.message) for w in caught
                               if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    return args, [m for m in said if "`fsdp` as a" in m]


@pytest.mark.parametrize("name", sorted(PLANS))
def test_runner_fsdp_arguments_are_not_deprecated_and_build_the_same_plugin(tmp_path: Path, name: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import TrainingArguments

    cfg = _plan(name)
    # runner.run_common.training_arguments passes these for an FSDP plan of several ranks (whose gloo backend would
    # want a process group here: this one process says the CPU alone)
    args, deprecated = _built(lambda: TrainingArguments(output_dir=str(tmp_path / "new"), use_cpu=True,
                                                        **fsdp_arguments(cfg)), monkeypatch)
    assert deprecated == []
    assert args.fsdp is True and args.parallelism_config is None
    old, said = _built(lambda: TrainingArguments(output_dir=str(tmp_path / "old"), use_cpu=True, **_legacy(cfg)),
                       monkeypatch)
    assert said and "deprecated" in said[0]  # the form this replaces is the one transformers warns about
    assert args.fsdp_plugin_args == old.fsdp_plugin_args
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == int(cfg.fsdp_version)
    assert plugin["transformer_cls_names_to_wrap"] == cfg.model.decoder_layer_class
    assert plugin.get("cpu_offload", False) is (cfg.offload is Offload.all)
    if cfg.fsdp_version is FsdpVersion.TWO:
        assert plugin["reshard_after_forward"] is (cfg.fsdp is not FsdpStrategy.shard_grad_op)
    else:
        assert plugin["reshard_after_forward"] == cfg.fsdp.value


def test_fsdp2_hybrid_shard_runs_on_accelerates_2d_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The legacy words refused FSDP2's hybrid_shard (`fsdp=hybrid_shard` is FSDP1-only there); accelerate builds it
    from a ParallelismConfig, with a node's 8 GPUs in the shard group and the 2 nodes as replicas, as
    accelerate.yaml's parallelism_config section says."""
    from transformers import TrainingArguments

    cfg = build_config(model="llama-3-8b", gpus="2x8xH100", method=Method.full, fsdp=FsdpStrategy.hybrid_shard,
                       fsdp_version=FsdpVersion.TWO, micro_batch=1, grad_accum=2, check=False)
    kw = fsdp_arguments(cfg)
    pc = kw["parallelism_config"]
    assert (pc.dp_replicate_size, pc.dp_shard_size, pc.tp_size, pc.cp_size) == (2, 8, 1, 1)
    args, deprecated = _built(lambda: TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, **kw),
                              monkeypatch)
    assert deprecated == [] and args.parallelism_config is pc
    assert args.fsdp_plugin_args["fsdp_version"] == 2 and args.fsdp_plugin_args["reshard_after_forward"] is True
    with pytest.raises(ValueError, match="only available with FSDP1"):
        TrainingArguments(output_dir=str(tmp_path / "old"), use_cpu=True, **_legacy(cfg))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("strategy", [FsdpStrategy.full_shard, FsdpStrategy.shard_grad_op, FsdpStrategy.hybrid_shard,
                                      FsdpStrategy.no_shard])
def test_the_planner_reads_back_the_runners_fsdp_arguments(version: int, strategy: FsdpStrategy) -> None:
    """`ftplan plan --from` a TrainingArguments file with the runner's own FSDP keywords gives the plan's strategy
    back (planner.setup_files `_reshard_strategy`: FSDP1's reshard_after_forward is the strategy's name)."""
    from planner.setup_files import trainer

    if version == 2 and strategy in (FsdpStrategy.hybrid_shard, FsdpStrategy.no_shard):
        pytest.skip("FSDP2 writes a bool (hybrid sharding is a mesh; no_shard is not FSDP2)")
    cfg = build_config(model="7b", gpus="8xA800", fsdp=strategy, fsdp_version=version, check=False)
    reading = trainer({"model_name_or_path": "m", **fsdp_arguments(cfg)}, "args.json", lambda _: False)
    assert reading.values["fsdp"] is strategy
