import errno
import shutil
import json
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import lora_helpers as lh
from lora_helpers import merge as M
from lora_helpers import merged_weights as W

import tiny

pytestmark = pytest.mark.filterwarnings("ignore:No tokenizer given")
IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])


def _lora(r=4, targets="all-linear", **kw):
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False, **kw)


@pytest.fixture
def two(tiny_model):
    """The tiny model with two non-zero adapters; "json" is active."""
    torch.manual_seed(1)
    model = get_peft_model(tiny_model, _lora(), adapter_name="json")
    model.add_adapter("coding", _lora(targets=["q_proj", "v_proj"]))
    return model.eval()


@torch.inference_mode()
def logits(model, adapter=None, ids=IDS):
    if adapter is None:
        return model(input_ids=ids).logits
    before = lh.active_adapter(model)
    lh.switch(model, adapter)
    try:
        return model(input_ids=ids).logits
    finally:
        lh.switch(model, before)


def plain(folder):
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def litter(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_merged_folder_is_plain_transformers_and_matches_the_adapter(two, tiny_tokenizer, tmp_path, capsys):
    path = lh.merge_and_save(two, "coding", tmp_path / "merged", tokenizer=tiny_tokenizer)
    assert path == tmp_path / "merged"
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "merge_report.json"} <= names
    assert "adapter_config.json" not in names
    with safe_open(path / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k or "base_layer" in k]
    merged = plain(path)
    assert type(merged).__name__ == "MistralForCausalLM" and not hasattr(merged, "peft_config")
    torch.testing.assert_close(logits(merged), logits(two, "coding"), atol=1e-5, rtol=0)
    assert (logits(merged) - logits(two, "json")).abs().max() > 1e-2  # the adapter made a difference
    report = lh.MergeReport.read(path)
    assert report.adapter == "coding" and report.max_abs_diff < 1e-4 and report.dtype == "float32"
    assert 0 < report.adapter_bytes < report.merged_bytes and report.ratio > 1
    assert "Адаптер «coding» вплавлен в базу" in capsys.readouterr().out and report.verified_by == "logits"
    assert litter(tmp_path) == []


def test_live_model_keeps_every_adapter_unmerged_and_switchable(two, tmp_path):
    before = {a: logits(two, a) for a in ("json", "coding", "base")}
    active = lh.active_adapter(two)
    lh.merge_and_save(two, "coding", tmp_path / "m", verify=True)
    assert lh.active_adapter(two) == active == "json"
    assert set(two.peft_config) == {"json", "coding"}
    assert not any(m.merged for m in M._lora_layers(two.get_base_model()).values())
    for a, expected in before.items():
        assert torch.equal(logits(two, a), expected), a
    assert torch.equal(logits(two), before["json"])


def test_tokenizer_missing_warns(two, tmp_path):
    with pytest.warns(UserWarning, match="no tokenizer"):
        lh.merge_and_save(two, "json", tmp_path / "m")


def test_existing_folder_needs_overwrite_and_is_replaced(two, tmp_path):
    out = tmp_path / "m"
    lh.merge_and_save(two, "coding", out)
    with pytest.raises(lh.AdapterExistsError, match="overwrite=True"):
        lh.merge_and_save(two, "json", out)
    assert lh.MergeReport.read(out).adapter == "coding" and litter(tmp_path) == []
    lh.merge_and_save(two, "json", out, overwrite=True)
    assert lh.MergeReport.read(out).adapter == "json" and litter(tmp_path) == []


def test_overwrite_never_deletes_a_folder_it_did_not_write(two, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "thesis.txt").write_text("my work")
    with pytest.raises(lh.AdapterExistsError, match="not a folder that merge_and_save wrote"):
        lh.merge_and_save(two, "json", out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["thesis.txt"] and litter(tmp_path) == []


def files(folder):
    return {p.name: (p.read_bytes() if p.is_file() else "dir") for p in sorted(Path(folder).rglob("*"))}


def test_overwrite_replaces_only_what_merge_wrote_and_names_the_rest(two, tiny_tokenizer, tmp_path):
    out = tmp_path / "m"
    lh.merge_and_save(two, "coding", out, tokenizer=tiny_tokenizer)
    (out / "notes.txt").write_text("my notes")
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("my log")
    before = files(out)
    with pytest.raises(lh.AdapterExistsError, match=r"(?s)did not write \(notes\.txt, runs/\).*Nothing was changed"):
        lh.merge_and_save(two, "json", out, tokenizer=tiny_tokenizer, overwrite=True)
    assert files(out) == before and litter(tmp_path) == []
    (out / "notes.txt").unlink()
    (out / "runs" / "log.txt").unlink()
    (out / "runs").rmdir()
    (out / ".DS_Store").write_text("finder")  # what a file browser adds is no user's work
    lh.merge_and_save(two, "json", out, tokenizer=tiny_tokenizer, overwrite=True)
    assert lh.MergeReport.read(out).adapter == "json" and litter(tmp_path) == []
    report = lh.MergeReport.read(out)
    assert set(report.files) == {p.name for p in out.iterdir()} - {M.REPORT_NAME}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(report.files)


def test_a_report_without_a_file_list_allows_only_what_merge_writes(two, tiny_tokenizer, tmp_path):
    """Reports written before they listed their files: only the names merge_and_save writes may be replaced."""
    out = tmp_path / "m"
    lh.merge_and_save(two, "coding", out, tokenizer=tiny_tokenizer)
    report = json.loads((out / M.REPORT_NAME).read_text())
    del report["files"]
    (out / M.REPORT_NAME).write_text(json.dumps(report))
    (out / "train.py").write_text("my code")
    with pytest.raises(lh.AdapterExistsError, match="train.py"):
        lh.merge_and_save(two, "json", out, overwrite=True)
    assert (out / "train.py").read_text() == "my code"
    (out / "train.py").unlink()
    lh.merge_and_save(two, "json", out, overwrite=True)
    assert lh.MergeReport.read(out).adapter == "json"
    (out / M.REPORT_NAME).write_text("{broken")
    with pytest.raises(lh.AdapterExistsError, match="unreadable"):
        lh.merge_and_save(two, "json", out, overwrite=True)


def test_empty_folder_is_fine_and_a_file_is_refused(two, tmp_path):
    (tmp_path / "empty").mkdir()
    assert (lh.merge_and_save(two, "json", tmp_path / "empty") / "config.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(lh.AdapterExistsError, match="is a file"):
        lh.merge_and_save(two, "json", tmp_path / "file", overwrite=True)


def test_no_space_mid_save_keeps_the_previous_folder(two, tmp_path, monkeypatch):
    out = tmp_path / "m"
    lh.merge_and_save(two, "json", out)
    previous = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(lh.MergeError, match="No space"):
        lh.merge_and_save(two, "coding", out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert litter(tmp_path) == []
    assert lh.active_adapter(two) == "json"


def test_a_full_disk_while_the_tokenizer_saves_is_a_storage_error(two, tiny_tokenizer, tmp_path, monkeypatch):
    """tokenizers raises a plain Exception for a full disk; it must not escape as one, nor leave half a folder."""
    out = tmp_path / "m"
    lh.merge_and_save(two, "json", out, tokenizer=tiny_tokenizer)
    previous = files(out)

    def full(folder, *a, **kw):
        (Path(folder) / "tokenizer.json").write_text('{"half')
        raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(tiny_tokenizer, "save_pretrained", full)
    with pytest.raises(lh.StorageError, match=r"(?s)Not enough disk space to write the merged model.*needs about "
                                              r".*[KMG]iB.*free.*another out_dir") as e:
        lh.merge_and_save(two, "coding", out, tokenizer=tiny_tokenizer, overwrite=True)
    assert isinstance(e.value, lh.MergeError) and isinstance(e.value, OSError)
    assert files(out) == previous and litter(tmp_path) == []
    with pytest.raises(lh.StorageError, match="Not enough disk space"):
        lh.merge_and_save(two, "coding", tmp_path / "new", tokenizer=tiny_tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("case", ["name_300", "name_240", "deep", "loop", "inside_loop"])
def test_paths_the_file_system_cannot_hold_are_refused_before_writing(two, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    os.symlink("loop", "loop")
    out = {"name_300": "m" * 300, "name_240": "m" * 240, "deep": "/".join(["d" * 200] * 30),
           "loop": "loop", "inside_loop": "loop/m"}[case]
    words = "link loop" if "loop" in case else "too long"
    for overwrite in (False, True):
        with pytest.raises(lh.StorageError, match=words):
            lh.merge_and_save(two, "json", out, overwrite=overwrite)
    assert os.listdir(tmp_path) == ["loop"]


def test_mismatch_raises_merge_error_and_writes_nothing(two, tmp_path, monkeypatch):
    wrong = M._adapter_logits
    monkeypatch.setattr(M, "_adapter_logits", lambda model, name, ids: wrong(model, "json", ids))
    with pytest.raises(lh.MergeError, match="does not match 'coding'"):
        lh.merge_and_save(two, "coding", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "bfloat16"])
def test_half_precision_save(two, tmp_path, dtype):
    path = lh.merge_and_save(two, "coding", tmp_path / "m", dtype=dtype)
    merged = plain(path)
    expected = M._as_dtype(dtype)
    assert merged.dtype == expected and json.loads((path / "config.json").read_text())["dtype"] == str(expected)[6:]
    assert lh.MergeReport.read(path).max_abs_diff <= M.TOLERANCE[expected]
    assert next(two.parameters()).dtype == torch.float32  # the live model is untouched


def test_tied_embeddings_stay_tied_and_large_models_are_sharded(tiny_tokenizer, tmp_path):
    base = tiny.make_model(tiny_tokenizer, tie_word_embeddings=True)
    model = get_peft_model(base, _lora(), adapter_name="json").eval()
    path = lh.merge_and_save(model, "json", tmp_path / "m", dtype=torch.float16, max_shard_size="20KB")
    shards = sorted(path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (path / "model.safetensors.index.json").is_file()
    keys = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # saved once
    merged = plain(path)
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    assert lh.MergeReport.read(path).merged_bytes == sum(p.stat().st_size for p in shards)


def test_dora_adapter_goes_through_pefts_own_merge(tiny_model, tmp_path):
    model = get_peft_model(tiny_model, _lora(use_dora=True), adapter_name="dora").eval()
    path = lh.merge_and_save(model, "dora", tmp_path / "m")
    torch.testing.assert_close(logits(plain(path)), logits(model), atol=1e-5, rtol=0)
    assert not any(m.merged for m in M._lora_layers(model.get_base_model()).values())


def test_bad_input(two, tiny_model, tmp_path):
    with pytest.raises(lh.AdapterNotFoundError, match="'support' is loaded; loaded: json, coding\\b"):
        lh.merge_and_save(two, "support", tmp_path / "m")
    with pytest.raises(lh.AdapterError, match="no adapters loaded"):
        lh.merge_and_save(tiny_model, "json", tmp_path / "m")
    with pytest.raises(lh.AdapterError, match="nothing to merge"):
        lh.merge_and_save(two, "base", tmp_path / "m")
    with pytest.raises(lh.AdapterError, match="current folder"):
        lh.merge_and_save(two, "json", ".", overwrite=True)
    with pytest.raises(lh.AdapterError, match="dtype"):
        lh.merge_and_save(two, "json", tmp_path / "m", dtype="int8")
    two.merge_adapter(["json"])
    with pytest.raises(lh.MergeError, match="unmerge_adapter"):
        lh.merge_and_save(two, "json", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_non_lora_adapter_is_refused(tiny_model, tmp_path):
    from peft import IA3Config
    model = get_peft_model(tiny_model, IA3Config(target_modules=["q_proj"], feedforward_modules=[]),
                           adapter_name="ia3")
    with pytest.raises(lh.AdapterError, match="only LoRA"):
        lh.merge_and_save(model, "ia3", tmp_path / "m")
    with pytest.raises(lh.AdapterError, match="LoRA adapters only"):
        lh.combine_adapters(model, {"ia3": 1.0}, "mix")


# ----------------------------------------------------------------------------- the same as PEFT
def _peft_merged_state(model, name):
    """PEFT's own answer: a copy switched to ``name`` and merged with merge_and_unload."""
    import copy
    twin = copy.deepcopy(model)
    twin.set_adapter(name)
    return twin.merge_and_unload(adapter_names=[name]).state_dict()


def _saved_state(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


CONFIGS = {
    "all-linear": dict(targets="all-linear"),
    "dora": dict(targets=["q_proj", "v_proj"], use_dora=True),
    "rslora": dict(targets=["q_proj", "o_proj"], use_rslora=True),
    "modules_to_save": dict(targets=["q_proj"], modules_to_save=["lm_head"]),
    "trainable_tokens": dict(targets=["v_proj"], trainable_token_indices={"embed_tokens": [3, 5, 8]}),
}


@pytest.mark.parametrize("kind", CONFIGS)
def test_whole_state_equals_pefts_merge_whatever_adapter_is_active(tiny_tokenizer, tmp_path, kind):
    base = tiny.make_model(tiny_tokenizer)
    torch.manual_seed(3)
    model = get_peft_model(base, _lora(**CONFIGS[kind]), adapter_name="want")
    model.add_adapter("other", _lora(**CONFIGS[kind]))
    with torch.no_grad():  # make every trainable piece of both adapters differ from the base
        for n, p in model.named_parameters():
            if "trainable_tokens_delta" in n or "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.set_adapter("other")
    model.eval()
    path = lh.merge_and_save(model, "want", tmp_path / "m", verify="logits")
    expected, saved = _peft_merged_state(model, "want"), _saved_state(path)
    assert set(saved) == set(expected)
    for k in expected:
        torch.testing.assert_close(saved[k], expected[k], atol=1e-6, rtol=1e-6, msg=k)
    assert model.active_adapter == "other"
    torch.testing.assert_close(logits(plain(path)), logits(model, "want"), atol=1e-5, rtol=0)


def test_adapter_on_tied_lm_head_unties_the_merged_config(tiny_tokenizer, tmp_path):
    base = tiny.make_model(tiny_tokenizer, tie_word_embeddings=True)
    model = get_peft_model(base, _lora(targets=["q_proj", "lm_head"]), adapter_name="json").eval()
    path = lh.merge_and_save(model, "json", tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(_saved_state(path))
    merged = plain(path)  # a loader that honours the flag must not re-tie and lose the merge
    assert merged.lm_head.weight.data_ptr() != merged.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits(merged), logits(model, "json"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tied_lm_head_compared_as_saved(tiny_tokenizer, tmp_path, dtype):
    """An lm_head adapter that changes nothing keeps the tie; one that does unties it, in any saved dtype."""
    base = tiny.make_model(tiny_tokenizer, tie_word_embeddings=True)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]), adapter_name="zero")
    model.add_adapter("real", _lora(targets=["q_proj", "lm_head"]))
    for name, tied in (("zero", True), ("real", False)):
        path = lh.merge_and_save(model.eval(), name, tmp_path / name, dtype=dtype, verify="tensors")
        assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is tied, name
        assert ("lm_head.weight" in _saved_state(path)) is not tied, name


def test_no_copy_of_the_whole_model_is_made(two, tmp_path, monkeypatch):
    import copy

    from transformers import PreTrainedModel
    real = copy.deepcopy

    def guarded(obj, *a, **kw):
        assert not isinstance(obj, (PreTrainedModel, type(two))), "merge_and_save copied the whole model"
        return real(obj, *a, **kw)

    monkeypatch.setattr(copy, "deepcopy", guarded)
    monkeypatch.setattr(W.copy, "deepcopy", guarded)
    lh.merge_and_save(two, "coding", tmp_path / "m", verify="tensors")


def test_tensor_check_when_the_model_does_not_fit(two, tmp_path, monkeypatch):
    monkeypatch.setattr(M, "free_ram", lambda: 1)  # far too little to reload the merged model
    path = lh.merge_and_save(two, "coding", tmp_path / "m")
    report = lh.MergeReport.read(path)
    assert report.verified_by == "tensors" and report.tensors_checked >= 2 and report.max_abs_diff is None
    torch.testing.assert_close(logits(plain(path)), logits(two, "coding"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("verify", ["logits", "tensors"])
def test_a_wrong_merge_is_caught_and_nothing_is_written(two, tmp_path, monkeypatch, verify):
    real = W._lora_tensors

    def off_by_one(layer, prefix, name, keys, path):
        for key, t, changed in real(layer, prefix, name, keys, path):
            yield key, (t + 1 if key.endswith("q_proj.weight") else t), changed

    monkeypatch.setattr(W, "_lora_tensors", off_by_one)
    with pytest.raises(lh.MergeError, match="does not (match|equal)"):
        lh.merge_and_save(two, "coding", tmp_path / "m", verify=verify)
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_the_write_keeps_the_previous_folder(two, tmp_path, monkeypatch):
    out = tmp_path / "m"
    lh.merge_and_save(two, "json", out)
    previous = {p.name: p.read_bytes() for p in out.iterdir()}
    from safetensors.torch import save_file
    calls = []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return save_file(*a, **kw)

    monkeypatch.setattr("safetensors.torch.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lh.merge_and_save(two, "coding", out, overwrite=True, max_shard_size=20_000)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous and litter(tmp_path) == []


# ----------------------------------------------------------------------------- 4-bit base
@pytest.fixture
def four_bit(tiny_tokenizer, tmp_path):
    """The tiny Mistral quantized to nf4 by bitsandbytes on the CPU, with two adapters ("json" active)."""
    q = tiny.make_4bit(tiny_tokenizer, tmp_path / "tiny")
    torch.manual_seed(1)
    model = get_peft_model(q, _lora(), adapter_name="json")
    model.add_adapter("coding", _lora(targets=["q_proj", "v_proj"]))
    return model.eval()


@pytest.mark.parametrize("verify", ["logits", "tensors"])
def test_4bit_base_is_dequantized_tensor_by_tensor(four_bit, tmp_path, verify):
    from lora_helpers.base import is_quantized
    assert is_quantized(four_bit)
    path = lh.merge_and_save(four_bit, "coding", tmp_path / "m", verify=verify)
    report = lh.MergeReport.read(path)
    assert report.quantized_base and report.dtype == "float32" and report.verified_by == verify
    merged = plain(path)
    assert not is_quantized(merged) and "quantization_config" not in json.loads((path / "config.json").read_text())
    # bitsandbytes computes in bf16 on the CPU: the merged fp32 model is close to the unmerged 4-bit one,
    # much closer than the 4-bit model with another adapter
    gap = (logits(merged) - logits(four_bit, "coding")).abs().max()
    assert gap <= M.TOLERANCE_4BIT and gap < (logits(four_bit, "json") - logits(four_bit, "coding")).abs().max() / 3
    assert lh.active_adapter(four_bit) == "json"


def test_quantization_detection(tiny_model):
    from lora_helpers.base import is_quantized
    assert not is_quantized(tiny_model)
    tiny_model.quantization_method = "bitsandbytes"
    assert is_quantized(tiny_model)


# ----------------------------------------------------------------------------- combine_adapters
def test_combine_linear_adds_a_switchable_adapter(two, tmp_path):
    active, base = lh.active_adapter(two), logits(two, "base")
    lh.combine_adapters(two, {"json": 0.5, "coding": 0.5}, "mix")
    assert set(two.peft_config) == {"json", "coding", "mix"} and lh.active_adapter(two) == active
    mixed = logits(two, "mix")
    assert not torch.equal(mixed, base) and not torch.equal(mixed, logits(two, "json"))
    lh.switch(two, "mix")
    assert torch.equal(logits(two), mixed)
    lh.switch(two, "json")
    path = lh.merge_and_save(two, "mix", tmp_path / "m")
    torch.testing.assert_close(logits(plain(path)), mixed, atol=1e-5, rtol=0)


def test_combine_cat_is_exact_and_accepts_different_ranks(tiny_model):
    torch.manual_seed(2)
    model = get_peft_model(tiny_model, _lora(r=4, targets=["q_proj"]), adapter_name="json")
    model.add_adapter("coding", _lora(r=8, targets=["q_proj"]))
    with pytest.raises(lh.MergeError, match="same rank.*method='cat'"):
        lh.combine_adapters(model, {"json": 1.0, "coding": 1.0}, "mix")
    assert "mix" not in model.peft_config
    lh.combine_adapters(model, {"json": 0.7, "coding": -0.3}, "mix", method="cat")
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    expected = 0.7 * layer.get_delta_weight("json") - 0.3 * layer.get_delta_weight("coding")
    torch.testing.assert_close(layer.get_delta_weight("mix"), expected)
    assert model.peft_config["mix"].r == 12


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_combine_ties_needs_density(two, method):
    with pytest.raises(lh.AdapterError, match="density"):
        lh.combine_adapters(two, {"json": 1.0, "coding": 1.0}, "mix", method=method)
    torch.manual_seed(0)
    lh.combine_adapters(two, {"json": 1.0, "coding": 1.0}, "mix", method=method, density=0.5)
    assert "mix" in two.peft_config and not torch.equal(logits(two, "mix"), logits(two, "base"))


def test_combine_bad_input(two, tiny_model):
    with pytest.raises(lh.AdapterExistsError, match="already has an adapter named 'coding'.*Choose another new_name"):
        lh.combine_adapters(two, {"json": 1.0}, "coding")
    with pytest.raises(lh.AdapterNotFoundError, match="support"):
        lh.combine_adapters(two, {"json": 1.0, "support": 1.0}, "mix")
    with pytest.raises(lh.AdapterError, match="non-empty dict"):
        lh.combine_adapters(two, {}, "mix")
    with pytest.raises(lh.AdapterError, match="method="):
        lh.combine_adapters(two, {"json": 1.0}, "mix", method="svd")
    with pytest.raises(lh.AdapterError, match="density applies only"):
        lh.combine_adapters(two, {"json": 1.0}, "mix", density=0.5)
    with pytest.raises(lh.AdapterError, match="numbers"):
        lh.combine_adapters(two, {"json": "1"}, "mix")
    with pytest.raises(lh.AdapterError, match="PeftModel"):
        lh.combine_adapters(tiny_model, {"json": 1.0}, "mix")
    for bad in ("a.b", "a/b", "base", "", " "):  # "a.b" used to leave a ghost adapter that ran as the base
        with pytest.raises(lh.AdapterError, match="cannot name the combined adapter"):
            lh.combine_adapters(two, {"json": 1.0}, bad)
    assert set(two.peft_config) == {"json", "coding"}


# ----------------------------------------------------------------------------- the real base
PROMPTS = ["Верни JSON с полями name и age для Ивана, 30 лет.",
           "Write a Python function that checks a palindrome.", "Мой заказ не пришёл, что делать?"]


@pytest.mark.real
def test_embedded_merged_replies_equal_the_unmerged_adapter(embedded_fresh, tmp_path):
    # A random non-zero LoRA on every linear layer of the real base, scaled so it changes the replies
    # without wrecking them.
    model, tok = embedded_fresh
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, cfg, adapter_name="rand").eval()
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data *= 0.2
    lh.switch(peft_model, "base")
    adapter_replies = lh.generate(peft_model, tok, PROMPTS, adapter="rand", max_new_tokens=16)
    assert adapter_replies != lh.generate(peft_model, tok, PROMPTS, max_new_tokens=16)
    path = lh.merge_and_save(peft_model, "rand", tmp_path / "m", tokenizer=tok)
    assert lh.active_adapter(peft_model) == "base"
    merged, merged_tok = lh.load_base(str(path))
    assert type(merged).__name__ == "LlamaForCausalLM" and not hasattr(merged, "peft_config")
    assert lh.generate(merged, merged_tok, PROMPTS, max_new_tokens=16) == adapter_replies


@pytest.mark.parametrize("shards,words", [(1, "1 файл весов"), (3, "3 файла весов"), (5, "5 файлов весов"),
                                          (11, "11 файлов весов"), (22, "22 файла весов")])
def test_summary_says_the_number_of_files_in_russian(shards, words):
    report = lh.MergeReport(path="out/m", adapter="json", base="b", dtype="float32", max_abs_diff=1e-4,
                            tolerance=1e-3, adapter_bytes=2**20, merged_bytes=50 * 2**20, seconds=1.0,
                            verify_seconds=0.5, quantized_base=False, verified_by="logits", shards=shards)
    assert f"(float32, {words})" in report.summary() and "×50" in report.summary()


# ---------------------------------------------------------------- probe findings: tolerance, disk, odd paths

@pytest.mark.parametrize("tolerance", ["x", True, -1.0, float("nan"), [1]])
def test_a_tolerance_that_is_not_a_number_is_refused_before_writing(two, tmp_path, tolerance):
    with pytest.raises(lh.AdapterError, match=r"tolerance=.*non-negative number.*e\.g\. tolerance=") as e:
        lh.merge_and_save(two, "json", tmp_path / "m", tolerance=tolerance)
    assert isinstance(e.value, ValueError) and list(tmp_path.iterdir()) == []


def test_the_disk_check_says_a_size_that_means_something(two, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**6, 10**6 - 1000, 1000))
    need = M._merged_bytes(two.get_base_model(), torch.float32)
    assert need < 2**30 / 100  # "~0.00 GiB" before
    with pytest.raises(lh.StorageError, match=rf"(?s)Not enough disk space.*needs about {need * 1.05 / 2**10:.0f} KiB.*"
                                              r"1000 bytes are free") as e:
        lh.merge_and_save(two, "json", tmp_path / "m")
    assert isinstance(e.value, lh.MergeError) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["OSError", "plain"])
def test_a_file_too_large_for_the_file_system_is_a_storage_error(two, tmp_path, monkeypatch, how):
    """EFBIG: FAT32 (a USB stick) takes at most 4 GiB per file, and `ulimit -f` can set a smaller limit."""
    def too_big(tensors, filename, metadata=None):
        if how == "OSError":
            raise OSError(errno.EFBIG, "File too large")
        raise Exception("File too large (os error 27)")

    monkeypatch.setattr("safetensors.torch.save_file", too_big)
    with pytest.raises(lh.StorageError, match=r"(?s)too large for the file system.*max_shard_size") as e:
        lh.merge_and_save(two, "json", tmp_path / "m")
    assert isinstance(e.value, lh.MergeError) and litter(tmp_path) == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["~nouser", "nul", "part_300"])
def test_paths_that_cannot_name_a_folder_are_refused_clearly(two, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    out, words = {"~nouser": ("~no_such_user_here/m", "home folder of 'no_such_user_here'"),
                  "nul": ("m\0x", "NUL"), "part_300": ("p" * 300 + "/m", "too long")}[case]
    with pytest.raises(lh.StorageError, match=words):
        lh.merge_and_save(two, "json", out)
    with pytest.raises(lh.StorageError, match=words):
        lh.resolve_adapter(out)
    assert os.listdir(tmp_path) == []


def test_an_out_dir_that_is_not_a_path_is_refused(two, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in (None, 5, b"m"):
        with pytest.raises(lh.StorageError, match="Expected a folder path"):
            lh.merge_and_save(two, "json", bad)
    assert os.listdir(tmp_path) == []
