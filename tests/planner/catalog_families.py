"""One model of each config.json model_type in the catalog (planner/model_specs/, planner.models), smallest first
where the family has several, plus Gemma 3's 1B (a 1:5 local:global layout at a 512-token window, unlike the 4B+'s
1024): the models the memory and time properties are drawn over (tests/planner/test_memory_properties.py,
tests/planner/test_time_properties.py). tests/planner/test_time_properties.py checks that it covers every family."""

FAMILIES = ("llama-3.2-1b", "mistral-7b", "mixtral-8x7b", "qwen2.5-7b", "baichuan2-7b", "chatglm3-6b", "bloom-7b1",
            "qwen3-0.6b", "qwen3-30b-a3b", "llama-4-scout-17b-16e", "gemma-3-1b", "gemma-3-4b", "gpt-oss-20b",
            "deepseek-v3", "phi-4", "olmo-2-1b")
