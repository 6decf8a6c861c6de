"""The benchmark machinery, on fake timings: each figure in a result is the one measured for it, each ratio
is the ratio of its measured pair, and the report shows the numbers it was given."""
import importlib
import itertools

from peft import LoraConfig, get_peft_model

import lora_helpers as lh
from lora_helpers import timing
from lora_helpers.course import bench
from lora_helpers.timing import Timings


def peft_tiny(tiny_model, names=("json", "coding")):
    cfg = dict(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model, LoraConfig(**cfg), adapter_name=names[0])
    for n in names[1:]:
        model.add_adapter(n, LoraConfig(**cfg))
    return model.eval()


def fake_time_calls(monkeypatch, seconds, calls=1, after=None):
    """Replace bench's ``time_calls``: each use runs ``fn`` ``calls`` times (``after()`` noted after each call)
    and reports the next of ``seconds`` as its only timing. Returns the notes, one list per use."""
    queue, notes = list(seconds), []

    def fake(fn, repeat=5, warmup=0, setup=None):
        notes.append([])
        result = None
        for _ in range(calls):
            result = fn() if setup is None else fn(setup())
            if after:
                notes[-1].append(after())
        return Timings([queue.pop(0)], result)
    monkeypatch.setattr(bench, "time_calls", fake)
    return notes


def test_time_calls_times_only_the_calls(monkeypatch):
    clock = itertools.count()                   # each perf_counter() reads one more second
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    calls, made = [], []

    def setup():
        made.append(len(made))
        next(clock)                             # time spent in setup must not count
        return made[-1]
    t = timing.time_calls(lambda x: calls.append(x) or x, repeat=3, warmup=2, setup=setup)
    assert calls == [0, 1, 2, 3, 4]             # 2 warm-up calls + 3 timed, each on a fresh setup value
    assert t.times == [1.0, 1.0, 1.0] and t.result == 4
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 25.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks))
    t = timing.time_calls(lambda: "out", repeat=3)
    assert t.times == [3.0, 1.0, 5.0] and t.median == 3.0 and t.best == 1.0 and t.result == "out"
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 25.0, 30.0, 32.0])
    assert timing.median_time(lambda: None, repeat=3, warmup=1) == 2.0     # of 1, 5, 2: the 3-s warm-up not counted
    assert lh.median_time is timing.median_time


def test_switch_bench_is_the_measured_pair_and_cycles_the_names(tiny_model, monkeypatch):
    model = peft_tiny(tiny_model)
    notes = fake_time_calls(monkeypatch, [0.002, 0.010], calls=4, after=lambda: lh.active_adapter(model))
    r = bench.bench_switch(model, ["json", "coding"])
    assert r == {"switch_s": 0.002, "set_adapter_s": 0.010, "ratio": 5.0}
    assert notes == [["json", "coding", "json", "coding"]] * 2    # lh.switch, then PEFT's set_adapter
    assert lh.active_adapter(model) == "json"


def test_switch_bench_times_both_sides_alike(tiny_model, monkeypatch):
    """Same repeats and warm-up for both, and PEFT's side is set_adapter(inference_mode=True), as switch leaves it."""
    model = peft_tiny(tiny_model)
    seen = []

    def fake(fn, repeat=5, warmup=0, setup=None):
        for _ in range(warmup + 2):
            fn()
        seen.append((repeat, warmup, sorted(n for n, p in model.named_parameters() if p.requires_grad)))
        return Timings([0.001], None)
    monkeypatch.setattr(bench, "time_calls", fake)
    bench.bench_switch(model, ["json", "coding"], repeat=7)
    assert seen == [(7, 2, []), (7, 2, [])]


def test_load_bench_loads_onto_a_fresh_base_each_time(tmp_path, monkeypatch):
    folder = tmp_path / "lora_json"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 3000)
    bases, loads = [], []
    monkeypatch.setattr(lh.base, "load_base", lambda name: (bases.append(object()) or bases[-1], None))
    monkeypatch.setattr(lh.adapters, "load_adapters", lambda base, sources: loads.append((base, sources)))
    fake_time_calls(monkeypatch, [0.25, 0.002], calls=2)
    [row] = bench.bench_load({"json": folder})
    assert row == {"name": "json", "bytes": 3000, "load_s": 0.25, "read_s": 0.002, "ratio": 125.0}
    assert [b for b, _ in loads] == bases and len(set(map(id, bases))) == 2
    assert all(s == {"json": folder} for _, s in loads)


def test_batches_time_one_mixed_call_against_groups_and_singles(monkeypatch):
    calls = []
    monkeypatch.setattr(importlib.import_module("lora_helpers.generate"), "generate",
                        lambda model, tok, prompts, adapter=None, **kw: calls.append((prompts, adapter, kw)))
    notes = fake_time_calls(monkeypatch, [2.0, 5.0, 7.0], after=lambda: len(calls))

    class R:
        def route(self, text):
            return "json" if "JSON" in text else "coding"
    r = bench.bench_batches("model", "tok", R(), prompts=["JSON a", "code b", "JSON c"], max_new_tokens=4)
    assert r == {"mixed": 2.0, "grouped": 5.0, "one_by_one": 7.0, "routes": ["json", "coding", "json"],
                 "grouped_over_mixed": 2.5, "one_by_one_over_mixed": 3.5}
    assert notes == [[1], [3], [6]]             # 1 generate call, then 2 (one per adapter), then 3
    kw = {"max_new_tokens": 4, "min_new_tokens": 4}
    assert calls == [(["JSON a", "code b", "JSON c"], ["json", "coding", "json"], kw),
                     (["JSON a", "JSON c"], "json", kw), (["code b"], "coding", kw),
                     ("JSON a", "json", kw), ("code b", "coding", kw), ("JSON c", "json", kw)]


def test_router_latency_is_per_prompt(monkeypatch):
    fake_time_calls(monkeypatch, [0.006, 0.012])
    out = bench.bench_router(prompts=["Верни JSON", "Напиши код", "Где заказ?"])
    assert out == {"keyword": 0.002, "classifier (char n-grams)": 0.004}


def test_tensor_bytes_counts_shared_weights_once(tiny_tokenizer):
    import tiny
    tied = tiny.make_model(tiny_tokenizer, tie_word_embeddings=True)
    untied = tiny.make_model(tiny_tokenizer, tie_word_embeddings=False)
    emb = tied.get_input_embeddings().weight
    assert bench.tensor_bytes(untied) - bench.tensor_bytes(tied) == emb.numel() * emb.element_size()


RESULT = {"machine": "cpu, 2 cores",
          "switch": {"switch_s": 2e-5, "set_adapter_s": 1.2e-2, "ratio": 600.0},
          "load": [{"name": "json", "bytes": 3 * 2**20, "load_s": 0.25, "read_s": 0.002, "ratio": 125.0}],
          "tokens_per_s": {"base": 16.2, "unmerged adapter": 13.5, "merged": 16.9},
          "batches": {"mixed": 4.8, "grouped": 11.0, "one_by_one": 14.1, "routes": ["json"] * 6,
                      "grouped_over_mixed": 2.29, "one_by_one_over_mixed": 2.94},
          "memory": {"n": 3, "base_plus_adapters_bytes": 600 * 2**20, "merged_copies_bytes": 1620 * 2**20,
                     "merged_copies_rss_delta": 70 * 2**20, "ratio": 2.7},
          "router": {"keyword": 4e-5, "classifier (char n-grams)": 1.5e-3},
          "scale": [{"n": 4, "bytes": 700 * 2**20, "merged_copies_bytes": 2160 * 2**20, "switch_s": 3e-5,
                     "set_adapter_s": 1.5e-2, "ratio": 500.0}]}


def test_report_shows_the_numbers_it_was_given():
    lines = bench.to_markdown(RESULT).splitlines()
    assert lines[0] == "Machine: cpu, 2 cores"
    for row in ["| claim | measured | alternative (same run) | ratio |",
                "| `lh.switch` (3 adapters) | 20.0 µs | PEFT `set_adapter` 12.00 ms | 600.00× (`set_adapter` ÷ `switch`) |",
                "| `load_adapters` json (3.0 MiB) | 250.00 ms | reading the same bytes 2.00 ms | 125× |",
                "| greedy tokens/s, merged | 16.9 | base 16.2, unmerged adapter 13.5 | 1.25× the unmerged |",
                "| routed mixed batch, 6 prompts × 32 tokens | 4.80 s | grouped by adapter 11.00 s; one by one 14.10 s "
                "| 2.29× vs grouped, 2.94× vs one by one |",
                "| memory: base + 3 adapters | 600.0 MiB | 3 merged copies 1620.0 MiB | 2.70× less |",
                "| router latency, keyword | 40.0 µs per prompt | — | — |",
                "| router latency, classifier (char n-grams) | 1.50 ms per prompt | — | — |",
                "| 4 | 700.0 MiB | 2160.0 MiB | 30.0 µs | 15.00 ms | 500.00× |"]:
        assert row in lines, row
    assert any("grew by only 70.0 MiB while the 3 copies loaded" in line for line in lines)


def test_chart_has_the_four_panels(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    saved = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: saved.append(fig))
    bench.plot(RESULT, tmp_path / "b.png")
    [fig] = saved
    assert [a.get_title() for a in fig.axes] == ["Switch time", "Memory", "Greedy generation", "6 routed prompts"]
    assert [b.get_height() for b in fig.axes[3].patches] == [4.8, 11.0, 14.1]
