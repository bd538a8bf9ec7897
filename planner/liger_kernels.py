"""What Liger-Kernel's fused RMSNorm, SwiGLU and RoPE change in the tensors a decoder layer saves.

Hsu et al. 2024 ("Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv 2410.10989), Sec. 3.2,
and the kernels' `ctx.save_for_backward` calls (src/liger_kernel/ops/rms_norm.py, swiglu.py, rope.py):
- RMSNorm (LigerRMSNormFunction) saves its input X in the input dtype (e h per token) and the fp32
  inverse RMS per row (4 bytes), where transformers' LlamaRMSNorm keeps the fp32 upcast of X (4 h) and,
  when its weight trains, the 16-bit normalized tensor the weight multiplies (e h; Liger computes the
  weight's gradient from X and the inverse RMS): (4 - e) h - 4 bytes per token per norm less with a
  frozen weight (2 h - 4 under bf16; none in fp32), 4 h - 4 with a trained one.
- SwiGLU (LigerSiLUMulFunction) saves the gate and up projections (2 e i) and recomputes SiLU in
  backward, where eager PyTorch keeps SiLU's input, its output and the up projection (3 e i): e i less.
- RoPE (LigerRopeFunction) saves cos and sin, as transformers' apply_rotary_pos_emb does (its
  multiplications save the shared cos/sin, not q or k): no change in saved bytes, only speed.
The end-to-end savings the Liger README reports come mostly from FusedLinearCrossEntropy
(planner.loss_memory), which `use_liger_kernel` / `enable_liger_kernel` turn on with these kernels.
"""

from __future__ import annotations

from planner.activations import rmsnorm_saved_bytes_per_token
from planner.models import ModelSpec


def rmsnorm_saving_bytes_per_token(hidden: int, *, act_bytes: int, weight_trains: bool = False) -> float:
    """Bytes per token one Liger RMSNorm saves less than transformers' RMSNorm: what that one keeps
    (planner.activations) less Liger's input and fp32 inverse RMS (e h + 4)."""
    eager = rmsnorm_saved_bytes_per_token(hidden, act_bytes=act_bytes, weight_trains=weight_trains)
    return max(0.0, eager - (act_bytes * hidden + 4.0))


def swiglu_saving_bytes_per_token(intermediate: int, *, act_bytes: int) -> float:
    """Bytes per token Liger's SwiGLU saves less than eager SiLU(gate) * up: SiLU's output, e i."""
    return float(act_bytes * intermediate)


def liger_layer_saving_bytes_per_token(m: ModelSpec, *, act_bytes: int, t: int = 1,
                                       sequence_parallel: bool = False, norms_train: bool = False) -> float:
    """Saved bytes per token one decoder layer no longer keeps with Liger's kernels (its two norms and
    its gated MLP; LayerNorm models and GeLU MLPs are not patched by Liger's RMSNorm/SwiGLU).
    The norms lie outside the TP region (split only by sequence parallelism), the MLP inside (split by t)."""
    norms = 0.0 if m.layernorm_bias else 2 * rmsnorm_saving_bytes_per_token(m.hidden_size, act_bytes=act_bytes,
                                                                            weight_trains=norms_train)
    mlp = 0.0
    if m.gated_mlp and not m.is_moe:
        mlp = swiglu_saving_bytes_per_token(m.intermediate_size, act_bytes=act_bytes) / t
    return norms / (t if sequence_parallel else 1) + mlp


def liger_final_norm_saving_bytes_per_token(m: ModelSpec, *, act_bytes: int, weight_trains: bool = False) -> float:
    """The final RMSNorm before the LM head is patched too."""
    return 0.0 if m.layernorm_bias else rmsnorm_saving_bytes_per_token(m.hidden_size, act_bytes=act_bytes,
                                                                       weight_trains=weight_trains)
