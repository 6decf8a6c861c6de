"""names: the shared checks of an adapter name (check_name, require_loaded, require_new)."""
import pytest
from peft import LoraConfig, get_peft_model

from lora_helpers.errors import AdapterError, AdapterExistsError
from lora_helpers.names import require_new


def test_require_new_accepts_a_free_plain_name(tiny_model):
    assert require_new(tiny_model, "json") == "json"  # a plain transformers model: nothing loaded
    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="json")
    assert require_new(model, "coding") == "coding"


def test_require_new_refuses_a_loaded_name_and_a_bad_one(tiny_model):
    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="json")
    with pytest.raises(AdapterExistsError, match=r"already has an adapter named 'json' \(loaded: json\).*"
                                                 r"delete_adapter\('json'\)"):
        require_new(model, "json")
    for bad in ("base", "a.b", "", None):
        with pytest.raises(AdapterError, match="cannot name the new adapter"):
            require_new(model, bad, "the new adapter")
    assert list(model.peft_config) == ["json"]


def _calls(tok, tmp_path):
    """Every public operation that takes a loaded adapter's name, called with ``name``."""
    import lora_helpers as lh
    from lora_helpers.switching import temporary_switch
    return {
        "switch": lambda m, n: lh.switch(m, n),
        "temporary_switch": lambda m, n: temporary_switch(m, n).__enter__(),
        "generate": lambda m, n: lh.generate(m, tok, "hi", adapter=n, max_new_tokens=1),
        "mixed batch": lambda m, n: lh.generate(m, tok, ["hi", "yo"], adapter=["json", n], max_new_tokens=1),
        "combine": lambda m, n: lh.combine_adapters(m, {"json": 1.0, n: 1.0}, "mix"),
        "save_adapter": lambda m, n: lh.save_adapter(m, n, path_or_repo=str(tmp_path / "saved")),
        "merge_and_save": lambda m, n: lh.merge_and_save(m, n, tmp_path / "merged"),
    }


@pytest.mark.parametrize("call", ["switch", "temporary_switch", "generate", "mixed batch", "combine", "save_adapter",
                                  "merge_and_save"])
def test_an_unknown_name_is_one_lookup_error_everywhere(tiny_model, tiny_tokenizer, tmp_path, monkeypatch, call):
    import lora_helpers as lh
    from lora_helpers.errors import AdapterNotFoundError

    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path))
    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="json")
    model.add_adapter("coding", LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(AdapterNotFoundError,
                       match=r"^No adapter named 'legal' is loaded; loaded: json, coding\b.*lh\.load_adapters") as e:
        _calls(tiny_tokenizer, tmp_path)[call](model, "legal")
    assert isinstance(e.value, LookupError)
    assert list(model.peft_config) == ["json", "coding"] and lh.active_adapter(model) == "json"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("call", ["switch", "temporary_switch", "generate", "mixed batch", "combine", "save_adapter",
                                  "merge_and_save"])
def test_a_name_on_a_model_without_adapters_is_the_same_lookup_error(tiny_model, tiny_tokenizer, tmp_path,
                                                                     monkeypatch, call):
    from lora_helpers.errors import AdapterNotFoundError

    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path))
    with pytest.raises(AdapterNotFoundError, match=r"(?s)no adapters loaded|loaded: none.*lh\.load_adapters"):
        _calls(tiny_tokenizer, tmp_path)[call](tiny_model, "json")
    assert not hasattr(tiny_model, "peft_config") and list(tmp_path.iterdir()) == []
