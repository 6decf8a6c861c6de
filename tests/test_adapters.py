"""load_adapters / switch / active_adapter / list_adapters on the tiny random Mistral."""
import copy
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoHaConfig, LoraConfig, PeftModel, get_peft_model

import lora_helpers as lh
import tiny
from lora_helpers import adapters as A
from lora_helpers import checks
from lora_helpers.errors import (
    AdapterError, AdapterExistsError, AdapterFileError, AdapterNotFoundError, BaseMismatchError)


X = torch.tensor([[5, 17, 42, 8, 99, 3], [7, 7, 120, 64, 1, 2]])


def make_adapter(folder, tok, targets, seed, r=4, zero=False, name_or_path=None, **model_kw):
    """Save a PEFT LoRA adapter (non-zero lora_B unless zero=True) for the tiny model to ``folder``."""
    base = tiny.make_model(tok, **model_kw)
    if name_or_path:
        base.name_or_path = base.config._name_or_path = name_or_path
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=zero)
    get_peft_model(base, cfg).save_pretrained(str(folder))
    return Path(folder)


@pytest.fixture(scope="module")
def ads(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("adapters")
    t = tiny_tokenizer
    return {
        "json": make_adapter(root / "json", t, ["q_proj", "v_proj"], 1),
        "coding": make_adapter(root / "coding", t, ["q_proj", "o_proj", "gate_proj"], 2),
        "support": make_adapter(root / "support", t, ["down_proj", "k_proj"], 3, r=2),
        "zero": make_adapter(root / "zero", t, ["q_proj"], 4, zero=True),
        "wide": make_adapter(root / "wide", t, ["q_proj"], 5, name_or_path="other/wide-mistral",
                             hidden_size=48, num_attention_heads=4),
        "renamed": make_adapter(root / "renamed", t, ["q_proj"], 6, name_or_path="someone/another-base"),
    }


def logits(model):
    with torch.no_grad():
        return model(X).logits.clone()


def fingerprint(model):
    return (list(model.state_dict().keys()), A.active_adapter(model), logits(model),
            {n: p.requires_grad for n, p in model.named_parameters()},
            {k: t.clone() for k, t in model.state_dict().items()})


def assert_same(model, before):
    keys, active, out, grads, tensors = fingerprint(model)
    assert keys == before[0]
    assert active == before[1]
    assert torch.equal(out, before[2])
    assert grads == before[3]
    assert all(torch.equal(t, before[4][k]) for k, t in tensors.items()), "a tensor changed"


def peft_reference(tok, ads, names):
    """The same adapters loaded with plain PEFT calls."""
    ref = PeftModel.from_pretrained(tiny.make_model(tok), str(ads[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        ref.load_adapter(str(ads[n]), adapter_name=n)
    return ref


@pytest.fixture
def loaded(tiny_model, ads):
    return lh.load_adapters(tiny_model, {"json": ads["json"], "coding": str(ads["coding"])})


def layer_states(model):
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [(n, m.active_adapters, m.disable_adapters) for n, m in model.named_modules()
            if isinstance(m, BaseTunerLayer)]


# ---------------------------------------------------------------- load

def test_load_into_plain_base_matches_plain_peft(tiny_model, tiny_tokenizer, ads):
    plain = logits(tiny_model)
    model = lh.load_adapters(tiny_model, {"json": ads["json"], "coding": ads["coding"]})
    ref = peft_reference(tiny_tokenizer, ads, ["json", "coding"])
    assert isinstance(model, PeftModel)
    assert list(model.peft_config) == ["json", "coding"]
    assert model.active_adapter == "json" and lh.active_adapter(model) == "json"
    assert torch.equal(logits(model), logits(ref))
    assert not torch.allclose(logits(model), plain)
    ref.set_adapter("coding")
    lh.switch(model, "coding")
    assert torch.equal(logits(model), logits(ref))
    assert all(not p.requires_grad for p in model.parameters())


def test_load_into_peft_model_keeps_active(loaded, ads, tiny_tokenizer):
    lh.switch(loaded, "coding")
    out = lh.load_adapters(loaded, {"support": ads["support"]})
    assert out is loaded
    assert list(loaded.peft_config) == ["json", "coding", "support"]
    assert lh.active_adapter(loaded) == "coding"
    ref = peft_reference(tiny_tokenizer, ads, ["json", "coding", "support"])
    for name in ("support", "json", "coding"):
        ref.set_adapter(name)
        lh.switch(loaded, name)
        assert torch.equal(logits(loaded), logits(ref)), name


def test_load_keeps_base_mode(loaded, ads, tiny_tokenizer):
    lh.switch(loaded, "base")
    plain = logits(tiny.make_model(tiny_tokenizer))
    lh.load_adapters(loaded, {"support": ads["support"]})  # c wraps new modules: they must be off too
    assert lh.active_adapter(loaded) == "base"
    assert torch.equal(logits(loaded), plain)


# ---------------------------------------------------------------- switch

def test_switch_matches_set_adapter(loaded, tiny_model, ads, tiny_tokenizer):
    ref = peft_reference(tiny_tokenizer, ads, ["json", "coding"])
    for name in ("coding", "json", "coding", "coding", "json"):
        ref.set_adapter(name)
        lh.switch(loaded, name)
        assert loaded.active_adapter == ref.active_adapter == name
        assert loaded.base_model.active_adapter == ref.base_model.active_adapter
        assert layer_states(loaded) == layer_states(ref)
        assert torch.equal(logits(loaded), logits(ref))
        assert loaded.get_model_status().active_adapters == ref.get_model_status().active_adapters
    # adapter weights stay frozen, like set_adapter(name, inference_mode=True)
    ref.set_adapter("json", inference_mode=True)
    assert ({n: p.requires_grad for n, p in loaded.named_parameters()}
            == {n: p.requires_grad for n, p in ref.named_parameters()})


def test_switch_base_runs_plain_model(loaded, tiny_tokenizer):
    plain = logits(tiny.make_model(tiny_tokenizer))
    with_a = logits(loaded)
    lh.switch(loaded, "base")
    assert lh.active_adapter(loaded) == "base"
    assert torch.equal(logits(loaded), plain)
    assert loaded.get_model_status().enabled is False  # PEFT's disable_adapter_layers(), as PEFT reports it
    lh.switch(loaded, "json")
    assert lh.active_adapter(loaded) == "json"
    assert loaded.get_model_status().enabled is True
    assert torch.equal(logits(loaded), with_a)


def test_active_adapter_follows_peft_calls(loaded):
    loaded.set_adapter("coding")
    assert lh.active_adapter(loaded) == "coding"
    with loaded.disable_adapter():
        assert lh.active_adapter(loaded) == "base"
    assert lh.active_adapter(loaded) == "coding"
    loaded.base_model.disable_adapter_layers()
    assert lh.active_adapter(loaded) == "base"


def test_peft_calls_still_work_after_switch(loaded, ads, tiny_tokenizer):
    ref = peft_reference(tiny_tokenizer, ads, ["json", "coding"])
    lh.switch(loaded, "base")
    lh.switch(loaded, "coding")
    loaded.set_adapter("json")  # PEFT's own switch after ours
    ref.set_adapter("json")
    assert torch.equal(logits(loaded), logits(ref))
    # mixed batch: row 0 with a, row 1 with b, equals the single-adapter rows
    lh.switch(loaded, "json")
    with torch.no_grad():
        mixed = loaded(X, adapter_names=["json", "coding"]).logits
    lh.switch(loaded, "coding")
    assert torch.allclose(mixed[1], logits(loaded)[1], atol=1e-6)
    lh.switch(loaded, "json")
    assert torch.allclose(mixed[0], logits(loaded)[0], atol=1e-6)
    gen = loaded.generate(input_ids=X[:1], max_new_tokens=3, do_sample=False, adapter_names=["coding"],
                          pad_token_id=tiny_tokenizer.pad_token_id)
    lh.switch(loaded, "coding")
    assert torch.equal(gen, loaded.generate(input_ids=X[:1], max_new_tokens=3, do_sample=False,
                                            pad_token_id=tiny_tokenizer.pad_token_id))
    # add_weighted_adapter and merge/unmerge keep working
    loaded.add_weighted_adapter(["json", "coding"], [0.5, 0.5], "mix", combination_type="linear")
    lh.switch(loaded, "mix")
    ref.add_weighted_adapter(["json", "coding"], [0.5, 0.5], "mix", combination_type="linear")
    ref.set_adapter("mix")
    assert torch.equal(logits(loaded), logits(ref))
    before = logits(loaded)
    loaded.merge_adapter()
    assert torch.allclose(logits(loaded), before, atol=1e-5)
    with pytest.warns(UserWarning, match="merged"):
        lh.switch(loaded, "json")  # PEFT unmerges first, as set_adapter does
    ref.set_adapter("json")
    assert torch.allclose(logits(loaded), logits(ref), atol=1e-5)


def test_switch_follows_adapters_added_and_deleted_through_peft(loaded, ads, tiny_tokenizer):
    lh.switch(loaded, "coding")
    loaded.load_adapter(str(ads["support"]), adapter_name="support")  # plain PEFT, new wrapped modules
    lh.switch(loaded, "support")
    ref = peft_reference(tiny_tokenizer, ads, ["json", "coding", "support"])
    ref.set_adapter("support")
    assert torch.equal(logits(loaded), logits(ref))
    assert layer_states(loaded) == layer_states(ref)
    loaded.delete_adapter("support")
    with pytest.raises(AdapterNotFoundError):
        lh.switch(loaded, "support")
    # same name, last position, different modules
    loaded.delete_adapter("coding")
    loaded.load_adapter(str(ads["support"]), adapter_name="coding")
    lh.switch(loaded, "coding")
    assert torch.equal(logits(loaded), logits(ref))


def test_switch_unknown_name(loaded):
    before = fingerprint(loaded)
    with pytest.raises(AdapterError, match=r"'nope'.*loaded: json, coding"):
        lh.switch(loaded, "nope")
    assert_same(loaded, before)


@pytest.mark.parametrize("bad", [3, [], ["json", "nope"], ["json", "base"]])
def test_switch_bad_names(loaded, bad):
    before = fingerprint(loaded)
    with pytest.raises(AdapterNotFoundError, match="loaded: json, coding"):
        lh.switch(loaded, bad)
    assert_same(loaded, before)


def test_several_active_round_trip(loaded, ads):
    loaded.base_model.set_adapter(["json", "coding"])  # PEFT can run two at once
    assert lh.active_adapter(loaded) == ["json", "coding"]
    both = logits(loaded)
    lh.switch(loaded, "json")
    assert not torch.equal(logits(loaded), both)
    lh.switch(loaded, ["json", "coding"])  # what a caller restores after a temporary switch
    assert torch.equal(logits(loaded), both)
    lh.load_adapters(loaded, {"support": ads["support"]})
    assert lh.active_adapter(loaded) == ["json", "coding"]
    assert torch.equal(logits(loaded), both)


def test_first_new_adapter_runs_when_none_did(loaded, ads, tiny_tokenizer):
    loaded.delete_adapter("json")
    loaded.delete_adapter("coding")  # PEFT leaves no active adapter
    assert lh.active_adapter(loaded) == "base"
    lh.load_adapters(loaded, {"support": ads["support"]})
    assert lh.active_adapter(loaded) == "support"
    assert torch.equal(logits(loaded), logits(peft_reference(tiny_tokenizer, ads, ["support"])))
    lh.load_adapters(loaded, {"support": ads["json"]}, replace=True)  # replacing the only adapter
    assert list(loaded.peft_config) == ["support"] and lh.active_adapter(loaded) == "support"
    assert torch.equal(logits(loaded), logits(peft_reference(tiny_tokenizer, ads, ["json"])))


def test_switch_on_plain_model(tiny_model):
    lh.switch(tiny_model, "base")
    assert lh.active_adapter(tiny_model) == "base"
    with pytest.raises(AdapterNotFoundError, match="no adapters loaded"):
        lh.switch(tiny_model, "json")


# ---------------------------------------------------------------- bad input leaves the model intact

def corrupt(tmp_path, ads, how):
    d = tmp_path / how
    shutil.copytree(ads["json"], d)
    w = d / "adapter_model.safetensors"
    data = w.read_bytes()
    if how == "truncated":
        w.write_bytes(data[: len(data) - 100])
    elif how == "garbage":
        w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[24:])
    elif how == "tiny":
        w.write_bytes(b"abc")
    elif how == "badjson":
        (d / "adapter_config.json").write_text("{broken")
    elif how == "noweights":
        w.unlink()
    elif how == "noconfig":
        (d / "adapter_config.json").unlink()
    elif how == "pickle":
        from safetensors.torch import load_file
        torch.save(load_file(w), d / "adapter_model.bin")
        w.unlink()
    elif how == "badtarget":
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["target_modules"] = ["q_proj", "c_attn"]
        (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("how, error, words", [
    ("missing", AdapterNotFoundError, "No adapter folder"),
    ("noconfig", AdapterNotFoundError, "adapter_config.json"),
    ("noweights", AdapterNotFoundError, "weights are missing"),
    ("truncated", AdapterFileError, "truncated"),
    ("garbage", AdapterFileError, "corrupt"),
    ("tiny", AdapterFileError, "too short"),
    ("badjson", AdapterFileError, "not valid JSON"),
    ("pickle", AdapterFileError, "allow_pickle=True"),
    ("badtarget", BaseMismatchError, "c_attn"),
])
@pytest.mark.parametrize("start", ["plain", "peft"])
def test_bad_adapter_leaves_model_intact(tmp_path, tiny_model, ads, how, error, words, start):
    model = tiny_model if start == "plain" else lh.load_adapters(tiny_model, {"coding": ads["coding"]})
    source = tmp_path / "nowhere" if how == "missing" else corrupt(tmp_path, ads, how)
    before = fingerprint(model)
    with pytest.raises(error, match=words):
        lh.load_adapters(model, {"support": ads["support"], "x": source})  # c is fine, but nothing may load
    assert_same(model, before)
    assert not isinstance(model, PeftModel) or list(model.peft_config) == ["coding"]


def test_pickle_allowed_on_request(tmp_path, tiny_model, ads, tiny_tokenizer):
    model = lh.load_adapters(tiny_model, {"json": corrupt(tmp_path, ads, "pickle")}, allow_pickle=True)
    assert torch.equal(logits(model), logits(peft_reference(tiny_tokenizer, ads, ["json"])))


def test_other_base_shapes(tiny_model, ads):
    before = fingerprint(tiny_model)
    with pytest.raises(BaseMismatchError) as e:
        lh.load_adapters(tiny_model, {"wide": ads["wide"]})
    msg = str(e.value)
    assert "other/wide-mistral" in msg and "tests/tiny-mistral" in msg
    assert "q_proj.lora_A.weight" in msg and "[4, 48]" in msg and "[4, 32]" in msg
    assert_same(tiny_model, before)


def test_other_base_name(tiny_model, ads):
    before = fingerprint(tiny_model)
    with pytest.raises(BaseMismatchError, match="someone/another-base.*tests/tiny-mistral"):
        lh.load_adapters(tiny_model, {"renamed": ads["renamed"]})
    assert_same(tiny_model, before)
    model = lh.load_adapters(tiny_model, {"renamed": ads["renamed"]}, check_base=False)
    assert lh.active_adapter(model) == "renamed"


def test_base_name_tolerates_quantized_copies():
    assert checks._base_key("mistralai/Mistral-7B-Instruct-v0.3") == checks._base_key(
        "unsloth/mistral-7b-instruct-v0.3-bnb-4bit")
    assert checks._base_key("HuggingFaceTB/SmolLM2-135M-Instruct") != checks._base_key("HuggingFaceTB/SmolLM2-135M")


def test_duplicate_name_and_replace(loaded, ads, tiny_tokenizer):
    before = fingerprint(loaded)
    with pytest.raises(AdapterExistsError, match="replace=True"):
        lh.load_adapters(loaded, {"json": ads["support"]})
    assert_same(loaded, before)
    lh.load_adapters(loaded, {"json": ads["support"]}, replace=True)
    assert lh.active_adapter(loaded) == "json"
    ref = peft_reference(tiny_tokenizer, ads, ["support"])
    assert torch.equal(logits(loaded), logits(ref))


@pytest.mark.parametrize("bad", ["base", "", "my.adapter", 3, "ra"])
def test_bad_names(tiny_model, ads, bad):
    with pytest.raises(AdapterError, match="cannot name an adapter"):
        lh.load_adapters(tiny_model, {bad: ads["json"]})
    assert not hasattr(tiny_model, "peft_config")


@pytest.mark.parametrize("bad", [None, {}, "adapters/lora_json", [("json", "x")]])
def test_bad_mapping(tiny_model, bad):
    with pytest.raises(AdapterError, match=r"dict \{name: source\}"):
        lh.load_adapters(tiny_model, bad)


@pytest.fixture
def peft_breaks(monkeypatch):
    """PEFT fails after injecting the layers, while loading the weights."""
    def boom(*a, **k):
        raise RuntimeError("disk went away")
    monkeypatch.setattr("peft.peft_model.set_peft_model_state_dict", boom)


def test_failure_inside_peft_on_plain_base(tiny_model, ads, peft_breaks):
    before = fingerprint(tiny_model)
    with pytest.raises(AdapterFileError, match="disk went away.*left as it was"):
        lh.load_adapters(tiny_model, {"json": ads["json"]})
    assert_same(tiny_model, before)
    assert "peft_config" not in tiny_model.__dict__
    assert not any("lora" in n for n, _ in tiny_model.named_modules())


def test_failure_inside_peft_on_peft_model(loaded, ads, monkeypatch):
    lh.switch(loaded, "coding")
    before = fingerprint(loaded)
    layers = layer_states(loaded)
    monkeypatch.setattr("peft.peft_model.set_peft_model_state_dict",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk went away")))
    with pytest.raises(AdapterFileError, match="disk went away"):
        lh.load_adapters(loaded, {"support": ads["support"]})
    assert_same(loaded, before)
    assert layer_states(loaded) == layers
    with pytest.raises(AdapterFileError):
        lh.load_adapters(loaded, {"coding": ads["support"]}, replace=True)  # the old "coding" comes back
    assert_same(loaded, before)
    assert list(loaded.peft_config) == ["json", "coding"]
    monkeypatch.undo()
    lh.switch(loaded, "json")
    lh.switch(loaded, "coding")
    assert torch.equal(logits(loaded), before[2])


@pytest.mark.parametrize("name, replace", [("extra", False), ("coding", True)])
def test_a_load_that_fails_inside_peft_injection_leaves_no_layer_behind(loaded, ads, monkeypatch, name, replace):
    """PEFT drops the new config when injecting fails half-way but keeps the layers it filled: they go too
    (json's q_proj and v_proj layers; the replaced "coding" does not target v_proj)."""
    from peft.tuners.lora import LoraModel

    before, layers = fingerprint(loaded), layer_states(loaded)
    real, made = LoraModel._create_and_replace, []

    def fails_third(self, *a, **k):
        made.append(1)
        if len(made) == 3:
            raise RuntimeError("out of memory")
        return real(self, *a, **k)
    monkeypatch.setattr(LoraModel, "_create_and_replace", fails_third)
    with pytest.raises(AdapterFileError, match="out of memory.*left as it was"):
        lh.load_adapters(loaded, {name: ads["json"]}, replace=replace)  # into layers json has wrapped already
    assert_same(loaded, before)
    assert layer_states(loaded) == layers and list(loaded.peft_config) == ["json", "coding"]


def test_no_private_peft_names_imported():
    """The package uses PEFT's public names only (a private one may change in any release)."""
    import ast

    root = Path(lh.__file__).parent
    private = [(f.name, node.module, a.name) for f in root.rglob("*.py")
               for node in ast.walk(ast.parse(f.read_text())) if isinstance(node, ast.ImportFrom)
               and (node.module or "").split(".")[0] == "peft"
               for a in node.names if a.name.startswith("_") or any(p.startswith("_") for p in node.module.split("."))]
    assert private == []


# ---------------------------------------------------------------- zero-effect warning

def test_zero_lora_b_warns(tiny_model, ads):
    with pytest.warns(lh.UntrainedAdapterWarning, match="'zero' has all lora_B weights equal to zero.*will not change"):
        model = lh.load_adapters(tiny_model, {"zero": ads["zero"]})
    assert list_row(model, "zero")["note"].startswith("lora_B = 0")


@pytest.mark.parametrize("bias", [0.0, 0.25])
def test_one_rule_for_untrained_counts_lora_bias(tmp_path, tiny_model, tiny_tokenizer, bias):
    """lora_B weights zero but a non-zero LoRA bias (lora_bias=True) still changes the model: no warning on load
    or switch, no note in the table; with the bias zero too, both say so."""
    base = tiny.make_model(tiny_tokenizer)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], lora_bias=True))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.fill_(bias if n.endswith("bias") else 0.0)
    model.save_pretrained(str(tmp_path / "b"))
    plain = logits(tiny_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = lh.load_adapters(tiny_model, {"b": tmp_path / "b"})
        lh.switch(loaded, "base")
        lh.switch(loaded, "b")
    said = [w for w in caught if "all lora_B weights equal to zero" in str(w.message)]
    noted = list_row(loaded, "b")["note"].startswith("lora_B = 0")
    changes = not torch.equal(logits(loaded), plain)
    assert changes == bool(bias) and noted == (not changes) and len(said) == (0 if changes else 2)


def test_trained_adapter_does_not_warn(tiny_model, ads):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lh.load_adapters(tiny_model, {"json": ads["json"]})
    assert not [w for w in caught if "lora_B" in str(w.message)]


# ---------------------------------------------------------------- list_adapters

def list_row(model, name):
    return next(r for r in lh.list_adapters(model) if r["name"] == name)


def file_payload(folder):
    """Bytes of the tensors in an adapter's safetensors file (the file less its JSON header)."""
    data = (Path(folder) / "adapter_model.safetensors").read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def test_list_adapters(loaded, ads, tiny_tokenizer):
    loaded.add_adapter("fresh", LoraConfig(r=2, target_modules=["q_proj"]))  # lora_B = 0, no file, no base recorded
    lh.switch(loaded, "coding")
    table = lh.list_adapters(loaded)
    assert [r["name"] for r in table] == ["json", "coding", "fresh"]
    b = table[1]
    assert b["active"] and not table[0]["active"]
    assert (b["type"], b["base"], b["rank"], b["alpha"]) == ("LORA", "tests/tiny-mistral", 4, 8)
    assert b["target_modules"] == "gate_proj,o_proj,q_proj"
    assert b["size_bytes"] == file_payload(ads["coding"])  # what the file holds, as the model holds it
    same = list_row(peft_reference(tiny_tokenizer, ads, ["coding"]), "coding")
    assert b["sha256"] == same["sha256"] != table[0]["sha256"] and len(b["sha256"]) == 64
    assert table[0]["note"] == "" and table[2]["note"].startswith("lora_B = 0")
    fresh = [p for n, p in loaded.named_parameters() if ".fresh." in n]
    assert table[2]["size_bytes"] == sum(p.numel() * 4 for p in fresh) > 0 and table[2]["base"] is None
    text = repr(table)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["имя", "активен", "тип", "база"] and "размер весов" in lines[0]
    assert "gate_proj,o_proj,q_proj" in text and b["sha256"][:12] in text and lines[-1] == "работает: coding"
    assert "да" in lines[3] and "неизвестно" in lines[4]  # coding runs; fresh has no recorded base
    assert f"{b['size_bytes'] / 2**20:.2f} МиБ" in lines[3] and "LoRA" in lines[3]
    assert " MB" not in text and " KB" not in text and "MiB" not in text and "LORA" not in text  # Russian on screen
    html = table._repr_html_()
    assert html.startswith("<table>") and ">fresh</td>" in html and ">имя</th>" in html
    lh.switch(loaded, "base")
    assert not any(r["active"] for r in lh.list_adapters(loaded))
    assert "работает: base" in repr(lh.list_adapters(loaded))


def test_list_adapters_follows_a_replacement_through_peft(loaded, ads, tiny_tokenizer):
    """No stale table: PEFT's own delete_adapter + load_adapter shows at once."""
    before = list_row(loaded, "json")
    loaded.delete_adapter("json")
    loaded.load_adapter(str(ads["support"]), adapter_name="json")
    row = list_row(loaded, "json")
    assert row["size_bytes"] == file_payload(ads["support"]) != before["size_bytes"]
    assert row["sha256"] == list_row(peft_reference(tiny_tokenizer, ads, ["support"]), "support")["sha256"]
    assert row["sha256"] != before["sha256"]
    assert (row["rank"], row["target_modules"]) == (2, "down_proj,k_proj")


@pytest.mark.parametrize("config, kind, rank, alpha", [
    (IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]), "IA3", None, None),
    (LoHaConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), "LOHA", 2, 4),
])
def test_other_peft_types(tiny_model, ads, config, kind, rank, alpha):
    """IA3 and LoHa models: listed and switched; LoRA files are refused with a clear error, nothing changed."""
    model = get_peft_model(tiny_model, config, adapter_name="first")
    model.add_adapter("second", copy.deepcopy(config))
    lh.switch(model, "second")
    table = lh.list_adapters(model)
    assert ([(r["name"], r["type"], r["rank"], r["alpha"], r["active"]) for r in table]
            == [("first", kind, rank, alpha, False), ("second", kind, rank, alpha, True)])
    params = [p for n, p in model.named_parameters() if n.endswith(".second") or ".second." in n]
    assert table[1]["size_bytes"] == sum(p.numel() * 4 for p in params) > 0
    assert repr(table).splitlines()[-1] == "работает: second"
    assert ("—" in repr(table)) == (rank is None)  # no rank for IA3: "does not apply"
    before = fingerprint(model)
    with pytest.raises(AdapterError, match=f"holds {kind} adapters.*fresh base"):
        lh.load_adapters(model, {"json": ads["json"]})
    assert_same(model, before)


# ---------------------------------------------------------------- adapter files carry adapter weights only

LM_HEAD = "base_model.model.lm_head.weight"


def with_extra_tensor(tmp_path, ads, key, shape):
    """The json adapter plus one more tensor (zeros) named ``key``."""
    from safetensors.torch import load_file, save_file

    d = tmp_path / "extra"
    shutil.copytree(ads["json"], d)
    w = d / "adapter_model.safetensors"
    tensors = load_file(w)
    tensors[key] = torch.zeros(shape)
    save_file(tensors, w)
    return d


@pytest.mark.parametrize("start", ["plain", "peft"])
def test_adapter_file_cannot_overwrite_the_base(tmp_path, tiny_model, ads, start):
    shape = tuple(tiny_model.lm_head.weight.shape)
    model = tiny_model if start == "plain" else lh.load_adapters(tiny_model, {"coding": ads["coding"]})
    evil = with_extra_tensor(tmp_path, ads, LM_HEAD, shape)
    before = fingerprint(model)
    with pytest.raises(AdapterFileError, match=r"'base_model\.model\.lm_head\.weight'.*allow_base_weights=True"):
        lh.load_adapters(model, {"support": ads["support"], "evil": evil})
    assert_same(model, before)


def test_base_weights_load_only_on_request(tmp_path, tiny_model, ads, monkeypatch):
    import peft

    evil = with_extra_tensor(tmp_path, ads, LM_HEAD, tuple(tiny_model.lm_head.weight.shape))
    before = fingerprint(tiny_model)
    real = peft.peft_model.set_peft_model_state_dict

    def fails_for_support(model, state, adapter_name="default", **kw):
        if adapter_name == "support":
            raise RuntimeError("disk went away")
        return real(model, state, adapter_name=adapter_name, **kw)
    monkeypatch.setattr("peft.peft_model.set_peft_model_state_dict", fails_for_support)
    with pytest.raises(AdapterFileError, match="disk went away"):  # opted in, then a later adapter fails
        lh.load_adapters(tiny_model, {"evil": evil, "support": ads["support"]}, allow_base_weights=True)
    assert_same(tiny_model, before)  # the overwritten lm_head is back, bit for bit
    monkeypatch.undo()
    model = lh.load_adapters(tiny_model, {"evil": evil}, allow_base_weights=True)
    assert not model.get_base_model().lm_head.weight.any()  # what the caller asked for


@pytest.mark.parametrize("features", [
    dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
    dict(target_modules=["v_proj"], trainable_token_indices={"embed_tokens": [1, 2, 3]}),
    dict(target_modules=["q_proj", "o_proj"], use_dora=True),
    dict(target_modules=["k_proj"], use_rslora=True),
], ids=["modules_to_save", "trainable_tokens", "dora", "rslora"])
def test_adapter_features_load_like_peft(tmp_path, tiny_model, tiny_tokenizer, features):
    """modules_to_save copies and trainable-token rows are adapter weights: they load, the base stays as it was."""
    folder = tiny.save_lora(tmp_path / "a", tiny_tokenizer, seed=7, **features)
    plain = logits(tiny_model)
    model = lh.load_adapters(tiny_model, {"json": folder})
    ref = PeftModel.from_pretrained(tiny.make_model(tiny_tokenizer), str(folder), adapter_name="json")
    assert torch.equal(logits(model), logits(ref)) and not torch.equal(logits(model), plain)
    lh.switch(model, "base")
    assert torch.equal(logits(model), plain)


def test_replacing_the_only_adapter_that_peft_cannot_reload(tmp_path, tiny_model, tiny_tokenizer, ads):
    """PEFT 0.21 cannot load into a model whose only adapter (with trainable tokens) was deleted: refused, intact."""
    folder = tiny.save_lora(tmp_path / "t", tiny_tokenizer, seed=7, target_modules=["v_proj"],
                            trainable_token_indices={"embed_tokens": [1, 2, 3]})
    model = lh.load_adapters(tiny_model, {"json": folder})
    before = fingerprint(model)
    with pytest.raises(AdapterFileError, match="failed inside PEFT.*left as it was"):
        lh.load_adapters(model, {"json": ads["support"]}, replace=True)
    assert_same(model, before)
    assert list(model.peft_config) == ["json"]


def test_list_adapters_plain_model(tiny_model):
    table = lh.list_adapters(tiny_model)
    assert list(table) == [] and "Адаптеры не загружены" in repr(table)


def test_demo_adapters_paths():
    """The shipped adapters are package data; the repository's adapters/ links to the same folders."""
    root = Path(lh.__file__).resolve().parent.parent / "adapters"
    assert {k: v.resolve() for k, v in lh.DEMO_ADAPTERS.items()} == {
        "json": (root / "lora_json").resolve(), "coding": (root / "lora_coding").resolve(),
        "support": (root / "lora_support").resolve()}
    assert all(p.is_relative_to(Path(lh.__file__).parent) for p in lh.DEMO_ADAPTERS.values())


def test_switch_warns_for_an_untrained_adapter_made_with_add_adapter(tiny_model):
    import warnings

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                           adapter_name="trained")
    model.add_adapter("blank", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with pytest.warns(UserWarning, match="'blank' has all lora_B weights equal to zero"):
        lh.switch(model, "blank")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lh.switch(model, "trained")
        lh.switch(model, "base")
    last = [m for m in model.modules() if hasattr(m, "lora_B") and "blank" in m.lora_B][-1]
    with torch.no_grad():
        last.lora_B["blank"].weight.fill_(0.1)  # only the last layer trained: no longer "no effect"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lh.switch(model, "blank")


# ---------------------------------------------------------------- the shipped adapters on the embedded base

@pytest.mark.real
def test_shipped_adapters_switch_like_peft(embedded_fresh):
    """lh.load_adapters + lh.switch on SmolLM2 with the three demo adapters: PEFT's logits, PEFT's layer state."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model, tok = embedded_fresh
    model = lh.load_adapters(model, lh.DEMO_ADAPTERS)  # carries adapter weights only: not refused
    ref = PeftModel.from_pretrained(lh.load_base("smollm2-135m")[0], str(lh.DEMO_ADAPTERS["json"]), adapter_name="json")
    for name in ("coding", "support"):
        ref.load_adapter(str(lh.DEMO_ADAPTERS[name]), adapter_name=name)
    ids = tok("Верни JSON: имя Анна, город Осло", return_tensors="pt")["input_ids"]

    def out(m):
        with torch.no_grad():
            return m(ids).logits

    def layer_flags(m):
        return {(tuple(x.active_adapters), x.disable_adapters) for x in m.modules() if isinstance(x, BaseTunerLayer)}

    seen = []
    for name in ("coding", "support", "base", "json"):
        lh.switch(model, name)
        if name == "base":
            ref.base_model.disable_adapter_layers()
        else:
            ref.base_model.enable_adapter_layers()
            ref.set_adapter(name, inference_mode=True)
        assert torch.equal(out(model), out(ref)), name
        assert lh.active_adapter(model) == name and not any(p.requires_grad for p in model.parameters())
        assert layer_flags(model) == layer_flags(ref)
        seen.append(out(model))
    assert not any(torch.equal(a, b) for i, a in enumerate(seen) for b in seen[i + 1:])  # four different models
    table = lh.list_adapters(model)
    assert [(r["name"], r["size_bytes"]) for r in table] == [(n, file_payload(f)) for n, f in lh.DEMO_ADAPTERS.items()]
    assert table.running == "json" and all(r["base"] == "HuggingFaceTB/SmolLM2-135M-Instruct" for r in table)
