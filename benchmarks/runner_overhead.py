"""Overhead of `ftplan run` over a plain transformers Trainer script: same model, data, LoRA and settings.

    python benchmarks/runner_overhead.py [--steps 40] [--seq-len 128] [--micro-batch 4]

Builds a small Llama (from a LlamaConfig) and a WordLevel tokenizer in a temporary folder, writes an alpaca
JSONL, then runs, each in its own process on this machine's CPU: (1) `ftplan run PLAN.json`, then (2) a plain
script (below) with the same examples, batch, LoRA and optimizer, no ftplan callbacks. Both are timed by the
Trainer's own `train_runtime` (the training loop only, no start-up or saving); both train on the same
tokens in the same order, so the tokens/s ratio ftplan / plain is their runtime ratio; the median of the
per-step time ratios is printed beside it (robust to load from other processes). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLAIN_SCRIPT = r'''
import json, sys
import torch
from peft import LoraConfig, get_peft_model
import time
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

model_dir, data, out, steps, seq_len, mb, lr = sys.argv[1:8]
tok = AutoTokenizer.from_pretrained(model_dir)
PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
examples = []
for line in open(data):
    r = json.loads(line)
    p = tok(PROMPT.format(instruction=r["instruction"]), add_special_tokens=False)["input_ids"]
    a = tok(r["output"], add_special_tokens=False)["input_ids"]
    ids = ([tok.bos_token_id] + p + a + [tok.eos_token_id])[: int(seq_len)]
    labels = ([-100] * (1 + len(p)) + a + [tok.eos_token_id])[: int(seq_len)]
    examples.append({"input_ids": ids, "labels": labels})
import random
order = list(range(len(examples)))
random.Random(42).shuffle(order)  # the same held-out split as ftplan run (5%)
n_eval = round(len(order) * 0.05)
train = [examples[i] for i in order[: len(order) - n_eval]]
tokens = [0]

def collate(batch):
    w = max(len(e["input_ids"]) for e in batch)
    tokens[0] += sum(len(e["input_ids"]) for e in batch)
    return {"input_ids": torch.tensor([e["input_ids"] + [tok.pad_token_id] * (w - len(e["input_ids"])) for e in batch]),
            "labels": torch.tensor([e["labels"] + [-100] * (w - len(e["labels"])) for e in batch]),
            "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (w - len(e["input_ids"]))
                                            for e in batch])}

model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
model.config.use_cache = False
model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05,
                                         target_modules="all-linear"))
args = TrainingArguments(output_dir=out, per_device_train_batch_size=int(mb), gradient_accumulation_steps=1,
                         max_steps=int(steps), learning_rate=float(lr), lr_scheduler_type="linear", optim="adamw_torch",
                         logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=42, data_seed=42,
                         remove_unused_columns=False, disable_tqdm=True)


class StepTimes(TrainerCallback):  # measurement only: the time between optimizer-step ends, as ftplan logs it
    def __init__(self):
        self.last, self.times = 0.0, []

    def on_train_begin(self, args, state, control, **kw):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


timer = StepTimes()
result = Trainer(model=model, args=args, train_dataset=train, data_collator=collate, callbacks=[timer]).train()
print("RESULT " + json.dumps({"train_runtime_s": result.metrics["train_runtime"], "step_times_s": timer.times}))
'''


def build_inputs(root: Path, n_rows: int) -> tuple[Path, Path]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(1000)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(root / "model")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=0)).save_pretrained(root / "model")
    rng = random.Random(0)
    with (root / "data.jsonl").open("w") as fh:
        for _ in range(n_rows):
            q = " ".join(f"w{rng.randrange(1000)}" for _ in range(rng.randrange(20, 60)))
            a = " ".join(f"w{rng.randrange(1000)}" for _ in range(rng.randrange(20, 60)))
            fh.write(json.dumps({"instruction": q, "output": a}) + "\n")
    return root / "model", root / "data.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=4)
    a = p.parse_args()
    from planner.build import build_config
    from planner.strategy import Precision
    from runner.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics
    from runner.train import write_plan

    lr = "1e-4"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = build_inputs(root, n_rows=a.steps * a.micro_batch + 16)
        plan = root / "plan.json"
        write_plan(build_config(model=str(model), gpus="1xCPU", seq_len=a.seq_len, micro_batch=a.micro_batch,
                                precision=Precision.fp32), plan)
        subprocess.run([sys.executable, "-m", "ftplan", "run", str(plan), "--model-path", str(model), "--data",
                        str(data), "--output", str(root / "ftplan"), "--max-steps", str(a.steps),
                        "--save-steps", str(10 * a.steps), "--learning-rate", lr],
                       capture_output=True, text=True, check=True, cwd=REPO)
        plain = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(model), str(data), str(root / "plain"),
                                str(a.steps), str(a.seq_len), str(a.micro_batch), lr],
                               capture_output=True, text=True, check=True, cwd=REPO)
        plain_s = json.loads(next(line for line in plain.stdout.splitlines() if line.startswith("RESULT "))[7:])
        summary = json.loads((root / "ftplan" / SUMMARY_FILE).read_text())
        rows = read_metrics(root / "ftplan" / METRICS_FILE)
    tokens = sum(row["tokens"] for row in rows)
    ftplan_tps = tokens / summary["train_runtime_s"]
    plain_tps = tokens / plain_s["train_runtime_s"]
    # both runs train the same tokens step by step, so per-step time ratios are tokens/s ratios; the median of
    # the per-step ratios shrugs off bursts of load from other processes on a shared machine
    per_step = sorted(p / f for p, f in zip(plain_s["step_times_s"], [r["step_time_s"] for r in rows], strict=True))
    print(json.dumps({"steps": a.steps, "tokens": tokens, "ftplan_tokens_per_s": round(ftplan_tps, 1),
                      "plain_trainer_tokens_per_s": round(plain_tps, 1),
                      "ftplan_train_runtime_s": summary["train_runtime_s"],
                      "plain_train_runtime_s": plain_s["train_runtime_s"],
                      "ratio_ftplan_over_plain": round(ftplan_tps / plain_tps, 3),
                      "median_per_step_ratio": round(statistics.median(per_step), 3)}))


if __name__ == "__main__":
    main()
