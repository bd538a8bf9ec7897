"""One model of each config.json model_type in the catalog (planner/model_specs/, planner.models), smallest first
where the family has several, plus Gemma 3's 1B (a 1:5 local:global layout at a 512-token window, unlike the 4B+'s
1024): the models the memory and time properties are drawn over (tests/planner/test_memory_properties.py,
tests/planner/test_time_properties.py). tests/planner/test_time_properties.py checks that it covers every family.
Also the offload settings a plan's engine offers, in the order that moves more to the host (`offload_ladder`)."""

from planner.strategy import Engine, Offload, TrainConfig, ZeroStage

FAMILIES = ("llama-3.2-1b", "mistral-7b", "mixtral-8x7b", "qwen2.5-7b", "baichuan2-7b", "chatglm3-6b", "bloom-7b1",
            "qwen3-0.6b", "qwen3-30b-a3b", "llama-4-scout-17b-16e", "gemma-3-1b", "gemma-3-4b", "gpt-oss-20b",
            "deepseek-v3", "phi-4", "olmo-2-1b")


def offload_ladder(cfg: TrainConfig) -> list[Offload]:
    """The offload settings of `cfg`'s engine, each moving more to the host than the one before (ZeRO-Offload: the
    optimizer from ZeRO-1, the parameters too at ZeRO-3; FSDP's CPUOffload: everything); empty where it has none."""
    if cfg.engine is Engine.deepspeed and cfg.zero >= ZeroStage.OPTIMIZER_STATES:
        return [Offload.none, Offload.optimizer] + ([Offload.all] if cfg.zero is ZeroStage.WEIGHTS else [])
    if cfg.engine is Engine.fsdp:
        return [Offload.none, Offload.all]
    return []
