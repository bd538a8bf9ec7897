"""Reward functions named on the command line (`--reward`, repeatable), as TRL's GRPOTrainer takes them: callables
`f(prompts, completions, **columns) -> list[float]`, or a sequence-classification reward model's path (TRL loads it
with AutoModelForSequenceClassification, num_labels=1).

- built-in rules (text only, no model):
  `keyword:WORD`  the share of the completion's words equal to WORD (a dense, learnable signal);
  `length:N`      1 - |words - N| / N, at most 1: completions of about N words;
  `regex:PATTERN` 1 when the completion matches PATTERN (re.search), else 0 (format rewards);
  `match`         1 when the completion contains the record's `answer` column (stripped), else 0 (accuracy
                  rewards such as GSM8K's);
- `module:function`: a Python callable, imported (the module must be importable: on PYTHONPATH or installed);
- a directory (config.json + weights): a reward model, read without remote code.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from planner.errors import PlanError

Reward = Callable[..., list[float]] | str

RULES = ("keyword", "length", "regex", "match")


def _words(text: str) -> list[str]:
    return text.split()


def keyword_reward(word: str) -> Callable[..., list[float]]:
    def keyword(completions: list[str], **_: Any) -> list[float]:
        out = []
        for c in completions:
            words = _words(c)
            out.append(sum(w == word for w in words) / len(words) if words else 0.0)
        return out

    keyword.__name__ = f"keyword_{word}"
    return keyword


def length_reward(n: int) -> Callable[..., list[float]]:
    def length(completions: list[str], **_: Any) -> list[float]:
        return [1.0 - abs(len(_words(c)) - n) / n for c in completions]

    length.__name__ = f"length_{n}"
    return length


def regex_reward(pattern: str) -> Callable[..., list[float]]:
    compiled = re.compile(pattern)

    def regex(completions: list[str], **_: Any) -> list[float]:
        return [1.0 if compiled.search(c) else 0.0 for c in completions]

    regex.__name__ = "regex"
    return regex


def match_reward(completions: list[str], answer: list[Any] | None = None, **_: Any) -> list[float]:
    """1 where the completion contains the record's reference answer."""
    if answer is None:
        raise PlanError("reward 'match' needs an 'answer' column in the prompt data")
    return [1.0 if str(a).strip() and str(a).strip() in c else 0.0 for c, a in zip(completions, answer, strict=True)]


def parse_reward(spec: str) -> Reward:
    """One `--reward` value as TRL takes it; PlanError (one line) when it names nothing usable."""
    spec = spec.strip()
    if not spec:
        raise PlanError("--reward is empty: name a rule (keyword:WORD, length:N, regex:PATTERN, match), "
                        "a module:function or a reward model directory")
    head, _, arg = spec.partition(":")
    if head == "keyword":
        if not arg:
            raise PlanError("--reward keyword:WORD needs the word")
        return keyword_reward(arg)
    if head == "length":
        if not arg.isdigit() or int(arg) < 1:
            raise PlanError(f"--reward length:N needs a positive word count, got '{arg}'")
        return length_reward(int(arg))
    if head == "regex":
        try:
            return regex_reward(arg)
        except re.error as exc:
            raise PlanError(f"--reward regex:{arg}: not a regular expression ({exc})") from None
    if spec == "match":
        return match_reward
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PlanError(f"--reward {spec}: a reward model directory needs config.json")
        return str(path)
    if arg and "/" not in head and head.replace(".", "").replace("_", "").isalnum():
        return _import_callable(head, arg)
    raise PlanError(f"--reward {spec}: not a rule ({', '.join(RULES)}), a module:function or a model directory")


def _import_callable(module: str, name: str) -> Callable[..., list[float]]:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise PlanError(f"--reward {module}:{name}: cannot import {module} ({exc})") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise PlanError(f"--reward {module}:{name}: {module} has no function {name}")
    return fn


def parse_rewards(specs: tuple[str, ...]) -> list[Reward]:
    if not specs:
        raise PlanError("stages grpo and rloo need at least one --reward (a rule such as keyword:WORD or "
                        "length:N, a module:function, or a reward model directory)")
    return [parse_reward(s) for s in specs]
