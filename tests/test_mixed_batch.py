"""Mixed-adapter batches: one pass, the same greedy replies as each prompt alone with its adapter."""
import pytest
from peft import LoraConfig, get_peft_model

import lora_helpers as lh


def with_adapters(model, names, **lora):
    """``model`` as a PeftModel holding random (non-zero) LoRA adapters ``names``, the first active, in eval."""
    cfg = dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False, **lora)
    model = get_peft_model(model, LoraConfig(**cfg), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, LoraConfig(**cfg))
    lh.switch(model, names[0])
    return model.eval()


@pytest.fixture
def three(tiny_model):
    return with_adapters(tiny_model, ["json", "coding", "support"])


PROMPTS = ["Верни JSON со схемой", "Write a Python function", "My order did not arrive", "hello", "код"]
ADAPTERS = ["json", "coding", "support", "base", "coding"]


@pytest.fixture
def generate_calls(three, monkeypatch):
    """Each ``model.generate`` call on ``three``: (batch size, adapter_names)."""
    calls, real = [], three.generate

    def spy(*args, **kw):
        calls.append((len(kw["input_ids"]), kw.get("adapter_names")))
        return real(*args, **kw)
    monkeypatch.setattr(three, "generate", spy)
    return calls


@pytest.mark.parametrize("start", ["json", "base"])
def test_mixed_batch_equals_each_prompt_alone(three, tiny_tokenizer, start, generate_calls):
    lh.switch(three, start)
    mixed = lh.generate(three, tiny_tokenizer, PROMPTS, adapter=ADAPTERS, max_new_tokens=8)
    assert generate_calls == [(5, ["json", "coding", "support", "__base__", "coding"])]  # one batch, PEFT's names
    alone = [lh.generate(three, tiny_tokenizer, p, adapter=a, max_new_tokens=8) for p, a in zip(PROMPTS, ADAPTERS)]
    assert generate_calls[1:] == [(1, None)] * 5
    assert mixed == alone
    assert len(set(lh.generate(three, tiny_tokenizer, ["hello"] * 4, adapter=["json", "coding", "support", "base"],
                               max_new_tokens=8))) > 1, "adapters must change the reply"
    assert lh.active_adapter(three) == start


def test_mixed_batch_bad_input(three, tiny_tokenizer, generate_calls):
    with pytest.raises(lh.AdapterError, match="one per prompt"):
        lh.generate(three, tiny_tokenizer, PROMPTS, adapter=["json"], max_new_tokens=2)
    with pytest.raises(LookupError, match="No adapter named 'legal' is loaded; loaded: json, coding, support"):
        lh.generate(three, tiny_tokenizer, ["a", "b"], adapter=["json", "legal"], max_new_tokens=2)
    assert lh.active_adapter(three) == "json" and generate_calls == []


def test_peft_base_name_is_refused(three, tiny_tokenizer, generate_calls):
    """An adapter named "__base__" (PEFT allows it) would run as the base in a mixed batch: refused instead."""
    three.add_adapter("__base__", LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    for adapter in (["__base__", "json"], ["__base__", "__base__"], "__base__"):
        with pytest.raises(lh.AdapterError, match="'__base__'.*Use 'base'"):
            lh.generate(three, tiny_tokenizer, ["a", "b"] if isinstance(adapter, list) else "a", adapter=adapter,
                        max_new_tokens=2)
    assert generate_calls == [] and lh.active_adapter(three) == "json"


class Router:
    def route(self, text):
        return {"J": "json", "C": "coding", "X": "translate"}.get(text[0], "support")


def test_route_and_generate_uses_one_batch_and_falls_back(three, tiny_tokenizer, generate_calls):
    prompts = ["J give json", "C write code", "X translate this", "hi there"]
    with pytest.warns(UserWarning, match="'translate', which is not loaded"):
        pairs = lh.route_and_generate(three, tiny_tokenizer, prompts, Router(), max_new_tokens=6)
    assert generate_calls == [(4, ["json", "coding", "__base__", "support"])]
    assert [a for a, _ in pairs] == ["json", "coding", "base", "support"]
    assert [r for _, r in pairs] == lh.generate(three, tiny_tokenizer, prompts,
                                                adapter=["json", "coding", "base", "support"], max_new_tokens=6)
    assert lh.route_and_generate(three, tiny_tokenizer, "J only", Router(), max_new_tokens=3)[0] == "json"
    with pytest.raises(lh.PromptError):
        lh.route_and_generate(three, tiny_tokenizer, ["  "], Router())


@pytest.fixture
def dropout(tiny_model):
    """Two adapters with heavy LoRA dropout: in training mode every forward pass would differ."""
    return with_adapters(tiny_model, ["json", "coding"], lora_dropout=0.9)


def modes(model):
    return [(name, m.training) for name, m in model.named_modules()]


def test_a_model_in_training_mode_runs_in_eval_and_keeps_its_modes(dropout, tiny_tokenizer, monkeypatch):
    """PEFT refuses mixed batches in training mode and dropout would make greedy replies random: generate
    runs the call in eval mode and puts every module's own flag back (also a partly frozen model's)."""
    prompts, adapters = PROMPTS[:4], ["json", "coding", "base", "json"]
    expected = lh.generate(dropout, tiny_tokenizer, prompts, adapter=adapters, max_new_tokens=6)
    alone = lh.generate(dropout, tiny_tokenizer, prompts[0], max_new_tokens=6)
    dropout.train()
    dropout.base_model.model.model.layers[0].eval()        # a partly frozen model: its own flags come back
    before = modes(dropout)
    assert lh.generate(dropout, tiny_tokenizer, prompts, adapter=adapters, max_new_tokens=6) == expected
    assert modes(dropout) == before
    assert lh.generate(dropout, tiny_tokenizer, prompts[0], max_new_tokens=6) == alone
    assert lh.generate(dropout, tiny_tokenizer, prompts, max_new_tokens=6)[0] == alone
    assert modes(dropout) == before and dropout.training
    assert lh.route_and_generate(dropout, tiny_tokenizer, prompts, lambda t: "coding", max_new_tokens=3)
    assert modes(dropout) == before

    def broken(*args, **kw):
        assert not dropout.training
        raise RuntimeError("out of memory")
    monkeypatch.setattr(dropout, "generate", broken)
    for adapter in (None, adapters):
        with pytest.raises(RuntimeError, match="out of memory"):
            lh.generate(dropout, tiny_tokenizer, prompts, adapter=adapter, max_new_tokens=6)
        assert modes(dropout) == before
    assert lh.active_adapter(dropout) == "json"
