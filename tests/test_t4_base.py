"""The Colab T4 path of load_base: the ungated pre-quantized Mistral first, computing in fp16 where the GPU has
no native bf16; the gated official repository only when asked for, with a clear error instead of a fallback."""
import warnings

import pytest
import torch

import lora_helpers as lh
from lora_helpers import base

import tiny


@pytest.fixture
def prequantized(tmp_path, tiny_tokenizer):
    """A tiny checkpoint saved in nf4 with a stored bf16 compute dtype, like the Hub's pre-quantized builds."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    src, out = tmp_path / "full", tmp_path / "nf4"
    tiny.make_model(tiny_tokenizer, hidden_size=64, intermediate_size=128).save_pretrained(src)
    q = AutoModelForCausalLM.from_pretrained(src, device_map={"": "cpu"}, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16))
    q.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def _compute_dtypes(model):
    import bitsandbytes as bnb
    return {m.compute_dtype for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}


def test_a_prequantized_checkpoint_computes_in_the_devices_dtype(prequantized):
    """Passing a BitsAndBytesConfig would be ignored (the stored bf16 kept, with a warning): the config carries it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers' "quantization_config from the model will be used" included
        model, tok = base.load_prequantized_4bit(str(prequantized), "cpu")
    assert base.is_quantized(model) and _compute_dtypes(model) == {torch.float32}
    assert model.config.quantization_config.bnb_4bit_compute_dtype == torch.float32
    ids = tok("Return JSON", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**ids).logits).all()


def test_a_full_precision_checkpoint_is_not_taken_for_a_prequantized_one(tmp_path, tiny_tokenizer):
    tiny.make_model(tiny_tokenizer).save_pretrained(tmp_path / "full")
    with pytest.raises(lh.BaseModelError, match="not a bitsandbytes 4-bit checkpoint.*load_4bit"):
        base.load_prequantized_4bit(str(tmp_path / "full"), "cpu")


@pytest.fixture
def fake_t4(monkeypatch, prequantized, tiny_tokenizer):
    """CUDA faked as a T4 (no native bf16); a Hub download answered with the tiny pre-quantized folder; every
    download and from_pretrained call recorded."""
    import huggingface_hub
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.delenv("LORA_HELPERS_BASE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    calls = []

    def snapshot(repo, **kw):
        calls.append(("download", repo, kw))
        return str(prequantized)

    def model(repo, **kw):
        calls.append(("model", str(repo), kw))
        return tiny.make_model(tiny_tokenizer)

    def tokenizer(repo, **kw):
        calls.append(("tokenizer", str(repo), kw))
        return tiny_tokenizer

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer)
    return calls


@pytest.mark.parametrize("preset", ["auto", "mistral-7b"])
def test_a_t4_loads_the_ungated_nf4_build_first_in_fp16(fake_t4, prequantized, preset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on the default path
        model, _ = lh.load_base(preset)
    # downloaded first with token=False (no token looked up: no Colab secret dialog), then loaded from the folder
    assert [(kind, repo) for kind, repo, _ in fake_t4] == [
        ("download", base.MISTRAL_4BIT), ("model", str(prequantized)), ("tokenizer", str(prequantized))]
    assert fake_t4[0][2]["token"] is False and "quantization_config" not in fake_t4[1][2]
    kw = fake_t4[1][2]
    assert kw["dtype"] == torch.float16 and kw["device_map"] == {"": "cuda"}
    qc = kw["config"].quantization_config
    assert qc["load_in_4bit"] and qc["bnb_4bit_quant_type"] == "nf4" and qc["bnb_4bit_compute_dtype"] == "float16"
    assert model.name_or_path == model.config._name_or_path == base.MISTRAL_4BIT  # what adapters record


def test_a_given_token_is_used_for_the_download(fake_t4, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    lh.load_base("mistral-7b")
    lh.load_base("mistral-7b", token="hf_arg")
    assert [kw["token"] for kind, _, kw in fake_t4 if kind == "download"] == ["hf_env", "hf_arg"]


def test_a_failed_download_is_a_clear_error(fake_t4, monkeypatch):
    import huggingface_hub

    def offline(repo, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(lh.StorageError, match=r"Could not download the base model 'unsloth/.*ConnectionError"):
        lh.load_base("auto")


def test_a_gpu_with_native_bf16_keeps_bf16(fake_t4, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    lh.load_base("mistral-7b")
    kw = fake_t4[1][2]
    assert kw["dtype"] == torch.bfloat16 and kw["config"].quantization_config["bnb_4bit_compute_dtype"] == "bfloat16"


def test_the_official_repository_is_its_own_preset_without_a_silent_fallback(fake_t4, prequantized, monkeypatch):
    """Downloaded (with the token find_token finds), then quantized at load; a refusal is an error, not a fallback
    (tests/test_hub_safety.py: test_a_gated_official_mistral_says_what_to_do)."""
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    model, _ = lh.load_base("mistral-7b-official")
    assert [(kind, repo) for kind, repo, _ in fake_t4][:2] == [("download", base.MISTRAL_NAME),
                                                               ("model", str(prequantized))]
    assert fake_t4[0][2]["token"] == "hf_x"
    kw = fake_t4[1][2]
    assert kw["quantization_config"].bnb_4bit_compute_dtype == torch.float16  # quantized at load, fp16 on a T4
    assert model.name_or_path == base.MISTRAL_NAME


def test_presets_name_both_mistral_builds_and_the_variable_accepts_them(monkeypatch):
    fast, official = base.PRESETS["mistral-7b"], base.PRESETS["mistral-7b-official"]
    assert fast.source == base.MISTRAL_4BIT in fast.about and "no token" in fast.about and not fast.gated
    assert official.source == base.MISTRAL_NAME in official.about and "token" in official.about and official.gated
    monkeypatch.setenv("LORA_HELPERS_BASE", "mistral-7b-official")
    with pytest.raises(lh.BaseModelError, match="'mistral-7b-official' preset.*CUDA GPU"):
        lh.load_base("auto", device="cpu")
