"""`--from FILE`: a LLaMA-Factory or axolotl YAML, a TRL / TrainingArguments JSON, a ds_config.json or an accelerate
config read into the options object and planned (tests/setups/ holds the setups, laid out as each tool's examples).
What each key means is tested in tests/planner/test_setup_files.py; here, end to end through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import run

SETUPS = Path(__file__).parent / "setups"


def config_of(capsys, monkeypatch, *args: str) -> dict:
    code, out, err = run(capsys, monkeypatch, "estimate", *args, "--json")
    assert code == 0, err
    return json.loads(out)["config"]


def picked(config: dict, *keys: str) -> dict:
    return {k: config[k] for k in keys}


KEYS = ("method", "quant", "precision", "engine", "zero", "fsdp", "offload", "micro_batch", "grad_accum", "seq_len",
        "grad_ckpt", "attn", "lora_r", "lora_alpha", "lora_dropout", "optimizer")


def test_a_memory_estimate_from_my_llamafactory_yaml(capsys, monkeypatch) -> None:
    """LLaMA-Factory's LoRA + ZeRO-3 example: the YAML's batch shape, its `deepspeed:` file (found beside it) and
    LLaMA-Factory's own defaults (checkpointing on, LoRA dropout 0, alpha 2 x rank, no kbit preparation)."""
    cfg = config_of(capsys, monkeypatch, "--from", str(SETUPS / "lf_llama3_lora_sft_ds3.yaml"), "--gpus", "8xA800")
    assert cfg["model"]["name"] == "llama-3-8b"
    assert picked(cfg, *KEYS) == {
        "method": "lora", "quant": "none", "precision": "bf16-mixed", "engine": "deepspeed", "zero": 3,
        "fsdp": "full_shard", "offload": "none", "micro_batch": 1, "grad_accum": 8, "seq_len": 2048,
        "grad_ckpt": "full", "attn": "sdpa", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "optimizer": "adamw"}
    assert cfg["kbit_prep"] is False


def test_an_axolotl_yaml_is_planned(capsys, monkeypatch) -> None:
    """axolotl's QLoRA + FSDP example for Llama-3-70B: plan keeps its method, its attention and its global batch
    (micro-batch 1 x accumulation 4 x 8 GPUs), and the estimate reads FSDP1 with parameter offload."""
    setup = str(SETUPS / "axolotl_llama3_70b_qlora_fsdp.yaml")
    code, out, err = run(capsys, monkeypatch, "plan", "--from", setup, "--gpus", "8xA100-80G", "--json")
    assert code == 0, err
    plans = json.loads(out)["plans"]
    assert plans and {p["config"]["method"] for p in plans} == {"qlora"}
    assert {p["config"]["attn"] for p in plans} == {"flash"}
    assert {p["config"]["micro_batch"] * p["config"]["grad_accum"] * 8 for p in plans} == {32}
    cfg = config_of(capsys, monkeypatch, "--from", setup, "--gpus", "8xA100-80G")
    assert cfg["model"]["name"] == "llama-3-70b"
    assert picked(cfg, "method", "quant", "engine", "fsdp", "offload", "fsdp_version", "seq_len", "micro_batch",
                  "grad_accum", "grad_ckpt", "lora_dropout") == {
        "method": "qlora", "quant": "nf4", "engine": "fsdp", "fsdp": "full_shard", "offload": "all",
        "fsdp_version": 1, "seq_len": 512, "micro_batch": 1, "grad_accum": 4, "grad_ckpt": "full",
        "lora_dropout": 0.05}


@pytest.mark.parametrize(("files", "expected"), [
    (("axolotl_mistral_lora_zero2.yaml",),
     {"method": "lora", "engine": "deepspeed", "zero": 2, "offload": "optimizer", "micro_batch": 2, "grad_accum": 4,
      "seq_len": 4096, "attn": "sdpa", "lora_r": 32, "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}),
    (("trl_sft_args.json",),
     {"method": "lora", "engine": "ddp", "micro_batch": 4, "grad_accum": 4, "seq_len": 2048, "grad_ckpt": "full",
      "lora_r": 32, "lora_alpha": 16, "lora_targets": ["all"], "precision": "bf16-mixed"}),
    (("lf_llama3_lora_sft_fsdp.yaml", "accelerate_fsdp_config.yaml"),
     {"engine": "fsdp", "fsdp": "full_shard", "fsdp_version": 1, "offload": "none", "micro_batch": 4,
      "grad_accum": 2, "seq_len": 1024, "precision": "bf16-mixed"}),
    (("lf_qwen_freeze_sft.yaml",),
     {"method": "full", "freeze_layers": 20, "optimizer": "adamw_8bit", "attn": "flash", "kernels": "liger",
      "cross_entropy": "fused", "seq_len": 4096}),
    (("lf_llama3_qlora_sft.yaml",), {"method": "qlora", "quant": "nf4", "engine": "ddp", "grad_ckpt": "full"}),
], ids=["axolotl-zero2-offload", "trl-json", "lf+accelerate-fsdp", "lf-freeze-liger", "lf-qlora"])
def test_each_kind_of_setup(capsys, monkeypatch, files: tuple[str, ...], expected: dict) -> None:
    args = [a for f in files for a in ("--from", str(SETUPS / f))]
    # axolotl's example packs its Alpaca samples under sdp attention (sample_packing): their mean length is the user's
    packs = ("--doc-len", "256") if files == ("axolotl_mistral_lora_zero2.yaml",) else ()
    cfg = config_of(capsys, monkeypatch, *args, "--gpus", "8xA800", *packs)
    assert picked(cfg, *expected) == expected


def test_a_setup_that_packs_documents_asks_for_their_length(capsys, monkeypatch, tmp_path: Path) -> None:
    """axolotl's sample_packing under sdp attention keeps each sample's attention to itself: the plan needs the
    samples' mean length, which no setup file says, so --from asks for --doc-len in one line; given, the plan has it
    (and SDPA's mask: planner/activations.py). A setup that packs across documents refuses --doc-len."""
    setup = str(SETUPS / "axolotl_mistral_lora_zero2.yaml")
    code, out, err = run(capsys, monkeypatch, "estimate", "--from", setup, "--gpus", "8xA800")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "axolotl_mistral_lora_zero2.yaml: sample_packing: true packs documents" in err and "--doc-len" in err
    cfg = config_of(capsys, monkeypatch, "--from", setup, "--gpus", "8xA800", "--doc-len", "256")
    assert picked(cfg, "doc_len", "attn", "seq_len") == {"doc_len": 256, "attn": "sdpa", "seq_len": 4096}
    code, _, err = run(capsys, monkeypatch, "estimate", "--from", str(SETUPS / "lf_qwen_freeze_sft.yaml"), "--gpus",
                       "8xA800", "--doc-len", "256")
    assert code == 2 and "packing: true without neat_packing" in err and "--doc-len does not apply" in err
    # LLaMA-Factory's neat_packing and TRL's bfd packing (padding-free) under FlashAttention-2
    lf = write(tmp_path, "neat.yaml", "model_name_or_path: meta-llama/Meta-Llama-3-8B\nfinetuning_type: lora\n"
                                      "stage: sft\nneat_packing: true\nflash_attn: fa2\ncutoff_len: 4096\n"
                                      "per_device_train_batch_size: 1\n")
    code, _, err = run(capsys, monkeypatch, "estimate", "--from", lf, "--gpus", "1xA100-80G")
    assert code == 2 and "neat.yaml: neat_packing: true packs documents" in err
    assert config_of(capsys, monkeypatch, "--from", lf, "--gpus", "1xA100-80G", "--doc-len", "300")["doc_len"] == 300
    # under SDPA its collator's 4-D mask is what the plan counts (planner.memory.collator_mask_bytes)
    sdpa = write(tmp_path, "neat_sdpa.yaml", Path(lf).read_text().replace("flash_attn: fa2", "flash_attn: sdpa"))
    assert picked(config_of(capsys, monkeypatch, "--from", sdpa, "--gpus", "1xA100-80G", "--doc-len", "300"),
                  "attn", "collator_mask") == {"attn": "sdpa", "collator_mask": True}
    trl = {"model_name_or_path": "meta-llama/Meta-Llama-3-8B", "output_dir": "o", "per_device_train_batch_size": 2,
           "max_length": 2048, "packing": True, "attn_implementation": "flash_attention_2", "bf16": True}
    path = write(tmp_path, "trl.json", json.dumps(trl))
    cfg = config_of(capsys, monkeypatch, "--from", path, "--gpus", "1xA100-80G", "--doc-len", "300")
    assert picked(cfg, "doc_len", "attn", "micro_batch") == {"doc_len": 300, "attn": "flash", "micro_batch": 2}
    assert "collator_mask" not in cfg  # TRL's packing: transformers builds the mask (the default, not written)
    # padding-free under SDPA: TRL flattens the two packs into one row of 4096 tokens, one mask over it
    path = write(tmp_path, "trl_sdpa.json", json.dumps({**trl, "attn_implementation": "sdpa"}))
    code, _, err = run(capsys, monkeypatch, "estimate", "--from", path, "--gpus", "1xA100-80G", "--doc-len", "300")
    assert code == 2 and "--micro-batch 1 --seq-len 4096" in err
    cfg = config_of(capsys, monkeypatch, "--from", path, "--gpus", "1xA100-80G", "--doc-len", "300",
                    "--micro-batch", "1", "--seq-len", "4096")
    assert picked(cfg, "doc_len", "attn", "micro_batch", "seq_len") == {"doc_len": 300, "attn": "sdpa",
                                                                         "micro_batch": 1, "seq_len": 4096}


def test_a_ds_config_alone_sets_the_engine(capsys, monkeypatch) -> None:
    cfg = config_of(capsys, monkeypatch, "--from", str(SETUPS / "ds_z2_offload_config.json"), "--model", "7b",
                    "--gpus", "8xA800", "--method", "full")
    assert picked(cfg, "engine", "zero", "offload", "offload_device", "micro_batch") == {
        "engine": "deepspeed", "zero": 2, "offload": "optimizer", "offload_device": "cpu", "micro_batch": 1}


def test_flags_on_the_command_line_win(capsys, monkeypatch) -> None:
    setup = str(SETUPS / "lf_llama3_lora_sft_ds3.yaml")
    cfg = config_of(capsys, monkeypatch, "--from", setup, "--gpus", "8xA800", "--micro-batch", "2", "--zero", "2",
                    "--model", "llama-3.1-8b", "--lora-dropout", "0.1")
    assert cfg["model"]["name"] == "llama-3.1-8b"
    assert picked(cfg, "micro_batch", "grad_accum", "zero", "lora_dropout") == {
        "micro_batch": 2, "grad_accum": 8, "zero": 2, "lora_dropout": 0.1}
    # an engine on the command line replaces the file's whole engine choice
    cfg = config_of(capsys, monkeypatch, "--from", setup, "--gpus", "8xA800", "--fsdp", "full_shard")
    assert picked(cfg, "engine", "zero") == {"engine": "fsdp", "zero": 0}
    # a method on the command line drops the file's quantization
    cfg = config_of(capsys, monkeypatch, "--from", str(SETUPS / "lf_llama3_qlora_sft.yaml"), "--gpus", "1xA800",
                    "--method", "lora")
    assert picked(cfg, "method", "quant") == {"method": "lora", "quant": "none"}


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("dora.yaml", "model_name_or_path: meta-llama/Meta-Llama-3-8B\nfinetuning_type: lora\nuse_dora: true\n",
     "dora.yaml: use_dora: DoRA"),
    ("emb.yaml", "base_model: NousResearch/Meta-Llama-3-8B\nadapter: lora\nlora_r: 8\n"
                 "lora_modules_to_save:\n  - embed_tokens\n  - lm_head\n", "emb.yaml: lora_modules_to_save"),
    ("both.yaml", "model_name_or_path: meta-llama/Meta-Llama-3-8B\nfinetuning_type: lora\nbf16: true\nfp16: true\n",
     "both are on"),
    ("gptq.yaml", "model_name_or_path: meta-llama/Meta-Llama-3-8B\nquantization_bit: 4\nquantization_method: gptq\n"
                  "finetuning_type: lora\n", "only bitsandbytes"),
    ("opt.yaml", "base_model: NousResearch/Meta-Llama-3-8B\nadapter: lora\noptimizer: paged_lion_8bit\n",
     "optimizer 'paged_lion_8bit' is not modelled"),
    ("model.yaml", "model_name_or_path: someone/Secret-9B\nfinetuning_type: lora\n",
     "model.yaml: the model 'someone/Secret-9B' is neither a local folder nor a catalog model"),
    ("list.yaml", "- a\n- b\n", "expected a mapping of settings, got list"),
    ("broken.yaml", "model_name_or_path: [unclosed\n", "not valid YAML"),
    ("what.yaml", "hello: world\n", "not a training setup ftplan reads"),
    ("ds.yaml", "model_name_or_path: meta-llama/Meta-Llama-3-8B\nfinetuning_type: lora\ndeepspeed: nowhere.json\n",
     "deepspeed: nowhere.json does not exist"),
], ids=["dora", "modules-to-save", "bf16+fp16", "gptq", "lion", "unknown-model", "not-mapping", "bad-yaml",
        "unknown-kind", "missing-ds"])
def test_unplannable_or_conflicting_setups_get_one_line(capsys, monkeypatch, tmp_path: Path, name: str, text: str,
                                                        needle: str) -> None:
    code, out, err = run(capsys, monkeypatch, "estimate", "--from", write(tmp_path, name, text), "--gpus", "8xA800")
    assert code == 2 and out == ""
    assert err.startswith("ftplan: error: ") and err.count("\n") == 1 and needle in err, err


def test_a_batch_the_yaml_and_its_ds_config_disagree_on_is_refused(capsys, monkeypatch, tmp_path: Path) -> None:
    ds = json.loads((SETUPS / "ds_z3_config.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = 4
    (tmp_path / "ds_z3_config.json").write_text(json.dumps(ds))
    shutil.copy(SETUPS / "lf_llama3_lora_sft_ds3.yaml", tmp_path)
    code, _, err = run(capsys, monkeypatch, "estimate", "--from", str(tmp_path / "lf_llama3_lora_sft_ds3.yaml"),
                       "--gpus", "8xA800")
    assert code == 2
    assert "ds_z3_config.json sets micro_batch = 4 but lf_llama3_lora_sft_ds3.yaml sets 1" in err


def test_big_or_odd_files_are_refused(capsys, monkeypatch, tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (1 << 20) + "\n")
    code, _, err = run(capsys, monkeypatch, "estimate", "--from", str(big), "--gpus", "8xA800")
    assert code == 2 and "larger than 1024 KiB" in err
    code, _, err = run(capsys, monkeypatch, "estimate", "--from", str(tmp_path), "--gpus", "8xA800")
    assert code == 2 and "not a file" in err


def test_the_server_takes_no_from(capsys, monkeypatch) -> None:
    """--from reads local files: `ftplan serve` must not (its body fields are the command's other options)."""
    from ftplan.answers import answer

    with pytest.raises(Exception, match="No such option: --from"):
        answer("estimate", {"model": "7b", "gpus": "8xA800", "from_file": ["/etc/passwd"]})


def test_tune_keeps_the_setups_method_and_attention(capsys, monkeypatch) -> None:
    code, out, err = run(capsys, monkeypatch, "tune", "--from", str(SETUPS / "axolotl_llama3_70b_qlora_fsdp.yaml"),
                         "--gpus", "8xA100-80G", "--storage", "memory", "--json")
    assert code == 0, err
    best = json.loads(out)["best"]["config"]
    assert (best["method"], best["attn"], best["seq_len"]) == ("qlora", "flash", 512)


def test_what_was_read_is_said_on_stderr(capsys, monkeypatch) -> None:
    code, out, err = run(capsys, monkeypatch, "estimate", "--from", str(SETUPS / "lf_llama3_lora_sft_ds3.yaml"),
                         "--gpus", "8xA800", "--json")
    assert code == 0 and json.loads(out)
    assert err == ("ftplan: read lf_llama3_lora_sft_ds3.yaml (LLaMA-Factory YAML), ds_z3_config.json (DeepSpeed "
                   "config); flags given on the command line win\n")
