"""The adapter switcher driven from Python: set .value, click, read the Output.

Runs on whatever ipywidgets is installed (8 in .venv; the same tests pass on 7.7.1, Colab's version).
"""
import re
from pathlib import Path

import ipywidgets
import pytest
from peft import LoraConfig, get_peft_model

import lora_helpers as lh
import lora_helpers.widgets as lw


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


def output_text(w, stream=None):
    return "".join(o.get("text", "") for o in w.output.outputs if stream is None or o.get("name") == stream)


def values(dropdown):
    return [v for _, v in dropdown.options]


def labels(dropdown):
    return [label for label, _ in dropdown.options]


def test_options_and_initial_state(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, router=FixedRouter())
    assert values(w.dropdown) == ["json", "coding", "base", lw.AUTO]
    assert w.dropdown.value == "json" and "json" in w.status.value
    assert lw.AUTO not in values(lh.adapter_switcher(two_adapters, tiny_tokenizer).dropdown)


def test_everything_on_screen_is_russian(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, router=FixedRouter(), max_new_tokens=2)
    assert w.button.description == "Сгенерировать"
    assert (w.dropdown.description, w.prompt.description) == ("Адаптер:", "Запрос:")
    assert labels(w.dropdown) == ["json", "coding", "base (без адаптера)", "авто (роутер)"]
    assert "Активный адаптер" in w.status.value
    w.dropdown.value = lw.AUTO
    w.prompt.value = "some code please"
    w.button.click()
    assert "роутер" in w.status.value and "маршрутизатор" not in w.status.value
    assert not re.search(r"\b(Generate|router|Active)\b", w.status.value + w.button.description)


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
    w.dropdown.value = lw.AUTO
    w.prompt.value = "some code please"
    w.button.click()
    assert w.last_adapter == "coding" and lh.active_adapter(two_adapters) == "coding"
    assert "test rule" in w.status.value
    w.prompt.value = "Верни JSON"
    w.button.click()
    assert w.last_adapter == "json" and lh.active_adapter(two_adapters) == "json"


def test_button_is_disabled_while_a_reply_is_generated(two_adapters, tiny_tokenizer, monkeypatch):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, prompt="hi")
    seen = []

    def fake_generate(model, tokenizer, prompt, **kw):
        seen.append((w.button.disabled, w.button.description))
        return "reply"

    monkeypatch.setattr(lw, "generate", fake_generate)
    assert not w.button.disabled
    w.button.click()
    assert seen == [(True, "Генерирую…")]
    assert not w.button.disabled and w.button.description == "Сгенерировать" and w.last_reply == "reply"


def test_any_error_is_shown_in_the_output_and_the_button_comes_back(two_adapters, tiny_tokenizer, monkeypatch):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, prompt="hi")

    def broken_generate(*a, **kw):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(lw, "generate", broken_generate)
    assert w._on_generate() == ""   # nothing raised into the notebook
    errors = output_text(w, "stderr")
    assert "RuntimeError: CUDA out of memory" in errors and "Traceback" not in errors
    assert not w.button.disabled and w.last_reply is None
    monkeypatch.undo()
    w.button.click()  # the next click works and clears the old error
    assert output_text(w, "stderr") == "" and output_text(w).startswith("[json]\n")


def test_empty_prompt_is_shown_as_an_error_not_raised(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer)
    w.prompt.value = "   "
    w.button.click()
    assert "PromptError" in output_text(w, "stderr") and w.last_reply is None


def test_a_failing_router_is_shown_not_raised(two_adapters, tiny_tokenizer):
    class BadRouter(FixedRouter):
        def route(self, text):
            raise KeyError("no rule")

    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, router=BadRouter())
    w.dropdown.value = lw.AUTO
    w.prompt.value = "hi"
    w.button.click()
    assert "KeyError" in output_text(w, "stderr") and not w.button.disabled


def test_picking_an_adapter_deleted_since_is_shown_not_raised(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer)
    two_adapters.delete_adapter("coding")
    w.dropdown.value = "coding"   # the option is stale: the model no longer has it
    assert "AdapterNotFoundError" in output_text(w, "stderr")
    assert lh.active_adapter(two_adapters) == "json"


def test_picking_an_untrained_adapter_shows_the_warning(two_adapters, tiny_tokenizer):
    two_adapters.add_adapter("blank", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer)
    w.dropdown.value = "blank"
    assert lh.active_adapter(two_adapters) == "blank"
    assert "lora_B" in output_text(w, "stderr") and "Предупреждение" in output_text(w, "stderr")


def test_only_apis_ipywidgets_7_has():
    """Colab ships ipywidgets 7.7.1: the switcher must not use what only ipywidgets 8 knows."""
    source = Path(lw.__file__).read_text()
    for name in ("description_allow_html", "tabbable", "tooltip", "grid_", "TagsInput", "Stack(", "Datetime"):
        assert name not in source, name


# What ipywidgets 7.7.1 (Colab's) has: each class's class_trait_names(), less comm/keys/log, for the widgets the
# switcher builds and their styles (7.7.1 gives every widget but Button a DescriptionStyle).
IPYWIDGETS_7 = {
    "Dropdown": {"description", "description_tooltip", "disabled", "index", "label", "layout", "options", "style",
                 "value"},
    "Textarea": {"continuous_update", "description", "description_tooltip", "disabled", "layout", "placeholder",
                 "rows", "style", "value"},
    "Button": {"button_style", "description", "disabled", "icon", "layout", "style", "tooltip"},
    "HTML": {"description", "description_tooltip", "layout", "placeholder", "style", "value"},
    "Output": {"layout", "msg_id", "outputs"},
    "VBox": {"box_style", "children", "layout"},
    "HBox": {"box_style", "children", "layout"},
    "Layout": {"align_content", "align_items", "align_self", "border", "bottom", "display", "flex", "flex_flow",
               "grid_area", "grid_auto_columns", "grid_auto_flow", "grid_auto_rows", "grid_column", "grid_gap",
               "grid_row", "grid_template_areas", "grid_template_columns", "grid_template_rows", "height",
               "justify_content", "justify_items", "left", "margin", "max_height", "max_width", "min_height",
               "min_width", "object_fit", "object_position", "order", "overflow", "overflow_x", "overflow_y",
               "padding", "right", "top", "visibility", "width"},
    "DescriptionStyle": {"description_width"},
    "ButtonStyle": {"button_color", "font_weight"},
}
BORDERS = {"border_top", "border_right", "border_bottom", "border_left"}   # ipywidgets 8 splits Layout.border


def set_traits(widget, fresh) -> set:
    """The traits of ``widget`` that differ from ``fresh`` (a new one of the same kind): what the switcher set."""
    skip = {"comm", "keys", "log", "layout", "style", "children"}
    names = {t for t in widget.trait_names() if t not in skip and not t.startswith("_")
             and getattr(widget, t) != getattr(fresh, t)}
    if BORDERS <= names and len({getattr(widget, b) for b in BORDERS}) == 1:   # what 8's Layout(border=) sets
        names = names - BORDERS | {"border"}
    return names


def walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def test_the_switcher_sets_only_what_ipywidgets_7_has(two_adapters, tiny_tokenizer):
    """Colab runs ipywidgets 7.7.1 (this venv 8): every widget class, trait, layout and style value the switcher
    sets, after being used, must exist in 7.7.1 (an 8-only one such as ``tooltip`` on a Dropdown fails here)."""
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, router=FixedRouter(), max_new_tokens=2, prompt="code")
    w.dropdown.value = "coding"
    w.button.click()
    w.dropdown.value = lw.AUTO
    w.button.click()
    two_adapters.delete_adapter("json")
    w.dropdown.value = "json"                      # a stale option: an error in the Output
    assert "AdapterNotFoundError" in output_text(w, "stderr")
    for widget in walk(w):
        kind = next((c.__name__ for c in type(widget).__mro__ if c.__name__ in IPYWIDGETS_7), None)
        assert kind, f"{type(widget).__name__} is not one of the 7.7.1 widgets listed here"
        fresh = getattr(ipywidgets, kind)()
        assert set_traits(widget, fresh) <= IPYWIDGETS_7[kind], (kind, set_traits(widget, fresh) - IPYWIDGETS_7[kind])
        assert set_traits(widget.layout, ipywidgets.Layout()) <= IPYWIDGETS_7["Layout"], kind
        if "style" in IPYWIDGETS_7[kind]:
            style = IPYWIDGETS_7["ButtonStyle" if kind == "Button" else "DescriptionStyle"]
            assert set_traits(widget.style, fresh.style) <= style, (kind, set_traits(widget.style, fresh.style))


def test_show_replies_and_plot_sizes():
    html = lh.show_replies("Q <1>", {"json": '{"a": 1}', "base": "plain"})
    assert "<th style='text-align:left;vertical-align:top'>json</th>" in html.data and "Q &lt;1&gt;" in html.data
    assert "Запрос" in html.data
    ax = lh.plot_sizes({"adapter": 2**20, "model": 2**29})
    assert [b.get_width() for b in ax.patches] == [1.0, 512.0]
    assert "МиБ" in ax.get_xlabel() and "MiB" not in ax.get_xlabel()


def test_reply_is_labelled_with_the_adapter_the_model_runs_after_a_switch_in_code(two_adapters, tiny_tokenizer):
    """The model is the only record: a switch made in code after the widget was shown wins over the dropdown."""
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, max_new_tokens=3, prompt="hi")
    w.dropdown.value = "json"
    lh.switch(two_adapters, "coding")          # a later notebook cell
    reply = w._on_generate()
    assert output_text(w, "stdout").startswith("[coding]\n") and w.last_adapter == "coding"
    assert w.dropdown.value == "coding" and "coding" in w.status.value
    assert reply == lh.generate(two_adapters, tiny_tokenizer, "hi", adapter="coding", max_new_tokens=3)


def test_options_follow_peft_config_after_load_and_delete(two_adapters, tiny_tokenizer):
    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, max_new_tokens=2, prompt="hi")
    two_adapters.add_adapter("sql", LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    two_adapters.delete_adapter("coding")
    w.button.click()
    assert values(w.dropdown) == ["json", "sql", "base"]
    w.dropdown.value = "sql"
    assert lh.active_adapter(two_adapters) == "sql"


def test_auto_mode_with_a_plain_function_router(two_adapters, tiny_tokenizer):
    def by_word(text):
        return "coding" if "code" in text else "json"

    w = lh.adapter_switcher(two_adapters, tiny_tokenizer, router=by_word, max_new_tokens=2)
    w.dropdown.value = lw.AUTO
    w.prompt.value = "fix my code"
    w.button.click()
    assert output_text(w, "stdout").startswith("[coding]\n"), output_text(w)
    assert "by_word" in w.status.value and w.dropdown.value == lw.AUTO
    assert "Ошибка" not in output_text(w, "stderr")
