"""Catalog of models: the fields of each model's published config.json that shape its memory and time.

Each entry is an excerpt of the Hugging Face config.json named in its comment (for a multimodal release, its
`text_config`, which is what a text fine-tune trains) and the published parameter count; `planner.models`
reads these dicts with the same code that reads a user's config.json, so catalog and user models go through one
path. Keys keep the original names of each family's config (BLOOM's `n_layer`, ChatGLM's `ffn_hidden_size`).
Families without a hand-written rule (Qwen3, Gemma 3, gpt-oss, DeepSeek-V3, Phi-4, OLMo 2, Llama 4) ship the
spec read from transformers (planner/model_specs/NAME.json, written by `python -m profiler.spec_derive --catalog`);
tests/planner/test_catalog_specs.py checks each against its excerpt and against the meta-device model.
The values were checked against the configs on the Hugging Face Hub as of transformers 5.25 and, where
the Hub was not reachable from this machine, against copies of those configs in public repositories.
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

_QWEN3 = {"model_type": "qwen3", "vocab_size": 151936, "head_dim": 128, "max_position_embeddings": 40960,
          "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "attention_bias": False, "hidden_act": "silu"}
_QWEN3_MOE = {**_QWEN3, "model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8,
              "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": False}
_GEMMA3 = {"model_type": "gemma3_text", "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 1024,
           "sliding_window_pattern": 6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
           "max_position_embeddings": 131072, "vocab_size": 262208, "tie_word_embeddings": True,
           "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6}
_GPT_OSS = {"model_type": "gpt_oss", "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
            "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "num_experts_per_tok": 4,
            "sliding_window": 128, "attention_bias": True, "tie_word_embeddings": False,
            "max_position_embeddings": 131072, "rope_theta": 150000.0, "rms_norm_eps": 1e-5, "swiglu_limit": 7.0}
_OLMO2 = {"model_type": "olmo2", "vocab_size": 100352, "max_position_embeddings": 4096, "rope_theta": 500000.0,
          "rms_norm_eps": 1e-6, "attention_bias": False, "tie_word_embeddings": False, "hidden_act": "silu"}
_MISTRAL3 = {"model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120, "num_hidden_layers": 40,
             "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "sliding_window": None,
             "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-5}
_QWEN25_MATH = {"model_type": "qwen2", "max_position_embeddings": 131072, "tie_word_embeddings": False,
                "hidden_act": "silu", "rms_norm_eps": 1e-6, "num_hidden_layers": 28}

HF_CONFIGS.update({
    # --- Qwen3 (Qwen3 technical report, arXiv 2505.09388, Table 1; configs: huggingface.co/Qwen/Qwen3-*) ---
    # https://huggingface.co/Qwen/Qwen3-0.6B/blob/main/config.json (0.6B parameters, 0.44B without embeddings)
    "qwen3-0.6b": {**_QWEN3, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "tie_word_embeddings": True},
    # https://huggingface.co/Qwen/Qwen3-1.7B/blob/main/config.json (1.7B)
    "qwen3-1.7b": {**_QWEN3, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "tie_word_embeddings": True},
    # https://huggingface.co/Qwen/Qwen3-4B/blob/main/config.json (4.0B)
    "qwen3-4b": {**_QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True},
    # https://huggingface.co/Qwen/Qwen3-8B/blob/main/config.json (8.2B)
    "qwen3-8b": {**_QWEN3, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
    # https://huggingface.co/Qwen/Qwen3-14B/blob/main/config.json (14.8B)
    "qwen3-14b": {**_QWEN3, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "num_key_value_heads": 8, "tie_word_embeddings": False},
    # https://huggingface.co/Qwen/Qwen3-32B/blob/main/config.json (32.8B)
    "qwen3-32b": {**_QWEN3, "hidden_size": 5120, "intermediate_size": 25600, "num_hidden_layers": 64,
                  "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False},
    # https://huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json (30.5B total, 3.3B activated)
    "qwen3-30b-a3b": {**_QWEN3_MOE, "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
                      "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4},
    # https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json (235B total, 22B activated)
    "qwen3-235b-a22b": {**_QWEN3_MOE, "hidden_size": 4096, "intermediate_size": 12288,
                        "moe_intermediate_size": 1536, "num_hidden_layers": 94, "num_attention_heads": 64,
                        "num_key_value_heads": 4},
    # --- Llama 3.3 and Llama 4 ---
    # https://huggingface.co/meta-llama/Llama-3.3-70B-Instruct/blob/main/config.json (70.6B; Llama 3.1 70B's shape)
    "llama-3.3-70b": {**_LLAMA3, "max_position_embeddings": 131072, "hidden_size": 8192,
                      "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
                      "num_key_value_heads": 8},
    # text_config of https://huggingface.co/meta-llama/Llama-4-Scout-17B-16E/blob/main/config.json (109B total with
    # the vision encoder, 17B activated; every layer MoE: interleave_moe_layer_step 1; every 4th layer global NoPE,
    # the others chunked attention of 8192 tokens)
    "llama-4-scout-17b-16e": {"model_type": "llama4_text", "vocab_size": 202048, "hidden_size": 5120,
                              "intermediate_size": 8192, "intermediate_size_mlp": 16384, "num_hidden_layers": 48,
                              "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
                              "num_local_experts": 16, "num_experts_per_tok": 1, "interleave_moe_layer_step": 1,
                              "attention_chunk_size": 8192, "use_qk_norm": True, "max_position_embeddings": 10485760,
                              "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                              "hidden_act": "silu"},
    # --- Gemma 3 (Gemma 3 technical report, arXiv 2503.19786, Table 1: 5 local sliding-window layers of 1024
    # tokens (512 for 1B) per global layer, q/k norms, pre- and post-norms) ---
    # https://huggingface.co/google/gemma-3-1b-pt/blob/main/config.json (1B)
    "gemma-3-1b": {**_GEMMA3, "vocab_size": 262144, "hidden_size": 1152, "intermediate_size": 6912,
                   "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "sliding_window": 512,
                   "max_position_embeddings": 32768},
    # text_config of https://huggingface.co/google/gemma-3-4b-pt/blob/main/config.json (4B with the 417M vision
    # encoder)
    "gemma-3-4b": {**_GEMMA3, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                   "num_attention_heads": 8, "num_key_value_heads": 4},
    # text_config of https://huggingface.co/google/gemma-3-12b-pt/blob/main/config.json (12B)
    "gemma-3-12b": {**_GEMMA3, "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
                    "num_attention_heads": 16, "num_key_value_heads": 8},
    # text_config of https://huggingface.co/google/gemma-3-27b-pt/blob/main/config.json (27B)
    "gemma-3-27b": {**_GEMMA3, "hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 62,
                    "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
                    "query_pre_attn_scalar": 168},
    # --- gpt-oss (OpenAI gpt-oss model card, arXiv 2508.10925, Table 1: 20.9B / 116.8B total, 3.6B / 5.1B
    # active; alternating 128-token sliding-window and full layers, attention sinks, MXFP4 experts on release) ---
    # https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json
    "gpt-oss-20b": {**_GPT_OSS, "num_hidden_layers": 24, "num_local_experts": 32},
    # https://huggingface.co/openai/gpt-oss-120b/blob/main/config.json
    "gpt-oss-120b": {**_GPT_OSS, "num_hidden_layers": 36, "num_local_experts": 128},
    # --- DeepSeek (DeepSeek-V3 technical report, arXiv 2412.19437: 671B total, 37B activated; the Hub checkpoint's
    # 685B adds the multi-token-prediction module, which transformers does not build) ---
    # https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json (fp8 quantization_config left out:
    # fine-tuning trains in 16 bits)
    "deepseek-v3": {"model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
                    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
                    "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
                    "n_routed_experts": 256, "num_experts_per_tok": 8, "routed_scaling_factor": 2.5,
                    "first_k_dense_replace": 3, "n_group": 8, "topk_group": 4, "norm_topk_prob": True,
                    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                    "v_head_dim": 128, "max_position_embeddings": 163840, "rope_theta": 10000.0,
                    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu"},
    # https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/blob/main/config.json (1.78B; Qwen2.5-Math)
    "deepseek-r1-distill-qwen-1.5b": {**_QWEN25_MATH, "vocab_size": 151936, "hidden_size": 1536,
                                      "intermediate_size": 8960, "num_attention_heads": 12, "num_key_value_heads": 2},
    # https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B/blob/main/config.json (7.62B)
    "deepseek-r1-distill-qwen-7b": {**_QWEN25_MATH, "vocab_size": 152064, "hidden_size": 3584,
                                    "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4},
    # https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-14B/blob/main/config.json (14.8B; Qwen2.5-14B)
    "deepseek-r1-distill-qwen-14b": {**_QWEN25, "max_position_embeddings": 131072, "hidden_size": 5120,
                                     "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40,
                                     "num_key_value_heads": 8},
    # https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-32B/blob/main/config.json (32.8B; Qwen2.5-32B)
    "deepseek-r1-distill-qwen-32b": {**_QWEN25, "max_position_embeddings": 131072, "hidden_size": 5120,
                                     "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
                                     "num_key_value_heads": 8},
    # https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Llama-8B/blob/main/config.json (8.03B; Llama 3.1 8B)
    "deepseek-r1-distill-llama-8b": {**_LLAMA3, "max_position_embeddings": 131072, "hidden_size": 4096,
                                     "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                                     "num_key_value_heads": 8},
    # https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Llama-70B/blob/main/config.json (70.6B; Llama 3.3 70B)
    "deepseek-r1-distill-llama-70b": {**_LLAMA3, "max_position_embeddings": 131072, "hidden_size": 8192,
                                      "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
                                      "num_key_value_heads": 8},
    # --- Phi-4 (Phi-4 technical report, arXiv 2412.08905: 14B; transformers' phi3 architecture, fused qkv_proj and
    # gate_up_proj) ---
    # https://huggingface.co/microsoft/phi-4/blob/main/config.json (14.7B)
    "phi-4": {"model_type": "phi3", "vocab_size": 100352, "hidden_size": 5120, "intermediate_size": 17920,
              "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 10,
              "max_position_embeddings": 16384, "rope_theta": 250000.0, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "hidden_act": "silu", "pad_token_id": 100349},
    # --- Mistral Small 3 and Mistral NeMo (Llama-shaped: the mistral rule) ---
    # https://huggingface.co/mistralai/Mistral-Small-24B-Base-2501/blob/main/config.json (23.6B)
    "mistral-small-3-24b": {**_MISTRAL3, "intermediate_size": 32768, "max_position_embeddings": 32768,
                            "rope_theta": 100000000.0},
    # https://huggingface.co/mistralai/Mistral-Nemo-Base-2407/blob/main/config.json (12.2B)
    "mistral-nemo-12b": {**_MISTRAL3, "intermediate_size": 14336, "max_position_embeddings": 1024000,
                         "rope_theta": 1000000.0},
    # --- OLMo 2 (OLMo 2 report, arXiv 2501.00656: post-norms after attention and MLP, q/k norms over whole q and
    # k) ---
    # https://huggingface.co/allenai/OLMo-2-0425-1B/blob/main/config.json (1.48B)
    "olmo-2-1b": {**_OLMO2, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                  "num_attention_heads": 16, "num_key_value_heads": 16},
    # https://huggingface.co/allenai/OLMo-2-1124-7B/blob/main/config.json (7.30B)
    "olmo-2-7b": {**_OLMO2, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32},
    # https://huggingface.co/allenai/OLMo-2-1124-13B/blob/main/config.json (13.7B)
    "olmo-2-13b": {**_OLMO2, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                   "num_attention_heads": 40, "num_key_value_heads": 40},
    # https://huggingface.co/allenai/OLMo-2-0325-32B/blob/main/config.json (32.2B)
    "olmo-2-32b": {**_OLMO2, "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
                   "num_attention_heads": 40, "num_key_value_heads": 8},
})

# The family these users start from (Llama-2), as in "7b", "13b", "70b".
ALIASES: dict[str, str] = {"7b": "llama-2-7b", "13b": "llama-2-13b", "70b": "llama-2-70b"}
