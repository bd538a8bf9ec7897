"""The memory switches against published figures and their own sources (tolerances stated per test).

Dry-run checks of the chunked loss are in tests/profiler/test_dryrun_switches.py; the published-peak set
in tests/validation/test_memory_published_peaks.py."""

from __future__ import annotations

import dataclasses

import pytest

from planner.build import build_config
from planner.errors import PlanError
from planner.estimate import estimate, estimate_to_dict
from planner.loss_memory import chunked_loss_bytes, fused_loss_bytes, liger_chunk_tokens, standard_loss_bytes
from planner.memory import memory_per_gpu
from planner.params import embedding_params
from planner.strategy import Attn, CrossEntropy, FsdpStrategy, GradCkpt, Kernels, Method, Optimizer, Precision
from planner.torch_compile import ROW_STATS_BYTES
from planner.validity import problems

GiB = 2**30


def test_loss_formulas_per_token() -> None:
    # transformers: 12 V per token (backward: saved fp32 log_softmax + two fp32 gradients)
    assert standard_loss_bytes(1, 1000, logit_bytes=2) == 12_000
    # torchtune, 8 chunks, bf16: forward (2 + 4) V + 4 V / 8 = 6.5 V beats backward 4 V + 8 V / 8 = 5 V
    assert chunked_loss_bytes(8, 1000, logit_bytes=2) == pytest.approx(6.5 * 8 * 1000)
    # Liger: Llama-3 (V 128256, H 4096), 8 x 4096 tokens: inc_factor 32, chunk next_pow2(32768 / 32) = 1024
    assert liger_chunk_tokens(8 * 4096, 128256, 4096) == 1024
    fused = fused_loss_bytes(8 * 4096, 128256, 4096, logit_bytes=2)
    assert fused == 2 * 4096 * 8 * 4096 + 2 * (128256 + 4096) * 1024
    # the PyTorch/Liger blog's example, bs 8, seq 4096, 256k vocabulary (a 16.8 GB bf16 logit tensor): the
    # standard path holds 12 bytes per logit, Liger's the hidden-state gradient and one chunk
    assert fused < standard_loss_bytes(8 * 4096, 256_000, logit_bytes=2) / 20


def _liger_readme(seq: int, liger: bool):
    """Liger-Kernel README benchmark: LLaMA 3-8B, batch size 8, bf16, AdamW, gradient checkpointing, FSDP1 on
    8 A100s (80 GB); "Hugging Face models start to OOM at a 4K context length, whereas Hugging Face + Liger
    Kernel scales up to 16K"."""
    cfg = build_config(model="llama-3-8b", gpus="8xA100-80G", method=Method.full, fsdp=FsdpStrategy.full_shard,
                       fsdp_version=1, micro_batch=8, seq_len=seq, grad_ckpt=GradCkpt.full,
                       kernels=Kernels.liger if liger else Kernels.eager,
                       cross_entropy=CrossEntropy.fused if liger else CrossEntropy.standard, check=False)
    return estimate(cfg, timed=False)


def test_liger_readme_fit_labels() -> None:
    # tolerance: labels. 4K without Liger must be out of memory or flagged tight (>90% of the card)
    assert _liger_readme(2048, liger=False).fits and not _liger_readme(2048, liger=False).tight
    at_4k = _liger_readme(4096, liger=False)
    assert not at_4k.fits or at_4k.tight
    assert not _liger_readme(8192, liger=False).fits
    assert _liger_readme(16384, liger=True).fits


def test_liger_kernels_save_norm_upcast_and_silu_output() -> None:
    base = build_config(model="llama-2-7b", gpus="1xA100-80G", method=Method.lora, seq_len=1024)
    liger = dataclasses.replace(base, kernels=Kernels.liger)
    saved = memory_per_gpu(base).activations - memory_per_gpu(liger).activations
    # per token per layer: two RMSNorms (4 - 2) h - 4 and SwiGLU's SiLU output 2 i (liger-kernel rms_norm.py,
    # swiglu.py save_for_backward), 32 layers, 1024 tokens
    h, i = 4096, 11008
    assert saved == pytest.approx(32 * 1024 * (2 * (2 * h - 4) + 2 * i))


def test_activation_offload_matches_torchtune_flags_table() -> None:
    # torchtune README "Optimization flags" (Llama 3.2 3B, bs 2, seq 4096 packed, bf16, A100, activation
    # checkpointing on): "+ Activation Offloading" 23.1 -> 21.8 GiB, 1.3 GiB less. Tolerance 15%. Those rows
    # fuse the optimizer step into backward, so their peak is in backward; with checkpointing what moves is
    # each layer's input whatever trains, so a LoRA plan (peak in backward too) shows the same bytes.
    kw = dict(model="llama-3.2-3b", gpus="1xA100-80G", method=Method.lora, precision=Precision.bf16_true,
              micro_batch=2, seq_len=4096, grad_ckpt=GradCkpt.full, cross_entropy=CrossEntropy.chunked)
    on = memory_per_gpu(build_config(**kw, activation_offload=True))
    off = memory_per_gpu(build_config(**kw))
    saved = off.activations - on.activations
    assert saved / GiB == pytest.approx(1.3, rel=0.15)
    assert on.host_bytes > off.host_bytes  # the checkpoints now live in pinned host memory


def test_fsdp2_allocates_no_gradient_shards_before_backward() -> None:
    kw = dict(model="llama-2-7b", gpus="8xA100-80G", method=Method.full, fsdp=FsdpStrategy.full_shard)
    two, one = memory_per_gpu(build_config(**kw)), memory_per_gpu(build_config(**kw, fsdp_version=1))
    assert build_config(**kw).fsdp_version == 2  # FSDP2 is the default
    # besides: accelerate's FSDP2 reshards the embedding's unit after forward, where FSDP1's root unit keeps the
    # embedding gathered into backward (planner.engines.fsdp2_traffic outside_units)
    embedding16 = 2.0 * embedding_params(build_config(**kw).model)
    # and each version's last-layer window where it outgrows the logits' buffers it takes the place of: FSDP1's last
    # decoder layer ends its backward with its gradient twice (planner.engines.fsdp unit_gradient_copies), FSDP2's
    # opens with the down projection's two gradients (fsdp2_first_linear_backward_bytes)
    held = ("FSDP unsharded layers", "logits and loss")

    def window(one, two) -> float:
        return sum(one.other_items.get(k, 0.0) for k in held) - sum(two.other_items.get(k, 0.0) for k in held)

    assert one.allocated - two.allocated == pytest.approx(one.gradients + embedding16 + window(one, two), rel=1e-6)
    # with accumulation, earlier micro-batches' gradient shards are resident in both
    acc = dict(kw, grad_accum=4)
    one_acc, two_acc = memory_per_gpu(build_config(**acc, fsdp_version=1)), memory_per_gpu(build_config(**acc))
    assert one_acc.allocated - two_acc.allocated == pytest.approx(embedding16 + window(one_acc, two_acc), rel=1e-6)


def test_fsdp2_hybrid_shards_within_the_node_and_has_no_no_shard() -> None:
    """FSDP2's hybrid sharding (a 2-D mesh) plans like FSDP1's: states sharded over a node's GPUs."""
    one = build_config(model="7b", gpus="2x8xA800", fsdp=FsdpStrategy.hybrid_shard, fsdp_version=1)
    two = build_config(model="7b", gpus="2x8xA800", fsdp=FsdpStrategy.hybrid_shard)
    assert not problems(one) and not problems(two) and two.fsdp_version == 2
    full = build_config(model="7b", gpus="2x8xA800", fsdp=FsdpStrategy.full_shard)
    assert memory_per_gpu(two).weights == pytest.approx(2 * memory_per_gpu(full).weights)
    with pytest.raises(PlanError, match="needs --fsdp-version 1"):
        build_config(model="7b", gpus="2x8xA800", fsdp=FsdpStrategy.no_shard)


def test_qlora_quant_storage_shards_codes_and_keeps_statistics() -> None:
    # bnb_4bit_quant_storage: the 4-bit codes (0.5 byte) shard over the ranks, the double-quantized block
    # statistics (0.127 bits, 0.0159 byte) stay whole on every rank (Params4bit.quant_state)
    kw = dict(model="llama-2-70b", method=Method.qlora, fsdp=FsdpStrategy.full_shard)
    one = memory_per_gpu(build_config(**kw, gpus="1xA100-80G", check=False)).weights
    two = memory_per_gpu(build_config(**kw, gpus="2xA100-80G")).weights
    from planner.params import quantizable_params

    stats = quantizable_params(build_config(**kw, gpus="2xA100-80G").model) * (0.127 / 8)
    assert two == pytest.approx(one / 2 + stats / 2, rel=0.01)


def test_tight_verdict_in_json() -> None:
    data = estimate_to_dict(_liger_readme(4096, liger=False))
    assert data["fits"] and data["tight"]
    assert not estimate_to_dict(_liger_readme(2048, liger=False))["tight"]


def test_activation_offload_pcie_time_is_exposed_only_beyond_compute() -> None:
    from planner.memory_knobs import offloaded_activation_bytes_per_micro_batch
    from planner.timing import step_time

    # H100, LoRA without checkpointing, 4096 tokens: every saved tensor crosses PCIe Gen5 (64 GB/s) twice,
    # far longer than the forward or backward it overlaps
    kw = dict(model="llama-3-8b", gpus="1xH100", method=Method.lora, seq_len=4096)
    cfg = build_config(**kw, activation_offload=True)
    t_on, t_off = step_time(cfg), step_time(build_config(**kw))
    moved = offloaded_activation_bytes_per_micro_batch(cfg)
    fwd_bwd = t_off.breakdown_s["compute"]
    one_way = moved / cfg.cluster.gpu.host_link_bytes_per_s
    assert t_on.breakdown_s["offload"] == pytest.approx(2 * one_way - fwd_bwd, rel=1e-6)
    # with checkpointing only the layer inputs move: hidden under the compute
    ckpt = dict(kw, grad_ckpt=GradCkpt.full)
    assert step_time(build_config(**ckpt, activation_offload=True)).step_time_s == pytest.approx(
        step_time(build_config(**ckpt)).step_time_s)


# benchmarks/compile_saved.py (torch 2.13.0+cpu): a bf16 Llama layer h 192, i 520, 3 heads, SDPA, 300 tokens,
# full fine-tuning; bytes saved for backward per token. The compiled figure includes cos/sin (2 x 12,800 B over
# 300 tokens), which the planner does not count per layer. The chunked loss: V 1,000, per token, with the int64
# labels (8 B).
EAGER_FULL_LAYER_BYTES_PER_TOKEN = 8873.3 - 2 * 12_800 / 300
COMPILED_FULL_LAYER_BYTES_PER_TOKEN = 6297.3 - 2 * 12_800 / 300
COMPILED_CHUNK_LOSS_BYTES_PER_TOKEN = 2016.0 - 8
EAGER_CHUNK_LOSS_BYTES_PER_TOKEN = 4008.0 - 8


def test_compile_matches_the_cpu_measurement() -> None:
    """Tolerance 1%: the compiled layer's saved bytes as benchmarks/compile_saved.py measured them."""
    from planner.activations import LayerTraining, hf_layer_bytes_per_token
    from planner.models import spec_from_hf_config
    from planner.torch_compile import compiled_layer_saving_bytes_per_token

    m = spec_from_hf_config({"model_type": "llama", "vocab_size": 1000, "hidden_size": 192, "intermediate_size": 520,
                             "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 3,
                             "max_position_embeddings": 100}, name="bench")
    eager = hf_layer_bytes_per_token(m, act_bytes=2, attn=Attn.sdpa, train=LayerTraining(weights=True), seq_len=100)
    # eager: with the two norms' weight operands (the 16-bit normalized tensors), left is the 4-byte inverse RMS
    assert eager == pytest.approx(EAGER_FULL_LAYER_BYTES_PER_TOKEN, rel=0.01)
    compiled = eager - compiled_layer_saving_bytes_per_token(m, act_bytes=2, norms_train=True)
    assert compiled == pytest.approx(COMPILED_FULL_LAYER_BYTES_PER_TOKEN, rel=0.01)
    # the loss: compiled keeps the chunk's bf16 logits and two fp32 row statistics, eager the fp32 log_softmax
    compiled_loss, eager_loss = COMPILED_CHUNK_LOSS_BYTES_PER_TOKEN, EAGER_CHUNK_LOSS_BYTES_PER_TOKEN
    assert compiled_loss == pytest.approx(2 * 1000 + ROW_STATS_BYTES)
    assert eager_loss == pytest.approx(4 * 1000, rel=0.01)


def test_compile_lowers_memory_and_is_emitted() -> None:
    from runner import switches

    kw = dict(model="llama-3.2-3b", gpus="1xA100-80G", method=Method.full, precision=Precision.bf16_true,
              micro_batch=2, seq_len=4096, cross_entropy=CrossEntropy.chunked)
    eager, compiled = build_config(**kw), build_config(**kw, torch_compile=True)
    assert memory_per_gpu(compiled).activations < memory_per_gpu(eager).activations
    # --compile with --kernels liger: the same saving, counted once
    liger = build_config(**kw, kernels=Kernels.liger)
    both = build_config(**kw, kernels=Kernels.liger, torch_compile=True)
    assert memory_per_gpu(both).activations == memory_per_gpu(liger).activations
    assert switches.trainer_arguments(compiled) == {"torch_compile": True}
    assert "--torch_compile True" in switches.trainer_cli_flags(compiled)
    assert switches.llamafactory_arguments(compiled) == {"torch_compile": True}
    assert switches.trainer_arguments(eager) == {}


def test_bnb_version_registry_and_kept_inputs() -> None:
    """bitsandbytes/autograd/_functions.py MatMul4Bit: `ctx.tensors = (A, B)` until 0.43.1, (None, B) from 0.43.2."""
    from planner.bnb_versions import keeps_quantized_input, parse_bnb_version

    assert keeps_quantized_input("0.41.1") and keeps_quantized_input("0.43.1")
    assert not keeps_quantized_input("0.43.2") and not keeps_quantized_input("0.50.2")
    assert not keeps_quantized_input("")
    for bad in ("latest", "0.38.0"):
        with pytest.raises(PlanError):
            parse_bnb_version(bad)
    kw = dict(model="llama-2-7b", gpus="1xA100-40G", method=Method.qlora, lora_targets="q_proj,v_proj",
              precision=Precision.bf16_true, seq_len=1304)
    old, new = build_config(**kw, bnb_version="0.41.1"), build_config(**kw)
    # per layer: the two norm outputs (attention and MLP inputs) and the MLP product, e (2h + i) per token
    kept = 2 * (2 * 4096 + 11008) * 1304 * 32
    assert memory_per_gpu(old).activations - memory_per_gpu(new).activations == pytest.approx(kept)
    # full fine-tuning or LoRA (no quantized linears): the release changes nothing
    lora = dict(kw, method=Method.lora)
    same = memory_per_gpu(build_config(**lora, bnb_version="0.41.1")).total
    assert same == memory_per_gpu(build_config(**lora)).total


def test_frozen_fp32_weights_follow_the_engine() -> None:
    """from_pretrained without torch_dtype loads fp32: DDP and FSDP keep the frozen base so (4 bytes), DeepSpeed
    casts the module to its 16-bit dtype (2 bytes either way). peft docs, FSDP LoRA 70B: see published_peaks.py."""
    from planner.states import stage_params

    kw = dict(model="llama-2-7b", gpus="8xA100-80G", method=Method.lora, precision=Precision.bf16_mixed)
    for engine in ({}, {"fsdp": FsdpStrategy.full_shard}, {"zero": 3}):
        base, fp32 = build_config(**kw, **engine), build_config(**kw, **engine, frozen_fp32=True)
        frozen = stage_params(base, first=True).total
        n = 1 if not engine else 8
        extra = 0.0 if "zero" in engine else 2.0 * frozen / n
        assert memory_per_gpu(fp32).weights - memory_per_gpu(base).weights == pytest.approx(extra, rel=1e-6)


def test_lora_dropout_option_memory_cli_and_emitted(tmp_path) -> None:
    """--lora-dropout: at 0 no adapted linear keeps a dropped-out copy of its input (bf16: e + 1 bytes per input
    element with the mask, planner.activations); the value travels in plan.json and into LLaMA-Factory's YAML and
    peft's LoraConfig; outside [0, 1) it is one line and exit 2."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from planner.activations import hf_layer_bytes_per_token
    from planner.memory_knobs import layer_training
    from planner.serialize import config_from_dict, config_to_dict
    from runner import llamafactory
    from runner.model import ModelOptions, lora_config

    kw = dict(model="llama-3-8b", gpus="1xA100-80G", method=Method.lora, seq_len=2048)
    off, on = build_config(**kw, lora_dropout=0.0), build_config(**kw)
    assert on.lora_dropout == 0.05 and off.lora_dropout == 0.0
    # bf16 mixed: each branch keeps a bf16 copy of its input either way (peft's fp32 cast under autocast); the
    # dropout adds its bool mask, one byte per input element of every adapted linear
    per_token = {c.lora_dropout: hf_layer_bytes_per_token(c.model, act_bytes=2, attn=c.attn, seq_len=2048,
                                                          train=layer_training(c)) for c in (off, on)}
    layers, tokens = on.model.num_layers, 2048
    assert memory_per_gpu(on).activations - memory_per_gpu(off).activations == pytest.approx(
        (per_token[0.05] - per_token[0.0]) * layers * tokens, rel=1e-9)
    inputs = sum(lin.in_features for lin in on.model.linears())
    assert per_token[0.05] - per_token[0.0] == pytest.approx(inputs)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(off)))).lora_dropout == 0.0
    assert llamafactory.build_llamafactory_config(off, model_path="m")["lora_dropout"] == 0.0
    assert lora_config(off, ModelOptions()).lora_dropout == 0.0
    with pytest.raises(PlanError, match="--lora-dropout"):
        build_config(**kw, lora_dropout=1.0)
    repo = Path(__file__).resolve().parents[2]
    bad = subprocess.run([sys.executable, "-m", "ftplan", "estimate", "--model", "7b", "--gpus", "1xA100-80G",
                          "--lora-dropout", "-0.1"], cwd=repo, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--lora-dropout" in bad.stderr


def test_kbit_prep_follows_the_engine_precision_and_cli(capsys, monkeypatch) -> None:
    """--kbit-prep (default): prepare_model_for_kbit_training's fp32 weights and stream count only for QLoRA under
    DDP autocast; DeepSpeed casts the model back to 16 bits, sharded QLoRA skips the call (TRL), bf16-true stays
    bf16. The non-quantized frozen weights (embeddings, head, norms) take 4 bytes; the checkpointed layer input
    4h. The switch travels in plan.json; --no-kbit-prep on the command line turns it off."""
    import json

    from cli_helpers import run

    from planner.serialize import config_from_dict, config_to_dict
    from planner.states import kbit_prepared, stage_params

    kw = dict(model="llama-2-7b", gpus="1xA100-80G", method=Method.qlora, seq_len=2048, micro_batch=4,
              grad_ckpt=GradCkpt.full)
    on, off = build_config(**kw), build_config(**kw, kbit_prep=False)
    assert kbit_prepared(on) and not kbit_prepared(off)
    sp = stage_params(on, first=True)
    assert memory_per_gpu(on).weights - memory_per_gpu(off).weights == pytest.approx(2.0 * (sp.total - sp.quantized))
    m = on.model
    checkpoints = 2.0 * m.hidden_size * 2048 * 4 * m.num_layers  # 4h instead of 2h per token and layer
    assert memory_per_gpu(on).activations - memory_per_gpu(off).activations == pytest.approx(checkpoints)
    for other in (dict(kw, zero=2, gpus="2xA100-80G"), dict(kw, fsdp=FsdpStrategy.full_shard, gpus="2xA100-80G"),
                  dict(kw, precision=Precision.bf16_true), dict(kw, method=Method.lora)):
        a, b = build_config(**other), build_config(**other, kbit_prep=False)
        assert not kbit_prepared(a) and memory_per_gpu(a).total == memory_per_gpu(b).total
    assert config_from_dict(json.loads(json.dumps(config_to_dict(off)))).kbit_prep is False
    args = ["estimate", "--model", "7b", "--gpus", "1xA100-80G", "--method", "qlora", "--grad-ckpt", "full", "--json"]
    totals = []
    for extra in ([], ["--no-kbit-prep"]):
        code, out, err = run(capsys, monkeypatch, *args, *extra)
        assert code == 0, err
        totals.append(json.loads(out)["memory_per_gpu_bytes"]["total"])
        assert json.loads(out)["config"]["kbit_prep"] is not bool(extra)
    assert totals[0] > totals[1]


def test_fused_adamw_has_no_foreach_temporaries_and_is_emitted() -> None:
    """torch/optim/adam.py: foreach (the default) materializes sqrt(exp_avg_sq) for every parameter; the fused kernel
    (fused=True, the Trainer's adamw_torch_fused) updates in place. bitsandbytes' paged 32-bit AdamW is one kernel
    per parameter too."""
    from planner.params import total_params
    from planner.validity import problems
    from runner.llamafactory import build_llamafactory_config
    from runner.run_common import optim_name

    kw = dict(model="llama-3.2-3b", gpus="1xA100-80G", method=Method.full, precision=Precision.bf16_true,
              micro_batch=1, seq_len=512)
    foreach, fused = build_config(**kw), build_config(**kw, fused_adamw=True)
    temp = memory_per_gpu(foreach).other_items["AdamW foreach temporaries"]
    assert temp == pytest.approx(2 * total_params(foreach.model))  # one bf16 state-sized buffer
    assert "AdamW foreach temporaries" not in memory_per_gpu(fused).other_items
    paged = build_config(**kw, optimizer=Optimizer.paged_adamw)
    assert "AdamW foreach temporaries" not in memory_per_gpu(paged).other_items
    assert optim_name(foreach, on_cuda=True) == "adamw_torch"
    assert optim_name(fused, on_cuda=True) == "adamw_torch_fused"
    assert build_llamafactory_config(fused, model_path="m")["optim"] == "adamw_torch_fused"
    assert any("--fused-adamw" in p for p in problems(build_config(**kw, optimizer=Optimizer.adamw_8bit,
                                                                    fused_adamw=True, check=False)))


def test_transformers_version_registry() -> None:
    """transformers/loss/loss_utils.py ForCausalLMLoss shifts a contiguous fp32 copy of the logits in 4.46.0-4.48.x
    (4.45 upcast in the model and dropped the 16-bit logits; 4.49 shifts the labels instead): 2 bytes more per logit
    at forward's peak under bf16, with more than one sequence per micro-batch."""
    from planner.transformers_versions import loss_keeps_shifted_copy, parse_transformers_version

    assert loss_keeps_shifted_copy("4.46.0") and loss_keeps_shifted_copy("4.48.3")
    assert not loss_keeps_shifted_copy("4.45.2") and not loss_keeps_shifted_copy("4.49.0")
    assert not loss_keeps_shifted_copy("")
    for bad in ("latest", "3.5.1"):
        with pytest.raises(PlanError):
            parse_transformers_version(bad)
    kw = dict(model="llama-3-8b", gpus="1xA100-80G", method=Method.lora, precision=Precision.bf16_mixed,
              grad_ckpt=GradCkpt.full, micro_batch=2, seq_len=4096)
    old, new = build_config(**kw, transformers_version="4.46.1"), build_config(**kw)
    logits = 2 * 4096 * 128256
    assert (memory_per_gpu(old).other_items["logits and loss"] - memory_per_gpu(new).other_items["logits and loss"]
            == pytest.approx(2 * logits))
    one = dict(kw, micro_batch=1)  # one sequence: the shifted slice is contiguous already
    assert memory_per_gpu(build_config(**one, transformers_version="4.46.1")).total == \
        memory_per_gpu(build_config(**one)).total
