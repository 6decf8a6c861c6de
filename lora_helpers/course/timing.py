"""Timing helpers shared by the notebooks and ``python -m lora_helpers.course.bench``."""
from __future__ import annotations

import statistics
import time


def median_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tokens_per_second(cases: dict, tokenizer, prompt: str, max_new_tokens: int = 32, repeat: int = 3) -> dict:
    """Greedy tokens/s for each ``{label: (model, adapter)}`` on the same prompt (median of repeats).

    ``adapter`` is passed to ``generate`` (None = the model as it is, "base" = adapters off). Generation
    runs with ``min_new_tokens=max_new_tokens`` so every case produces the same number of tokens.
    """
    from ..generate import generate

    result = {}
    for label, (model, adapter) in cases.items():
        run = lambda m=model, a=adapter: generate(m, tokenizer, prompt, adapter=a, max_new_tokens=max_new_tokens,
                                                  min_new_tokens=max_new_tokens)
        result[label] = max_new_tokens / median_time(run, repeat=repeat)
    return result
