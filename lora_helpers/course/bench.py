"""Benchmarks of the course's claims, each measured against its alternative in the same run.

``python -m lora_helpers.course.bench`` (or ``make bench``) prints a markdown table with the machine's
description and writes ``bench.md`` and ``bench.png`` (default folder: build/bench).
Ratios matter more than absolute figures: the machines are shared and noisy.
"""
from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import torch

from ..tables import markdown
from ..timing import time_calls, tokens_per_second

MIXED_PROMPTS = [
    "Extract the name and city as JSON: Olga lives in Samara.",
    "Верни JSON с полями товар и цена: чайник за 1500 рублей.",
    "Write a Python function that returns the square of a number.",
    "Напиши функцию на Python, которая переворачивает строку.",
    "My order has not arrived yet, what should I do?",
    "Здравствуйте, не могу войти в личный кабинет.",
]


# ----------------------------------------------------------------------------- the measurements
def bench_switch(model, names, repeat: int = 300) -> dict:
    """lh.switch vs PEFT ``set_adapter(name, inference_mode=True)`` (what switch leaves: frozen weights), median
    seconds per call, cycling through ``names``; both timed alike (same repeats, same warm-up)."""
    from ..adapters import switch

    def cycle(fn):
        state = {"i": 0}

        def step():
            fn(names[state["i"] % len(names)])
            state["i"] += 1
        return step

    switch(model, names[0])
    fast = time_calls(cycle(lambda n: switch(model, n)), repeat=repeat, warmup=len(names)).median
    switch(model, names[0])
    peft = time_calls(cycle(lambda n: model.set_adapter(n, inference_mode=True)), repeat=repeat,
                      warmup=len(names)).median
    switch(model, names[0])
    return {"switch_s": fast, "set_adapter_s": peft, "ratio": peft / fast}


def bench_load(adapters: dict, repeat: int = 3) -> list[dict]:
    """Per adapter: ``load_adapters`` onto a fresh base vs reading the same bytes from disk."""
    from ..adapters import load_adapters
    from ..base import load_base

    rows = []
    for name, folder in adapters.items():
        weights = Path(folder) / "adapter_model.safetensors"
        load = time_calls(lambda base: load_adapters(base, {name: folder}), repeat,
                          setup=lambda: load_base("smollm2-135m")[0]).median
        read = time_calls(weights.read_bytes, repeat, warmup=1).median
        rows.append({"name": name, "bytes": weights.stat().st_size, "load_s": load, "read_s": read,
                     "ratio": load / read})
    return rows


def bench_batches(model, tokenizer, router, prompts=MIXED_PROMPTS, max_new_tokens: int = 32, repeat: int = 3):
    """The same routed prompts as one mixed batch, grouped by adapter, and one at a time."""
    from ..generate import generate

    routes = [router.route(p) for p in prompts]
    kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)

    def mixed():
        generate(model, tokenizer, prompts, adapter=routes, **kw)

    def grouped():
        for name in dict.fromkeys(routes):
            generate(model, tokenizer, [p for p, r in zip(prompts, routes) if r == name], adapter=name, **kw)

    def one_by_one():
        for p, r in zip(prompts, routes):
            generate(model, tokenizer, p, adapter=r, **kw)

    t = {k: time_calls(f, repeat=repeat, warmup=1).median for k, f in
         {"mixed": mixed, "grouped": grouped, "one_by_one": one_by_one}.items()}
    return {**t, "routes": routes, "grouped_over_mixed": t["grouped"] / t["mixed"],
            "one_by_one_over_mixed": t["one_by_one"] / t["mixed"]}


def tensor_bytes(model) -> int:
    """Bytes held by a model's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def bench_memory(model, merged_folder, n: int = 3) -> dict:
    """Resident memory: the live base + its adapters vs ``n`` merged copies loaded side by side."""
    from transformers import AutoModelForCausalLM

    live = tensor_bytes(model)
    before = rss_bytes()
    copies = [AutoModelForCausalLM.from_pretrained(merged_folder) for _ in range(n)]
    rss_copies = rss_bytes() - before
    merged = sum(tensor_bytes(c) for c in copies)
    del copies
    return {"n": n, "base_plus_adapters_bytes": live, "merged_copies_bytes": merged,
            "merged_copies_rss_delta": rss_copies, "ratio": merged / live}


def bench_scale(counts=(1, 4, 16, 64), r: int = 16, repeat: int = 20) -> list[dict]:
    """Synthetic r=16 all-linear adapters on the embedded base: memory and switch time as N grows."""
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from ..base import load_base

    base, _ = load_base("smollm2-135m")
    base_bytes = tensor_bytes(base)
    cfg = dict(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(**cfg), adapter_name="a0")
    rows, have = [], 1
    for n in tqdm(counts, desc="adapters"):
        while have < n:
            model.add_adapter(f"a{have}", LoraConfig(**cfg))
            have += 1
        names = [f"a{i}" for i in range(min(n, 4))]
        # switching serves inference: every module in eval mode, as load_adapters leaves a model (get_peft_model
        # and add_adapter leave the new layers in train mode, where switch also pays PEFT's enable_adapter_layers
        # on releases without its shortcuts)
        model.eval()
        sw = bench_switch(model, names, repeat=repeat)
        rows.append({"n": n, "bytes": tensor_bytes(model), "merged_copies_bytes": n * base_bytes, **sw})
    return rows


def bench_router(model=None, tokenizer=None, prompts=MIXED_PROMPTS, repeat: int = 20) -> dict:
    """Median routing latency per prompt for the keyword router and the n-gram classifier."""
    from ..router import make_router

    routers = {"keyword": make_router("keyword"), "classifier (char n-grams)": make_router("classifier")}
    if model is not None:
        routers["classifier (+ base hidden states)"] = make_router("classifier", model=model, tokenizer=tokenizer)
    out = {}
    for label, router in routers.items():
        per_call = time_calls(lambda: [router.route(p) for p in prompts], repeat=max(2, repeat // 5), warmup=1)
        out[label] = per_call.median / len(prompts)
    return out


# ----------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import peft
    import transformers
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, peft {peft.__version__}, Python {platform.python_version()}")


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} µs"


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


CLAIM_COLUMNS = {"claim": "claim", "measured": "measured", "alternative": "alternative (same run)", "ratio": "ratio"}
SCALE_COLUMNS = {"n": "N adapters", "bytes": "base + adapters", "merged": "N merged copies", "switch": "`switch`",
                 "set_adapter": "`set_adapter`", "ratio": "`set_adapter` ÷ `switch`"}


def claim_rows(r: dict) -> list[dict]:
    """One row per claim: what was measured, its alternative in the same run, and their ratio."""
    sw, tps, b, m = r["switch"], r["tokens_per_s"], r["batches"], r["memory"]
    rows = [dict(claim="`lh.switch` (3 adapters)", measured=_ms(sw["switch_s"]),
                 alternative=f"PEFT `set_adapter` {_ms(sw['set_adapter_s'])}",
                 ratio=f"{sw['ratio']:.2f}× (`set_adapter` ÷ `switch`)")]
    rows += [dict(claim=f"`load_adapters` {x['name']} ({_mib(x['bytes'])})", measured=_ms(x["load_s"]),
                  alternative=f"reading the same bytes {_ms(x['read_s'])}", ratio=f"{x['ratio']:.0f}×")
             for x in r["load"]]
    rows.append(dict(claim="greedy tokens/s, merged", measured=f"{tps['merged']:.1f}",
                     alternative=f"base {tps['base']:.1f}, unmerged adapter {tps['unmerged adapter']:.1f}",
                     ratio=f"{tps['merged'] / tps['unmerged adapter']:.2f}× the unmerged"))
    rows.append(dict(claim=f"routed mixed batch, {len(b['routes'])} prompts × 32 tokens",
                     measured=f"{b['mixed']:.2f} s",
                     alternative=f"grouped by adapter {b['grouped']:.2f} s; one by one {b['one_by_one']:.2f} s",
                     ratio=f"{b['grouped_over_mixed']:.2f}× vs grouped, "
                           f"{b['one_by_one_over_mixed']:.2f}× vs one by one"))
    rows.append(dict(claim=f"memory: base + {m['n']} adapters", measured=_mib(m["base_plus_adapters_bytes"]),
                     alternative=f"{m['n']} merged copies {_mib(m['merged_copies_bytes'])}",
                     ratio=f"{m['ratio']:.2f}× less"))
    rows += [dict(claim=f"router latency, {label}", measured=f"{_ms(s)} per prompt")
             for label, s in r["router"].items()]
    return rows


def to_markdown(r: dict) -> str:
    m = r["memory"]
    scale = [dict(n=x["n"], bytes=_mib(x["bytes"]), merged=_mib(x["merged_copies_bytes"]), switch=_ms(x["switch_s"]),
                  set_adapter=_ms(x["set_adapter_s"]), ratio=f"{x['ratio']:.2f}×") for x in r["scale"]]
    return "\n".join([
        f"Machine: {r['machine']}", "", markdown(claim_rows(r), CLAIM_COLUMNS), "",
        f"Memory counts the bytes the tensors hold. The process's RSS grew by only "
        f"{_mib(m['merged_copies_rss_delta'])} while the {m['n']} copies loaded: safetensors maps the files "
        "and pages come in as they are read, and memory freed earlier in the run is reused; a copy that "
        "generates touches every weight.", "",
        "Scale series (synthetic r=16 all-linear adapters; merged copies = N × the base's bytes):", "",
        markdown(scale, SCALE_COLUMNS)])


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 3.6))
    n = [row["n"] for row in r["scale"]]
    ax[0].plot(n, [row["set_adapter_s"] * 1e3 for row in r["scale"]], "o-", label="PEFT set_adapter")
    ax[0].plot(n, [row["switch_s"] * 1e3 for row in r["scale"]], "o-", label="lh.switch")
    ax[0].set(xscale="log", yscale="log", xlabel="adapters loaded", ylabel="ms per switch", title="Switch time")
    ax[1].plot(n, [row["merged_copies_bytes"] / 2**30 for row in r["scale"]], "o-", label="N merged copies")
    ax[1].plot(n, [row["bytes"] / 2**30 for row in r["scale"]], "o-", label="one base + N adapters")
    ax[1].set(xscale="log", yscale="log", xlabel="N", ylabel="GiB", title="Memory")
    tps = r["tokens_per_s"]
    ax[2].bar(list(tps), list(tps.values()), color=["#888", "#e8834c", "#4c9be8"])
    ax[2].set(ylabel="tokens/s", title="Greedy generation")
    b = r["batches"]
    ax[3].bar(["mixed batch", "grouped", "one by one"], [b["mixed"], b["grouped"], b["one_by_one"]],
              color=["#4c9be8", "#e8834c", "#888"])
    ax[3].set(ylabel="seconds", title=f"{len(b['routes'])} routed prompts")
    for a in ax[:2]:
        a.legend()
    fig.suptitle("lora_helpers benchmarks — " + r["machine"].split(",")[0], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def run_all(scale=(1, 4, 16, 64)) -> dict:
    from ..adapters import load_adapters
    from ..shipped import DEMO_ADAPTERS
    from ..base import load_base
    from ..notebook_setup import setup
    from ..merge import merge_and_save
    from ..router import make_router

    setup()
    names = list(DEMO_ADAPTERS)
    base, tok = load_base("smollm2-135m")
    model = load_adapters(base, DEMO_ADAPTERS)
    r = {"machine": machine(), "switch": bench_switch(model, names), "load": bench_load(DEMO_ADAPTERS)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = merge_and_save(model, "json", Path(tmp) / "merged", tokenizer=tok, verify=False)
        from transformers import AutoModelForCausalLM
        merged = AutoModelForCausalLM.from_pretrained(folder)
        r["tokens_per_s"] = tokens_per_second({"base": (model, "base"), "unmerged adapter": (model, "json"),
                                               "merged": (merged, None)}, tok, MIXED_PROMPTS[0])
        del merged
        r["memory"] = bench_memory(model, folder, n=len(names))
    r["batches"] = bench_batches(model, tok, make_router("classifier"))
    r["router"] = bench_router()
    del model, base
    r["scale"] = bench_scale(scale)
    return r


def main(argv=None) -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(description="Measure the course's claims side by side (embedded base, demo adapters).")
    p.add_argument("--out", default="build/bench", help="folder for bench.md, bench.json and bench.png")
    p.add_argument("--scale", default="1,4,16,64", help="adapter counts for the scale series")
    args = p.parse_args(argv)
    r = run_all(tuple(int(x) for x in args.scale.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = to_markdown(r)
    (out / "bench.md").write_text(text + "\n")
    (out / "bench.json").write_text(json.dumps(r, indent=1, default=str))
    plot(r, out / "bench.png")
    print(text)
    print(f"\nWrote {out / 'bench.md'} and {out / 'bench.png'}")


if __name__ == "__main__":
    main()
