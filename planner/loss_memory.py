"""Memory of the LM head and the cross-entropy loss, per cross-entropy implementation.

T = tokens of the micro-batch, V = vocabulary (split by t under vocabulary-parallel TP), H = hidden size,
e = bytes of a logit in the compute dtype (2 under bf16/fp16 autocast, 4 in fp32). Each function returns
the bytes the head and loss add at their own peak, over forward and backward, per micro-batch.

- standard: transformers' ForCausalLMLoss (transformers/loss/loss_utils.py) upcasts all logits to fp32
  and runs cross_entropy on them. Forward holds the 16-bit logits, their fp32 copy and log_softmax's
  saved fp32 output: (e + 8) V per token; backward holds the saved output and the fp32 gradients of
  nll and log_softmax before the cast back: 12 V per token, the larger (the profiler's dry run measures 12V).
- chunked: torchtune's CEWithChunkedOutputLoss (torchtune/modules/loss/ce_chunked_output_loss.py,
  PR 1390) with the output projection applied per chunk (`num_output_chunks`, default 8): the 16-bit
  logits of every chunk (e V T) stay until the loss is summed, each chunk is upcast alone, and
  log_softmax keeps its fp32 output per chunk (4 V T in all). Forward peak, at the last chunk:
  (e + 4) V T + 4 V T/n (its upcast copy); backward peak, at the first chunk: the saved 4 V T plus the
  chunk's two fp32 gradients, 8 V T/n. What chunking removes is the whole-tensor fp32 copy and gradients.
- fused: Liger-Kernel's LigerFusedLinearCrossEntropyFunction (src/liger_kernel/ops/
  fused_linear_cross_entropy.py; Hsu et al. 2024, arXiv 2410.10989, Sec. 3.2 "FusedLinearCrossEntropy")
  never materializes the logits: forward walks the tokens in chunks of
  `next_power_of_2(ceil(T / ceil(V / H)))`, computes each chunk's logits (e V per token of the chunk),
  turns them into their gradient in place, and keeps only the gradient of the head's input (e H per token,
  `grad_input`) and, when the head trains, of its weight (`grad_weight`, V x H in the weight's dtype) for
  backward, which just scales them.
"""

from __future__ import annotations

import math

from planner import torch_compile
from planner.choices import CrossEntropy

TORCHTUNE_OUTPUT_CHUNKS = 8  # CEWithChunkedOutputLoss(num_output_chunks=8), torchtune's default


def standard_loss_bytes(tokens: float, vocab: float, *, logit_bytes: int, shifted_copy: bool = False) -> float:
    """transformers' ForCausalLMLoss: max(forward (e + 8) V T, backward 12 V T). `shifted_copy`: a release that
    shifts a contiguous fp32 copy of the logits while the model's 16-bit logits live (4.46-4.48,
    planner.transformers_versions): forward (e + 12) V T, or 12 V T in fp32 where the upcast is the same tensor."""
    forward = logit_bytes + 8.0
    if shifted_copy:
        forward = logit_bytes + (4.0 if logit_bytes < 4 else 0.0) + 8.0
    return max(forward * vocab * tokens, standard_loss_backward_bytes(tokens, vocab))


def standard_loss_backward_bytes(tokens: float, vocab: float) -> float:
    """transformers' standard loss in backward, every release: log_softmax's saved fp32 output and the fp32
    gradients of nll and log_softmax, 12 V T."""
    return 12.0 * vocab * tokens


def chunked_loss_bytes(tokens: float, vocab: float, *, logit_bytes: int,
                       chunks: int = TORCHTUNE_OUTPUT_CHUNKS) -> float:
    """torchtune's chunked cross-entropy: max(forward (e + 4) V T + 4 V T/n, backward 4 V T + 8 V T/n)."""
    per_chunk = tokens / chunks
    forward = (logit_bytes + 4.0) * vocab * tokens + 4.0 * vocab * per_chunk
    backward = 4.0 * vocab * tokens + 8.0 * vocab * per_chunk
    return max(forward, backward)


def liger_chunk_tokens(tokens: int, vocab: int, hidden: int) -> int:
    """Liger's chunk size: next_power_of_2(cdiv(BT, cdiv(V, H))), so a chunk's logits are about the size
    of the hidden states (fused_linear_cross_entropy.py, `inc_factor` and `chunk_size`)."""
    inc_factor = math.ceil(vocab / hidden)
    return 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / inc_factor)))))


def fused_loss_bytes(tokens: int, vocab: float, hidden: int, *, logit_bytes: int,
                     head_weight_bytes: float = 0.0) -> float:
    """Liger's fused linear cross-entropy: grad_input (e H T) + one chunk's logits and input gradient
    (e (V + H) per chunk token) + grad_weight when the head trains (`head_weight_bytes`, 0 otherwise)."""
    chunk = min(tokens, liger_chunk_tokens(tokens, round(vocab), hidden))
    return logit_bytes * hidden * tokens + logit_bytes * (vocab + hidden) * chunk + head_weight_bytes


def loss_bytes(kind: CrossEntropy, *, tokens: int, vocab: float, hidden: int, logit_bytes: int,
               head_weight_bytes: float = 0.0, compiled: bool = False, shifted_copy: bool = False) -> float:
    """Bytes the LM head and loss hold at their peak for one micro-batch of `tokens` tokens; `compiled`:
    under torch.compile (planner.torch_compile; Liger's fused loss is a Triton kernel either way); `shifted_copy`:
    transformers' eager loss of 4.46-4.48 (standard_loss_bytes)."""
    if compiled and kind is CrossEntropy.chunked:
        return torch_compile.compiled_chunked_loss_bytes(tokens, vocab, logit_bytes=logit_bytes,
                                                         chunks=TORCHTUNE_OUTPUT_CHUNKS)
    if compiled and kind is CrossEntropy.standard:
        return torch_compile.compiled_standard_loss_bytes(tokens, vocab, logit_bytes=logit_bytes)
    if kind is CrossEntropy.chunked:
        return chunked_loss_bytes(tokens, vocab, logit_bytes=logit_bytes)
    if kind is CrossEntropy.fused:
        return fused_loss_bytes(tokens, vocab, hidden, logit_bytes=logit_bytes, head_weight_bytes=head_weight_bytes)
    return standard_loss_bytes(tokens, vocab, logit_bytes=logit_bytes, shifted_copy=shifted_copy)
