"""Catalog of models: the fields of each model's published config.json that shape its memory and time.

Each entry is an excerpt of the Hugging Face config.json named in its `source`; `planner.models`
parses these dicts with the same code that reads a user's config.json, so catalog and user models
go through one path. Keys keep the original names of each family's config (BLOOM's `n_layer`,
ChatGLM's `ffn_hidden_size`).
"""

from __future__ import annotations

_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096,
           "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-5}
_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "tie_word_embeddings": False,
           "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0}
_QWEN25 = {"model_type": "qwen2", "vocab_size": 152064, "max_position_embeddings": 131072,
           "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-6}

HF_CONFIGS: dict[str, dict] = {
    # https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
    "llama-2-7b": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32},
    # https://huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json
    "llama-2-13b": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40},
    # https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json
    "llama-2-70b": {**_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8},
    # https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
    "llama-3-8b": {**_LLAMA3, "max_position_embeddings": 8192, "hidden_size": 4096,
                   "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 8},
    # https://huggingface.co/meta-llama/Meta-Llama-3-70B/blob/main/config.json
    "llama-3-70b": {**_LLAMA3, "max_position_embeddings": 8192, "hidden_size": 8192,
                    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
                    "num_key_value_heads": 8},
    # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
    "llama-3.1-8b": {**_LLAMA3, "max_position_embeddings": 131072, "hidden_size": 4096,
                     "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8},
    # https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
    "llama-3.1-70b": {**_LLAMA3, "max_position_embeddings": 131072, "hidden_size": 8192,
                      "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
                      "num_key_value_heads": 8},
    # https://huggingface.co/meta-llama/Llama-3.1-405B/blob/main/config.json
    "llama-3.1-405b": {**_LLAMA3, "max_position_embeddings": 131072, "hidden_size": 16384,
                       "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128,
                       "num_key_value_heads": 8},
    # https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
    "llama-3.2-1b": {**_LLAMA3, "max_position_embeddings": 131072, "hidden_size": 2048,
                     "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True},
    # https://huggingface.co/meta-llama/Llama-3.2-3B/blob/main/config.json
    "llama-3.2-3b": {**_LLAMA3, "max_position_embeddings": 131072, "hidden_size": 3072,
                     "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
                     "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
    # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json
    "mistral-7b": {"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
                   "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "max_position_embeddings": 32768, "sliding_window": 4096,
                   "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-5},
    # https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json
    "mixtral-8x7b": {"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
                     "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "max_position_embeddings": 32768, "num_local_experts": 8,
                     "num_experts_per_tok": 2, "tie_word_embeddings": False, "hidden_act": "silu",
                     "rms_norm_eps": 1e-5, "rope_theta": 1e6},
    # https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json
    "qwen2.5-7b": {**_QWEN25, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4},
    # https://huggingface.co/Qwen/Qwen2.5-14B/blob/main/config.json
    "qwen2.5-14b": {**_QWEN25, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
                    "num_attention_heads": 40, "num_key_value_heads": 8},
    # https://huggingface.co/Qwen/Qwen2.5-72B/blob/main/config.json
    "qwen2.5-72b": {**_QWEN25, "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8},
    # https://huggingface.co/baichuan-inc/Baichuan2-7B-Base/blob/main/config.json (W_pack = fused q,k,v)
    "baichuan2-7b": {"model_type": "baichuan", "vocab_size": 125696, "hidden_size": 4096,
                     "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "max_position_embeddings": 4096, "tie_word_embeddings": False, "hidden_act": "silu",
                     "rms_norm_eps": 1e-6},
    # https://huggingface.co/baichuan-inc/Baichuan2-13B-Base/blob/main/config.json (ALiBi, no RoPE)
    "baichuan2-13b": {"model_type": "baichuan", "vocab_size": 125696, "hidden_size": 5120,
                      "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 40,
                      "model_max_length": 4096, "tie_word_embeddings": False, "hidden_act": "silu",
                      "rms_norm_eps": 1e-6},
    # https://huggingface.co/THUDM/chatglm3-6b/blob/main/config.json
    "chatglm3-6b": {"model_type": "chatglm", "padded_vocab_size": 65024, "hidden_size": 4096,
                    "ffn_hidden_size": 13696, "num_layers": 28, "num_attention_heads": 32,
                    "multi_query_attention": True, "multi_query_group_num": 2, "kv_channels": 128,
                    "add_qkv_bias": True, "add_bias_linear": False, "seq_length": 8192,
                    "rmsnorm": True, "tie_word_embeddings": False},
    # https://huggingface.co/bigscience/bloom-7b1/blob/main/config.json
    "bloom-7b1": {"model_type": "bloom", "vocab_size": 250880, "hidden_size": 4096, "n_layer": 30,
                  "n_head": 32, "seq_length": 2048, "tie_word_embeddings": True},
}

# The family these users start from (Llama-2), as in "7b", "13b", "70b".
ALIASES: dict[str, str] = {"7b": "llama-2-7b", "13b": "llama-2-13b", "70b": "llama-2-70b"}
