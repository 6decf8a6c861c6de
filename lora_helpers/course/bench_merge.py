"""What merging costs in memory, measured side by side: ``lh.merge_and_save`` (tensor by tensor, shard by
shard) against the plain PEFT way (a copy of the model, ``merge_and_unload``, ``save_pretrained``), each in a
fresh process so one run's freed memory does not flatter the next; the extrapolation to Mistral-7B on free
Colab; and the tolerance between a merged 4-bit base and the unmerged 4-bit model.

``python -m lora_helpers.course.bench_merge`` (part of ``make bench``) prints a markdown table.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

GIB = 2**30
COLAB_FREE_RAM = 12.7 * GIB  # free Colab's RAM, as the course states it
# Mistral-7B-Instruct-v0.3 (fp16): ~7.25e9 parameters in three ~5 GB shards; the largest tensors are the
# 32768 x 4096 embedding and lm_head, and the 14336 x 4096 MLP weights.
MISTRAL = {"fp16_bytes": 14.5e9, "embed": 32768 * 4096, "mlp": 14336 * 4096}

_CHILD = r"""
import gc, json, sys, tempfile, threading, time, copy
import psutil, torch
import lora_helpers as lh
from lora_helpers.shipped import DEMO_ADAPTERS
way, preset, adapter, shard = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lh.setup()
model, tok = lh.load_base(preset)
model = lh.load_adapters(model, {adapter: DEMO_ADAPTERS[adapter]})
from lora_helpers.merge import _merged_bytes
base_bytes = _merged_bytes(model.get_base_model(), torch.float32)
with torch.no_grad():  # page the mmap-loaded weights in, as a notebook that has generated text has
    model(input_ids=torch.tensor([[1, 2, 3]]))
    for p in model.parameters():
        p.sum()
gc.collect()
proc = psutil.Process()
start = peak = proc.memory_info().rss
done = False
def sample():
    global peak
    while not done:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.002)
t = threading.Thread(target=sample); t.start()
out = tempfile.mkdtemp() + "/m"
t0 = time.perf_counter()
if way == "peft":
    merged = copy.deepcopy(model).merge_and_unload(adapter_names=[adapter])
    merged.save_pretrained(out)
    tok.save_pretrained(out)
else:
    lh.merge_and_save(model, adapter, out, tokenizer=tok, verify=way, max_shard_size=shard or None)
seconds = time.perf_counter() - t0
done = True; t.join()
print(json.dumps({"growth": peak - start, "base_bytes": base_bytes, "seconds": seconds}))
"""


def measure(way: str, preset: str = "smollm2-135m", adapter: str = "json", shard: int = 0) -> dict:
    """Peak RSS growth of one merge in a fresh process: way = "tensors", "logits" or "peft"."""
    r = subprocess.run([sys.executable, "-c", _CHILD, way, preset, adapter, str(shard)], capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"merge benchmark ({way}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def mistral_estimate() -> dict:
    """Extra RAM for merging Mistral-7B from its 4-bit weights on a T4: one shard being filled (the default,
    a quarter of the merged model up to 2 GiB), plus the biggest transient (a dequantized fp32 MLP weight and
    its delta, or the fp32 embedding before its cast)."""
    from lora_helpers.merge import _shard_bytes
    shard = _shard_bytes(None, MISTRAL["fp16_bytes"])  # merge_and_save's own default
    transient = max(2 * MISTRAL["mlp"] * 4, MISTRAL["embed"] * 4)
    lh_bytes = shard + transient
    peft_bytes = MISTRAL["fp16_bytes"]  # a full fp16 copy to merge into (the old reload path)
    return {"lh_bytes": lh_bytes, "peft_bytes": peft_bytes, "colab": COLAB_FREE_RAM}


def tolerance_4bit(adapters=("json", "coding", "support")) -> list[dict]:
    """max |Δlogits| between the merged folder of the 4-bit embedded base and the unmerged 4-bit model."""
    import tempfile

    import lora_helpers as lh
    from lora_helpers import merge as M
    from lora_helpers.shipped import DEMO_ADAPTERS
    from lora_helpers.names import BASE

    model, tok = lh.load_base("smollm2-135m-4bit")
    model = lh.load_adapters(model, {a: DEMO_ADAPTERS[a] for a in adapters})
    ids = M._probe_ids(model, tok)
    base = M._adapter_logits(model, BASE, ids)
    rows = []
    for a in adapters:
        path = lh.merge_and_save(model, a, tempfile.mkdtemp() + "/m", tokenizer=tok, verify="logits", tolerance=1e9)
        shift = float((M._adapter_logits(model, a, ids) - base).abs().max())
        rows.append({"adapter": a, "merged_vs_4bit": lh.MergeReport.read(path).max_abs_diff, "adapter_shift": shift})
    return rows


def to_markdown(runs: dict, est: dict, tol: list[dict]) -> str:
    base = runs["peft"]["base_bytes"]
    lines = ["| merge of the json adapter into SmolLM2-135M (fp32) | peak RSS growth | × base | seconds |",
             "|---|---|---|---|"]
    labels = {"tensors": "lh.merge_and_save, verify='tensors' (sampled W' = W + s·B·A)",
              "logits": "lh.merge_and_save, verify='logits' (reloads the merged folder)",
              "peft": "PEFT: deepcopy + merge_and_unload + save_pretrained"}
    for way, r in runs.items():
        lines.append(f"| {labels[way]} | {r['growth'] / 2**20:.0f} MiB | {r['growth'] / base:.2f}× | "
                     f"{r['seconds']:.1f} |")
    lines += ["", f"Mistral-7B on a T4 (extrapolated): lh.merge_and_save needs ~{est['lh_bytes'] / GIB:.1f} GiB of RAM "
              f"beyond the running notebook; a full fp16 copy needs ~{est['peft_bytes'] / GIB:.1f} GiB; free Colab "
              f"has ~{est['colab'] / GIB:.1f} GiB.", "",
              "| 4-bit SmolLM2 (nf4) | max abs Δlogits merged vs unmerged 4-bit | adapter vs base |", "|---|---|---|"]
    lines += [f"| {r['adapter']} | {r['merged_vs_4bit']:.2f} | {r['adapter_shift']:.1f} |" for r in tol]
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description="Peak memory of merging, side by side, and the 4-bit merge tolerance.")
    p.add_argument("--skip-4bit", action="store_true", help="only the memory table")
    args = p.parse_args(argv)
    start = time.perf_counter()
    runs = {way: measure(way) for way in ("tensors", "logits", "peft")}
    tol = [] if args.skip_4bit else tolerance_4bit()
    print(to_markdown(runs, mistral_estimate(), tol))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
