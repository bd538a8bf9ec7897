"""A training loop that keeps the model's output through backward (--keeps-output,
planner.memory_knobs.held_output_bytes_per_logit), measured on this CPU with profiler.tracker.StorageTracker.

Answer.AI's fsdp_qlora train.py (05ed9f2) binds `output = model(input_ids, labels=...)`, calls `loss.backward()` and
`optimizer.step()`, and sets `output = None` only after them; the Trainer returns the loss alone from compute_loss. The
bytes the head and loss add at their peak are compared with the planner's, for the two kinds of output logits:
- transformers 4.31 to 4.45: the model upcasts the logits itself (`logits = logits.float()`) and returns the fp32
  tensor, shifting a contiguous copy for the loss (the operations of modeling_llama.py 4.45.2, as
  tests/profiler/test_loss_releases.py runs them);
- a current release (5.x here): a real LlamaForCausalLM in bf16 returns its bf16 logits and the loss upcasts them.
"""

from __future__ import annotations

import pytest
from head_loss_case import H, T, V, head_case

from planner.build import build_config
from planner.memory import HELD_OUTPUT_ITEM, memory_per_gpu
from planner.memory_knobs import head_loss_bytes, held_output_bytes


def _upcast_in_model_peak(*, keep: bool, batch: int) -> int:
    """Peak bytes above the inputs: bf16 head, the model's fp32 upcast (its output), the 4.45 loss, backward."""
    case = head_case(batch)
    F, head, hidden, labels, tracker, before = (case.F, case.head, case.hidden, case.labels, case.tracker,
                                                 case.before_bytes)
    with tracker:
        output = head(hidden).float()  # modeling_llama.py 4.31-4.45: the fp32 logits are the output
        shifted = output[..., :-1, :].contiguous()
        loss = F.cross_entropy(shifted.view(-1, V), labels[..., 1:].reshape(-1))
        del shifted
        if not keep:
            del output  # the Trainer: only the loss leaves compute_loss
        loss.backward()
        del loss
        peak = tracker.finish()
    return peak.total_bytes - before


def _current_release_peak(*, keep: bool, batch: int) -> tuple[int, int]:
    """(peak bytes above the model and batch, the held logits' bytes) of a real bf16 LlamaForCausalLM step."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    from profiler.tracker import StorageTracker

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=T,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    ids = torch.randint(0, V, (batch, T))
    tracker = StorageTracker()
    tracker.track_all([*model.parameters(), *model.buffers(), ids])
    before = tracker.current_bytes
    with tracker:
        output = model(input_ids=ids, labels=ids)
        loss, held = output.loss, output.logits.nbytes
        assert output.logits.dtype == torch.bfloat16  # the release this machine has returns compute-dtype logits
        if not keep:
            del output
        loss.backward()
        del loss
        peak = tracker.finish()
    return peak.total_bytes - before, held


@pytest.mark.parametrize("batch", [1, 2])
def test_upcast_in_model_output_kept_through_backward(batch: int) -> None:
    kept, dropped = _upcast_in_model_peak(keep=True, batch=batch), _upcast_in_model_peak(keep=False, batch=batch)
    cfg = build_config(model="llama-2-7b", gpus="1xA100-80G", method="lora", micro_batch=batch,
                       transformers_version="4.38.2", keeps_output=True, check=False)
    held = held_output_bytes(cfg, batch * T, 2) * 4096 / cfg.model.vocab_size  # this test's vocabulary
    assert held == 4 * V * batch * T
    planned = head_loss_bytes(cfg, batch * T, 2, 4.0) * V / cfg.model.vocab_size + held
    print(f"[measured] output kept (fp32, upcast in the model), batch {batch}: {kept:,} B (dropped {dropped:,} B), "
          f"planner {planned:,.0f} B ({planned / kept - 1:+.1%})")
    assert kept - dropped == pytest.approx(held, rel=0.02)  # backward's peak now holds the fp32 output too
    assert abs(planned / kept - 1) <= 0.03


def test_current_release_output_kept_through_backward() -> None:
    kept, held = _current_release_peak(keep=True, batch=2)
    dropped, _ = _current_release_peak(keep=False, batch=2)
    cfg = build_config(model="llama-2-7b", gpus="1xA100-80G", micro_batch=2, keeps_output=True, check=False)
    assert held_output_bytes(cfg, 2 * T, 2) * V / cfg.model.vocab_size == held == 2 * V * 2 * T
    print(f"[measured] LlamaForCausalLM bf16, output kept: peak {kept:,} B, dropped {dropped:,} B: "
          f"+{kept - dropped:,} B, the bf16 logits {held:,} B")
    assert kept - dropped == pytest.approx(held, rel=0.05)


def test_held_output_lives_through_the_step_and_only_when_asked() -> None:
    kw = dict(model="llama-2-7b", gpus="2xRTX3090", method="lora", fsdp="full_shard", fsdp_version=1,
              micro_batch=6, seq_len=2048, grad_ckpt="full", precision="bf16-true", check=False)
    plain, kept = memory_per_gpu(build_config(**kw)), memory_per_gpu(build_config(**kw, keeps_output=True))
    logits = 12288 * 32000
    assert HELD_OUTPUT_ITEM not in plain.other_items
    assert kept.other_items[HELD_OUTPUT_ITEM] == 2 * logits  # a current release: the bf16 logits
    assert kept.allocated - plain.allocated == pytest.approx(2 * logits)
    old = memory_per_gpu(build_config(**kw, keeps_output=True, transformers_version="4.38.2"))
    assert old.other_items[HELD_OUTPUT_ITEM] == 4 * logits
    fused = memory_per_gpu(build_config(**kw, keeps_output=True, cross_entropy="fused", kernels="liger"))
    assert HELD_OUTPUT_ITEM not in fused.other_items  # Liger's fused loss returns no logits


def test_output_logits_dtype_by_release() -> None:
    """modeling_llama.py of the released wheels: 4.30.2 returns the head's output, 4.31.0-4.45.2 upcast it, 4.46.0
    leaves the upcast to the loss function (planner.transformers_versions.OUTPUT_LOGITS_FP32)."""
    from planner.transformers_versions import output_logits_fp32

    assert [output_logits_fp32(v) for v in ("4.30.2", "4.31.0", "4.38.2", "4.45.2", "4.46.0", "4.49.0", "")] == \
        [False, True, True, True, False, False, False]
