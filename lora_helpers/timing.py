"""Timing helpers — the package's one place for them (notebooks, ``bench``, ``serve_local``).

* :func:`time_calls` — every wall time of ``repeat`` calls (optionally each on a fresh ``setup()`` value),
  and what the last call returned;
* :func:`median_time` — their median (``lh.median_time``);
* :func:`tokens_per_second` — greedy generation speed of several models on one prompt.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Timings:
    """Wall times in seconds, in call order, and what the last timed call returned."""
    times: list[float] = field(default_factory=list)
    result: object = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def time_calls(fn, repeat: int = 5, warmup: int = 0, setup=None) -> Timings:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times timed (at least once).

    With ``setup``, each call is ``fn(setup())`` and ``setup`` runs untimed: e.g. a fresh base model for each
    timed load.
    """
    out = Timings()
    for i in range(warmup + max(1, repeat)):
        arg = None if setup is None else setup()
        t = time.perf_counter()
        result = fn() if setup is None else fn(arg)
        elapsed = time.perf_counter() - t
        del arg                 # a setup value (a whole model) is freed before the next one is made
        if i >= warmup:
            out.times.append(elapsed)
            out.result = result
        del result
    return out


def median_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    return time_calls(fn, repeat, warmup).median


def tokens_per_second(cases: dict, tokenizer, prompt: str, max_new_tokens: int = 32, repeat: int = 3) -> dict:
    """Greedy tokens/s for each ``{label: (model, adapter)}`` on the same prompt (median of repeats).

    ``adapter`` is passed to ``generate`` (None = the model as it is, "base" = adapters off). Generation
    runs with ``min_new_tokens=max_new_tokens`` so every case produces the same number of tokens.
    """
    from .generate import generate

    result = {}
    for label, (model, adapter) in cases.items():
        run = lambda m=model, a=adapter: generate(m, tokenizer, prompt, adapter=a, max_new_tokens=max_new_tokens,
                                                  min_new_tokens=max_new_tokens)
        result[label] = max_new_tokens / median_time(run, repeat=repeat)
    return result
