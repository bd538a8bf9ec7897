"""What torch.compile (TorchInductor with AOTAutograd's default min-cut partitioner) changes in the tensors
a fine-tuning step saves for backward, measured rather than assumed.

Measurement: benchmarks/compile_saved.py (torch 2.13.0+cpu, transformers 5.24.0; a bf16 Llama decoder layer,
h 192, i 520, SDPA, 300 tokens, under torch.autograd.graph.saved_tensors_hooks, eager and compiled per layer
as torchtune's `training.compile_model` does; its output is kept in benchmarks/measured/compile_saved.txt).
What the compiled graph saves, per token:
- each RMSNorm keeps its 16-bit input and the fp32 inverse RMS (e h + 4) where eager transformers keeps the
  fp32 upcast of the input (4 h) and, as the norm's weight trains here, the 16-bit normalized tensor the
  weight multiplies (e h): Inductor recomputes both in backward;
- the SwiGLU MLP keeps the gate and up projections (2 e i), recomputing SiLU, where eager keeps SiLU's input,
  its output and the up projection (3 e i); down_proj's input is kept exactly when eager keeps it;
- the attention core (q, k, v, its output, the fp32 log-sum-exp) is unchanged.
These are the savings Liger's hand-written RMSNorm and SwiGLU kernels make (planner.liger_kernels), and the
measured full fine-tuning layer agrees with them to the byte: eager 8,873 B/token (the planner's eager
bookkeeping, 8,865, plus the two norms' 4-byte inverse RMS), compiled 6,297 = 8,873 - 2,576 (2,576 =
2 x (4 x 192 - 4) + 2 x 520 - 8, the last 8 being the inverse RMS both keep). LoRA layers (frozen base,
frozen norms: (4 - e) h - 4 per norm) show the same two changes.

The loss, measured on torchtune's CEWithChunkedOutputLoss.compute_cross_entropy (the chunk's bf16 logits
upcast to fp32, then cross_entropy), which torchtune's `training.compile_loss` compiles: eager saves the fp32
log_softmax output (4 V per token), compiled saves the chunk's 16-bit logits and two fp32 per-row
statistics (e V + 8). The Hugging Face Trainer (`torch_compile=True`) compiles the whole model, whose
forward runs transformers' ForCausalLMLoss (upcast + cross_entropy) in the same graph: the same saved set.
The compiled backward returns the gradient in the logits' dtype (e V per token).
"""

from __future__ import annotations

from planner import liger_kernels
from planner.models import ModelSpec

ROW_STATS_BYTES = 8.0  # two fp32 per-row statistics (max and log-sum-exp) the compiled loss keeps per token


def compiled_layer_saving_bytes_per_token(m: ModelSpec, *, act_bytes: int, t: int = 1,
                                          sequence_parallel: bool = False, norms_train: bool = False) -> float:
    """Saved bytes per token per decoder layer that the compiled layer no longer keeps (measured above:
    the RMSNorm and SwiGLU savings Liger's kernels also make)."""
    return liger_kernels.liger_layer_saving_bytes_per_token(m, act_bytes=act_bytes, t=t,
                                                            sequence_parallel=sequence_parallel,
                                                            norms_train=norms_train)


def compiled_standard_loss_bytes(tokens: float, vocab: float, *, logit_bytes: int) -> float:
    """transformers' loss compiled with the model: forward keeps the 16-bit logits and the row statistics;
    backward holds them and the 16-bit gradient: 2 e V T + 8 T."""
    return 2.0 * logit_bytes * vocab * tokens + ROW_STATS_BYTES * tokens


def compiled_chunked_loss_bytes(tokens: float, vocab: float, *, logit_bytes: int, chunks: int) -> float:
    """torchtune's chunked loss with `compute_cross_entropy` compiled: every chunk's 16-bit logits are kept
    (e V T) and the first chunk's 16-bit gradient comes on top in backward (e V T / n)."""
    return logit_bytes * vocab * tokens * (1.0 + 1.0 / chunks) + ROW_STATS_BYTES * tokens
