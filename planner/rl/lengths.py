"""How long completions run when they stop at EOS: the distribution of a rollout's completion lengths, given its
mean (`--completion-len-mean`) and its cap (`--completion-len`, TRL's max_completion_length).

Assumption (stated, not measured): every generated token is EOS with the same probability, so a completion's
length is geometric and cut at the cap (the clipped ones stop there: TRL logs their share as
completions/clipped_ratio, trl/trainer/grpo_trainer.py). The geometric law is the memoryless stopping rule and the
maximum-entropy law on the positive integers for a given mean. Measured RL rollouts have longer tails than that
(Jiao et al., EMNLP 2025, "Analyzing and Modeling LLM Response Lengths with Extreme Value Theory": Weibull-type
extreme-value laws, heavier tails under sampling; the rollout-efficiency papers on the "long-tail response length
distribution", e.g. DARTS, arXiv 2605.30859), so the longest of N completions planned here is if anything short of
the one a run meets. With the mean at the cap every completion has the cap's length (the uniform plan).

With P(L > k) = q^k for k < M (q = 1 - the stopping probability) and L = M at the cap:
  E[L] = sum_{k<M} q^k = (1 - q^M) / (1 - q)            (solved for q from the mean)
  E[max of n] = sum_{k<M} 1 - (1 - q^k)^n                (n independent completions)
  E[L^2] = sum_{k<M} (2k + 1) q^k
Functions take integers and are memoized: the search asks for few distinct (mean, cap, n).
"""

from __future__ import annotations

from functools import lru_cache

_BISECTIONS = 200


@lru_cache(maxsize=1024)
def continue_probability(mean: int, cap: int) -> float:
    """q, the probability that a completion goes on past a token, for completions of `mean` tokens on average
    within `cap` (1 at mean == cap: every completion runs to the cap; 0 at mean 1)."""
    if mean >= cap:
        return 1.0
    if mean <= 1:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTIONS):  # E[L] rises with q from 1 (q = 0) to the cap (q -> 1)
        q = (lo + hi) / 2
        if (1.0 - q**cap) / (1.0 - q) < mean:
            lo = q
        else:
            hi = q
    return (lo + hi) / 2


@lru_cache(maxsize=4096)
def expected_longest(mean: int, cap: int, n: int) -> float:
    """E[max of n completions] in tokens: how long a batch of n decodes until its last completion stops."""
    if mean >= cap:
        return float(cap)
    q = continue_probability(mean, cap)
    n = max(1, n)
    total = 0.0
    tail = 1.0  # q^k
    for _ in range(cap):
        total += 1.0 - (1.0 - tail) ** n
        tail *= q
    return total


@lru_cache(maxsize=1024)
def mean_square(mean: int, cap: int) -> float:
    """E[L^2] in tokens^2: a completion's decoding steps x its average context grow with it (sum over its steps
    of the tokens so far is L^2 / 2)."""
    if mean >= cap:
        return float(cap) * cap
    q = continue_probability(mean, cap)
    total = 0.0
    tail = 1.0
    for k in range(cap):
        total += (2 * k + 1) * tail
        tail *= q
    return total


@lru_cache(maxsize=1024)
def peak_tokens_per_sequence(mean: int, cap: int, prompt: int) -> float:
    """The most tokens a sequence of a wave started together holds on average at once: at step t the ones still
    running (P(L >= t)) hold prompt + t tokens each, and finished ones free theirs (vLLM frees a finished
    request's KV blocks, vllm/v1/core/sched/scheduler.py `_free_request`). At mean == cap: prompt + cap."""
    if mean >= cap:
        return float(prompt + cap)
    q = continue_probability(mean, cap)
    best = 0.0
    running = 1.0  # P(L >= t) = q^(t - 1)
    for t in range(1, cap + 1):
        best = max(best, running * (prompt + t))
        running *= q
    return best
