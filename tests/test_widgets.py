"""The adapter switcher driven from Python: set .value, click, read the Output."""
import pytest
from peft import LoraConfig, get_peft_model

import lora_helpers as lh


@pytest.fixture
def two_adapters(tiny_model):
    cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model, LoraConfig(**cfg), adapter_name="json")
    model.add_adapter("coding", LoraConfig(**cfg))
    model.set_adapter("json")
    return model.eval()


class FixedRouter:
    def route(self, text):
        return "coding" if "code" in text else "json"

    def explain(self, text):
        return "test rule"


def output_text(w):
    return "".join(o.get("text", "") for o in w.output.outputs)


def test_options_and_initial_state(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, router=FixedRouter())
    assert list(w.dropdown.options) == ["json", "coding", "base", "auto (router)"]
    assert w.dropdown.value == "json" and "json" in w.status.value
    assert "auto (router)" not in lh.adapter_switcher(two_adapters, tiny_tokenizer).dropdown.options


def test_picking_switches_the_model_and_generate_shows_the_reply(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, max_new_tokens=6)
    w.dropdown.value = "coding"
    assert lh.active_adapter(two_adapters) == "coding"
    w.prompt.value = "Write a Python function"
    w.button.click()
    expected = lh.generate(two_adapters, tiny_tokenizer, "Write a Python function", adapter="coding", max_new_tokens=6)
    assert w.last_adapter == "coding" and w.last_reply == expected
    assert output_text(w) == f"[coding]\n{expected}\n"
    w.dropdown.value = "base"
    assert lh.active_adapter(two_adapters) == "base"
    w.button.click()
    assert len(w.output.outputs) == 1 and output_text(w).startswith("[base]\n")
    assert w.last_reply == lh.generate(two_adapters, tiny_tokenizer, "Write a Python function", adapter="base",
                                       max_new_tokens=6)


def test_auto_mode_routes_each_prompt(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, router=FixedRouter(), max_new_tokens=4)
    w.dropdown.value = "auto (router)"
    w.prompt.value = "some code please"
    w.button.click()
    assert w.last_adapter == "coding" and lh.active_adapter(two_adapters) == "coding"
    assert "test rule" in w.status.value
    w.prompt.value = "Верни JSON"
    w.button.click()
    assert w.last_adapter == "json" and lh.active_adapter(two_adapters) == "json"


def test_empty_prompt_is_shown_as_an_error_not_raised(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer)
    w.prompt.value = "   "
    w.button.click()
    errors = "".join(o.get("text", "") for o in w.output.outputs if o.get("name") == "stderr")
    assert "PromptError" in errors and w.last_reply is None


def test_show_replies_and_plot_sizes():
    html = lh.show_replies("Q <1>", {"json": '{"a": 1}', "base": "plain"})
    assert "<th style='text-align:left'>json</th>" in html.data and "Q &lt;1&gt;" in html.data
    ax = lh.plot_sizes({"adapter": 2**20, "model": 2**29})
    assert [b.get_width() for b in ax.patches] == [1.0, 512.0]
