"""Tiny MoE configs (transformers 5 model types) for the spec-derivation and peft-conversion tests: built from config
in seconds, one layer of each kind."""

from __future__ import annotations

_SMALL = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 4, "max_position_embeddings": 256}
# one dense layer, then MoE layers: routed experts fused into gate_up_proj / down_proj, a shared expert, a router
DEEPSEEK_V3 = {**_SMALL, "model_type": "deepseek_v3", "num_hidden_layers": 3, "first_k_dense_replace": 1,
               "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
               "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
               "v_head_dim": 16, "n_group": 2, "topk_group": 1}
QWEN3_MOE = {**_SMALL, "model_type": "qwen3_moe", "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 16,
             "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2}
LLAMA4 = {**_SMALL, "model_type": "llama4_text", "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 16,
          "intermediate_size_mlp": 128, "num_local_experts": 4, "num_experts_per_tok": 1,
          "interleave_moe_layer_step": 2}
MIXTRAL = {**_SMALL, "model_type": "mixtral", "num_hidden_layers": 2, "num_key_value_heads": 2,
           "num_local_experts": 8, "num_experts_per_tok": 2}
# every layer MoE, sliding and full attention alternating; experts and router with biases, attention sinks
GPT_OSS = {"model_type": "gpt_oss", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 32,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2,
           "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 256, "sliding_window": 8}
