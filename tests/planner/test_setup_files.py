"""What each key of a training setup sets (planner/setup_files.py), key by key, with the tools' own defaults."""

from __future__ import annotations

import pytest

from planner.choices import Attn, FsdpStrategy, GradCkpt, Method, Offload, OffloadDevice, Precision, Quant, Stage
from planner.errors import PlanError
from planner.setup_files import (
    ACROSS,
    DOCUMENTS,
    FLATTENED,
    axolotl,
    combine,
    deepspeed,
    detect,
    freeze_layers_for,
    llamafactory,
    model_value,
    packing_problem,
    rope_for,
    trainer,
)


def nowhere(_: str) -> bool:
    return False


@pytest.mark.parametrize(("data", "suffix", "kind"), [
    ({"model_name_or_path": "x", "finetuning_type": "lora", "template": "llama3"}, ".yaml", "llamafactory"),
    ({"model_name_or_path": "x", "stage": "sft", "per_device_train_batch_size": 2}, ".yaml", "llamafactory"),
    ({"base_model": "x", "adapter": "qlora", "sequence_len": 512}, ".yml", "axolotl"),
    ({"output_dir": "o", "per_device_train_batch_size": 2}, ".json", "trainer"),
    ({"zero_optimization": {"stage": 2}}, ".json", "deepspeed"),
    ({"distributed_type": "FSDP", "fsdp_config": {}}, ".yaml", "accelerate"),
])
def test_detect(data: dict, suffix: str, kind: str) -> None:
    assert detect(data, suffix) == kind


def test_llamafactory_defaults_are_llamafactorys() -> None:
    r = llamafactory({"model_name_or_path": "meta-llama/Llama-2-7b-hf", "lora_rank": 16}, "t.yaml", nowhere)
    values, origin = combine([r])
    assert values["model"] == "llama-2-7b"
    assert values["lora_alpha"] == 32  # alpha defaults to 2 x rank
    assert (values["lora_dropout"], values["grad_ckpt"], values["micro_batch"], values["precision"]) == \
           (0.0, GradCkpt.full, 8, Precision.fp32)
    assert origin["micro_batch"] == "t.yaml (LLaMA-Factory's default)"


@pytest.mark.parametrize(("extra", "expected"), [
    ({"disable_gradient_checkpointing": True}, {"grad_ckpt": GradCkpt.none}),
    ({"disable_gradient_checkpointing": True, "gradient_checkpointing": True}, {"grad_ckpt": GradCkpt.full}),
    ({"pure_bf16": True, "bf16": True}, {"precision": Precision.bf16_true}),
    ({"fp16": True}, {"precision": Precision.fp16_mixed}),
    ({"quantization_bit": 8}, {"method": Method.qlora, "quant": Quant.int8}),
    ({"finetuning_type": "full"}, {"method": Method.full}),
    ({"stage": "dpo"}, {"stage": Stage.dpo}),
    ({"flash_attn": "disabled"}, {"attn": Attn.eager}),
], ids=["ckpt-off", "trainer-ckpt-wins", "pure-bf16", "fp16", "8-bit", "full", "dpo", "eager"])
def test_llamafactory_keys(extra: dict, expected: dict) -> None:
    values, _ = combine([llamafactory({"model_name_or_path": "7b", **extra}, "t.yaml", nowhere)])
    assert {k: values[k] for k in expected} == expected


def test_llamafactory_rope_and_freeze_need_the_model() -> None:
    r = llamafactory({"model_name_or_path": "7b", "rope_scaling": "linear", "finetuning_type": "freeze",
                      "freeze_trainable_layers": 4}, "t.yaml", nowhere)
    assert r.pending == {"rope_type": "linear", "trainable_layers": 4}
    assert freeze_layers_for(4, 32, "t.yaml") == 28
    assert rope_for("linear", 8192, 4096) == "linear:2.0"
    assert rope_for("dynamic", 10000, 4096) == "dynamic:3.0"  # ceil(cutoff_len / max positions)
    assert rope_for("linear", 4096, 4096) is None
    with pytest.raises(PlanError, match="leaves no layer"):
        freeze_layers_for(32, 32, "t.yaml")


def test_axolotl_full_fine_tuning_in_bf16_keeps_no_fp32_copy_outside_deepspeed() -> None:
    base = {"base_model": "NousResearch/Meta-Llama-3-8B", "bf16": "auto", "micro_batch_size": 2}
    assert combine([axolotl(base, "a.yml", nowhere)])[0]["precision"] is Precision.bf16_true
    with_ds = axolotl({**base, "deepspeed": "zero3.json"}, "a.yml", nowhere)
    assert with_ds.values["precision"] is Precision.bf16_mixed and with_ds.references == (("deepspeed",
                                                                                           "zero3.json"),)
    lora = axolotl({**base, "adapter": "lora"}, "a.yml", nowhere)
    assert lora.values["precision"] is Precision.bf16_mixed and lora.values["lora_targets"] == "q_proj,v_proj"
    eight = axolotl({**base, "adapter": "lora", "load_in_8bit": True, "attention": "flash"}, "a.yml", nowhere)
    assert (eight.values["method"], eight.values["quant"], eight.values["attn"]) == (Method.qlora, Quant.int8,
                                                                                      Attn.flash)


def test_axolotl_fsdp2_and_preference_stages() -> None:
    r = axolotl({"base_model": "x", "fsdp_version": 2, "fsdp_config": {"reshard_after_forward": False,
                                                                       "offload_params": False}, "rl": "dpo",
                 "adapter": "lora"}, "a.yml", nowhere)
    assert (r.values["fsdp"], r.values["fsdp_version"], r.values["stage"]) == (FsdpStrategy.shard_grad_op, 2,
                                                                                Stage.dpo)
    with pytest.raises(PlanError, match="a.yml: rl: 'kto' is not planned"):
        axolotl({"base_model": "x", "rl": "kto"}, "a.yml", nowhere)


def test_trainer_json() -> None:
    r = trainer({"per_device_train_batch_size": 2, "fsdp": "full_shard offload auto_wrap",
                 "fsdp_config": {"version": 1}, "optim": "paged_adamw_8bit", "torch_compile": True}, "t.json", nowhere)
    assert (r.values["fsdp"], r.values["offload"], r.values["fsdp_version"], r.values["torch_compile"]) == \
           (FsdpStrategy.full_shard, Offload.all, 1, True)
    with pytest.raises(PlanError, match="t.json: deepspeed / fsdp: both are set"):
        trainer({"deepspeed": "ds.json", "fsdp": "full_shard"}, "t.json", nowhere)


def test_deepspeed_offload_devices() -> None:
    nvme = deepspeed({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"},
                                            "offload_optimizer": {"device": "nvme"}}}, "ds.json")
    assert (nvme.values["offload"], nvme.values["offload_device"]) == (Offload.all, OffloadDevice.nvme)
    with pytest.raises(PlanError, match="one offload device"):
        deepspeed({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"},
                                         "offload_optimizer": {"device": "nvme"}}}, "ds.json")
    with pytest.raises(PlanError, match="optimizer.type: 'OneBitAdam' is not modelled"):
        deepspeed({"optimizer": {"type": "OneBitAdam"}}, "ds.json")
    auto = deepspeed({"zero_optimization": {"stage": 1}, "bf16": {"enabled": "auto"},
                      "train_micro_batch_size_per_gpu": "auto"}, "ds.json")
    assert "precision" not in auto.values and "micro_batch" not in auto.values  # "auto": the Trainer decides


def test_combine_refuses_disagreement_and_defaults_fill_gaps() -> None:
    lf = llamafactory({"model_name_or_path": "7b", "bf16": True}, "t.yaml", nowhere)
    ds = deepspeed({"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}, "ds.json")
    with pytest.raises(PlanError, match="ds.json sets precision = 16-mixed but t.yaml sets bf16-mixed"):
        combine([lf, ds])
    quiet = llamafactory({"model_name_or_path": "7b"}, "t.yaml", nowhere)  # fp32 is only LLaMA-Factory's default
    assert combine([quiet, ds])[0]["precision"] is Precision.fp16_mixed


@pytest.mark.parametrize(("name", "expected"), [
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-8b"), ("meta-llama/Llama-2-13b-chat-hf", "llama-2-13b"),
    ("Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b"), ("mistralai/Mistral-7B-v0.1", "mistral-7b"),
    ("casperhansen/llama-3-70b-fp16", "llama-3-70b"), ("THUDM/chatglm3-6b", "chatglm3-6b"), ("13b", "13b"),
])
def test_hub_ids_name_catalog_models(name: str, expected: str) -> None:
    assert model_value(name, nowhere) == (expected, None)


def test_an_unknown_hub_id_is_a_problem_only_when_used() -> None:
    value, problem = model_value("mistralai/Mistral-7B-v0.3", nowhere)
    assert value is None and "pass --model" in problem
    assert model_value("/models/mine", lambda s: True) == ("/models/mine", None)


# --- packed documents ---------------------------------------------------------------------------------------------

_LF = {"model_name_or_path": "7b", "finetuning_type": "lora"}
_AX = {"base_model": "7b", "adapter": "lora"}
_TRL = {"output_dir": "o", "per_device_train_batch_size": 2}


@pytest.mark.parametrize(("reader", "data", "pending"), [
    (llamafactory, {**_LF, "neat_packing": True}, {DOCUMENTS: "neat_packing: true"}),
    (llamafactory, {**_LF, "packing": True}, {ACROSS}),
    (llamafactory, {**_LF, "stage": "pt"}, {ACROSS}),  # LLaMA-Factory packs pre-training data by default
    (llamafactory, {**_LF, "stage": "pt", "packing": False}, {}),
    (llamafactory, _LF, {}),
    (trainer, {**_TRL, "padding_free": True}, {DOCUMENTS: "padding_free: true", FLATTENED: "padding_free: true"}),
    (trainer, {**_TRL, "packing": True}, {DOCUMENTS, FLATTENED}),  # bfd, TRL's default strategy, is padding-free
    (trainer, {**_TRL, "packing": True, "packing_strategy": "bfd-requeue"}, {DOCUMENTS, FLATTENED}),
    (trainer, {**_TRL, "packing": True, "packing_strategy": "wrapped"}, {ACROSS}),
    (trainer, _TRL, {}),
    (axolotl, {**_AX, "sample_packing": True, "flash_attention": True}, {DOCUMENTS: "sample_packing: true"}),
    (axolotl, {**_AX, "sample_packing": True, "sdp_attention": True}, {DOCUMENTS}),
    (axolotl, {**_AX, "sample_packing": True, "xformers_attention": True}, {DOCUMENTS}),
    (axolotl, {**_AX, "sample_packing": True}, {ACROSS}),  # axolotl warns: no decontamination
    (axolotl, {**_AX, "sample_packing": True, "eager_attention": True}, {ACROSS}),
    (axolotl, _AX, {}),
], ids=["lf-neat", "lf-packing", "lf-pt", "lf-pt-off", "lf-none", "trl-padding-free", "trl-bfd", "trl-requeue",
        "trl-wrapped", "trl-none", "ax-flash", "ax-sdp", "ax-xformers", "ax-default", "ax-eager", "ax-none"])
def test_what_packing_each_setup_reads(reader, data: dict, pending) -> None:
    found = {k: v for k, v in reader(data, "s", nowhere).pending.items() if k in (DOCUMENTS, ACROSS, FLATTENED)}
    assert (found if isinstance(pending, dict) else set(found)) == pending


def test_neat_packing_says_the_collator_builds_the_mask() -> None:
    """LLaMA-Factory's neat_packing: its SFT collator builds the packed documents' 4-D mask (collator_mask, planner.
    memory.collator_mask_bytes); TRL's padding-free packing leaves it to transformers (the default)."""
    assert llamafactory({**_LF, "neat_packing": True}, "s", nowhere).values["collator_mask"] is True
    assert "collator_mask" not in llamafactory(_LF, "s", nowhere).values
    assert "collator_mask" not in trainer({**_TRL, "packing": True}, "s", nowhere).values


def test_packing_settings_the_tools_refuse() -> None:
    with pytest.raises(PlanError, match="s: neat_packing: LLaMA-Factory packs without cross-attention for sft only"):
        llamafactory({**_LF, "stage": "dpo", "neat_packing": True}, "s", nowhere)
    with pytest.raises(PlanError, match="s: packing_strategy: 'ffd' is not one of"):
        trainer({**_TRL, "packing": True, "packing_strategy": "ffd"}, "s", nowhere)


def test_packing_problems() -> None:
    docs, across, flat = {DOCUMENTS: "neat_packing: true"}, {ACROSS: "packing: true ..."}, \
        {DOCUMENTS: "padding_free: true", FLATTENED: "padding_free: true"}
    kw = dict(attn=Attn.flash, micro_batch=2, seq_len=2048)
    assert "add --doc-len TOKENS" in packing_problem(docs, "f.yaml", doc_len_given=False, **kw)
    assert packing_problem(docs, "f.yaml", doc_len_given=True, **kw) is None
    assert packing_problem(across, "f.yaml", doc_len_given=False, **kw) is None
    assert packing_problem(across, "f.yaml", doc_len_given=True, **kw).endswith("--doc-len does not apply")
    assert packing_problem(flat, "f.json", doc_len_given=True, **kw) is None  # varlen keeps the packs apart
    assert "--micro-batch 1 --seq-len 4096" in packing_problem(flat, "f.json", doc_len_given=True,
                                                               **{**kw, "attn": Attn.sdpa})
    assert packing_problem(flat, "f.json", doc_len_given=True, **{**kw, "attn": Attn.sdpa, "micro_batch": 1}) is None
