"""The benchmark machinery on the tiny model (figures themselves are not asserted: not timed tests)."""
import torch
from peft import LoraConfig, get_peft_model

import lora_helpers as lh
from lora_helpers.course import bench


def peft_tiny(tiny_model, names=("json", "coding")):
    cfg = dict(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model, LoraConfig(**cfg), adapter_name=names[0])
    for n in names[1:]:
        model.add_adapter(n, LoraConfig(**cfg))
    return model.eval()


def test_switch_bench_leaves_the_first_adapter_active(tiny_model):
    model = peft_tiny(tiny_model)
    r = bench.bench_switch(model, ["json", "coding"], repeat=3)
    assert r["switch_s"] > 0 and r["ratio"] == r["set_adapter_s"] / r["switch_s"]
    assert lh.active_adapter(model) == "json"


def test_tensor_bytes_counts_shared_weights_once(tiny_tokenizer):
    import tiny
    tied = tiny.make_model(tiny_tokenizer, tie_word_embeddings=True)
    untied = tiny.make_model(tiny_tokenizer, tie_word_embeddings=False)
    emb = tied.get_input_embeddings().weight
    assert bench.tensor_bytes(untied) - bench.tensor_bytes(tied) == emb.numel() * emb.element_size()


def test_batches_route_every_prompt(tiny_model, tiny_tokenizer):
    model = peft_tiny(tiny_model)

    class R:
        def route(self, text):
            return "json" if "JSON" in text else "coding"
    r = bench.bench_batches(model, tiny_tokenizer, R(), prompts=["JSON a", "code b", "JSON c"], max_new_tokens=4,
                            repeat=1)
    assert r["routes"] == ["json", "coding", "json"] and r["mixed"] > 0 and r["grouped"] > 0


def test_report_and_chart(tmp_path):
    r = {"machine": "cpu, 2 cores", "switch": {"switch_s": 1e-5, "set_adapter_s": 1e-2, "ratio": 1000.0},
         "load": [{"name": "json", "bytes": 2**20, "load_s": 0.2, "read_s": 0.001, "ratio": 200.0}],
         "tokens_per_s": {"base": 16.0, "unmerged adapter": 14.0, "merged": 16.5},
         "batches": {"mixed": 5.0, "grouped": 10.0, "one_by_one": 14.0, "routes": ["json"] * 6,
                     "grouped_over_mixed": 2.0, "one_by_one_over_mixed": 2.8},
         "memory": {"n": 3, "base_plus_adapters_bytes": 2**29, "merged_copies_bytes": 3 * 2**29,
                    "merged_copies_rss_delta": 3 * 2**29, "ratio": 3.0},
         "router": {"keyword": 1e-4},
         "scale": [{"n": 1, "bytes": 2**29, "merged_copies_bytes": 2**29, "switch_s": 1e-5, "set_adapter_s": 1e-2,
                    "ratio": 1000.0}]}
    text = bench.to_markdown(r)
    assert "| `lh.switch` (3 adapters) | 10.0 µs | PEFT `set_adapter` 10.00 ms | 1000× faster |" in text
    assert "2.00× vs grouped" in text and "| 1 | 512.0 MiB | 512.0 MiB |" in text
    bench.plot(r, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 10_000
