"""The allocations of transformers' eager causal-LM loss, in the order the ops make and free them, and what PyTorch's
caching allocator reserves for them (planner.caching_allocator).

The loss's tensors are the largest a fine-tuning step makes (T tokens x V vocabulary entries each), each its own
segment, and they come in sizes that do not fit one another's freed blocks: the 16-bit logits (e bytes per logit), fp32
tensors of T rows and fp32 tensors of the T - b shifted rows. So the allocator reserves more than their allocated peak
(planner.loss_memory's 12 bytes per logit), and the difference does not scale with the step's other activations as
GMLake's utilization share does (planner.allocator).

The sequence, per release (planner.transformers_versions; b sequences of s tokens, T = b s, rows = b (s - 1)):
forward
- the LM head's output, e T V (dropped at once where the model upcasts: 4.31-4.45, `logits = logits.float()`; kept as
  the model's output otherwise);
- its fp32 upcast, 4 T V (none in fp32: `.float()` returns the tensor itself);
- up to 4.48, with b > 1, the shifted contiguous copy, 4 rows V (`logits[..., :-1, :].contiguous()`; with b = 1 the
  slice is contiguous already and nothing is copied); from 4.49 the labels are shifted instead and the logits keep T
  rows;
- log_softmax's output, 4 rows V, saved for backward (cross_entropy = log_softmax + nll_loss); the loss's locals
  (upcast, copy) are freed when the loss returns, the model's output when the Trainer's compute_loss returns (a loop
  that keeps the output, --keeps-output, holds it to the end of the step);
backward (torch/csrc/autograd/generated: each node's output is made before its inputs and saved tensors go)
- nll_loss_backward's gradient, 4 rows V (`zeros_like(self)` then the scatter);
- log_softmax_backward_data's gradient, 4 rows V; then the nll gradient and the saved output are freed;
- up to 4.48, SliceBackward's full-length gradient, 4 T V (`slice_backward`: zeros of the input's shape, then the
  copy), then the log_softmax gradient is freed;
- ToCopyBackward's cast to the head's dtype, e T V, then the fp32 gradient is freed.
Replayed on an empty cache: the first step's, whose segments stay reserved for the run (steps after it find them
cached). Blocks cached by the forward before the loss are the layers' (T x hidden or T x intermediate, 16-bit),
smaller than the loss's wherever V exceeds the intermediate size, so none serves the loss.
"""

from __future__ import annotations

from functools import lru_cache

from planner import caching_allocator, transformers_versions
from planner.caching_allocator import Event


def standard_loss_events(*, batch: int, seq_len: int, vocab: int, logit_bytes: int, version: str,
                         keeps_output: bool) -> tuple[Event, ...]:
    """The loss's allocations and frees for one micro-batch of `batch` sequences of `seq_len` tokens."""
    tokens, rows = batch * seq_len, batch * (seq_len - 1)
    full, shifted = tokens * vocab, rows * vocab
    upcast_in_model = transformers_versions.output_logits_fp32(version)
    shifts_logits = upcast_in_model or transformers_versions.loss_keeps_shifted_copy(version)
    loss_rows = shifted if shifts_logits else full
    ev: list[Event] = [("alloc", "logits", logit_bytes * full)]
    upcast = logit_bytes < 4
    if upcast:
        ev.append(("alloc", "fp32 logits", 4 * full))
        if upcast_in_model:
            ev.append(("free", "logits"))
    fp32 = "fp32 logits" if upcast else "logits"
    copy = shifts_logits and batch > 1
    if copy:
        ev.append(("alloc", "shifted copy", 4 * shifted))
    ev.append(("alloc", "log_softmax", 4 * loss_rows))
    if copy:
        ev.append(("free", "shifted copy"))
    output = fp32 if upcast_in_model or not upcast else "logits"
    if upcast and not upcast_in_model:
        ev.append(("free", "fp32 logits"))  # the loss function's local upcast
    if not keeps_output:
        ev.append(("free", output))
    ev += [("alloc", "nll grad", 4 * loss_rows), ("alloc", "log_softmax grad", 4 * loss_rows),
           ("free", "nll grad"), ("free", "log_softmax")]
    grad = "log_softmax grad"
    if shifts_logits:
        ev += [("alloc", "slice grad", 4 * full), ("free", grad)]
        grad = "slice grad"
    if upcast:
        ev += [("alloc", "head output grad", logit_bytes * full), ("free", grad)]
        grad = "head output grad"
    ev.append(("free", grad))
    if keeps_output:
        ev.append(("free", output))
    return tuple(ev)


@lru_cache(maxsize=4096)
def standard_loss_replay(*, batch: int, seq_len: int, vocab: int, logit_bytes: int, version: str,
                         keeps_output: bool) -> caching_allocator.Replay:
    """The caching allocator's peaks over the loss's blocks alone (cached: the search asks for few shapes)."""
    return caching_allocator.replay(standard_loss_events(batch=batch, seq_len=seq_len, vocab=vocab,
                                                         logit_bytes=logit_bytes, version=version,
                                                         keeps_output=keeps_output))
