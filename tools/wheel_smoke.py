"""Smoke test of the installed wheel, run from a folder outside the checkout (``make test-wheel``).

It fails unless ``lora_helpers`` is imported from the wheel's install folder (``$WHEEL_SITE``) and that copy
can load the embedded base, load the shipped demo adapters, switch, generate, route with both routers and
merge an adapter into a folder that plain transformers loads.
"""
import os
import sys
import tempfile
from pathlib import Path

import lora_helpers as lh

site = Path(os.environ["WHEEL_SITE"]).resolve()
here = Path(lh.__file__).resolve()
assert site in here.parents, f"lora_helpers imported from {here}, not from the wheel in {site}"
for name, folder in lh.DEMO_ADAPTERS.items():
    assert site in Path(folder).resolve().parents, f"{name}: {folder} is not inside the wheel"
    assert (Path(folder) / "adapter_model.safetensors").is_file(), f"{name}: the wheel ships no weights"

lh.setup()
model, tok = lh.load_base("smollm2-135m")
model = lh.load_adapters(model, lh.DEMO_ADAPTERS)
assert sorted(model.peft_config) == ["coding", "json", "support"], sorted(model.peft_config)
lh.switch(model, "json")
assert lh.active_adapter(model) == "json"
replies = lh.generate(model, tok, ["Extract the name and city as JSON: Olga lives in Samara."] * 2,
                      adapter=["json", "base"], max_new_tokens=24)
assert len(replies) == 2 and all(isinstance(r, str) and r.strip() for r in replies), replies

prompts = {"Верни ответ в JSON": "json", "Fix this bug in my Python function": "coding"}
for kind in ("keyword", "classifier"):
    router = lh.make_router(kind)
    got = {p: router.route(p) for p in prompts}
    assert got == prompts, (kind, got)

with tempfile.TemporaryDirectory() as tmp:
    out = lh.merge_and_save(model, "json", Path(tmp) / "merged", tokenizer=tok)
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(merged, "peft_config")
    assert lh.active_adapter(model) == "json"  # the live model keeps its adapters

assert not any(m.startswith("lora_helpers.course") for m in sys.modules), "the core imported course tooling"
print(f"wheel smoke test passed: lora_helpers {here.parent} ({len(lh.DEMO_ADAPTERS)} demo adapters)")
