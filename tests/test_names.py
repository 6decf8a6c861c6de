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
