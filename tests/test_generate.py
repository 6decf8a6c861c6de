import pytest

import lora_helpers as lh
import tiny
from lora_helpers.generate import chat_text
from test_mixed_batch import with_adapters


def tokenizer_state(tok) -> dict:
    """Everything a call could change on a fast tokenizer: its attributes and the Rust backend's settings."""
    state = {k: repr(v) for k, v in vars(tok).items() if k != "_tokenizer"}
    state.update(backend_padding=repr(tok.backend_tokenizer.padding),
                 backend_truncation=repr(tok.backend_tokenizer.truncation))
    return state


@pytest.fixture
def two(tiny_model):
    """The tiny model with adapters "json" and "coding" (random, so each changes the replies)."""
    return with_adapters(tiny_model, ["json", "coding"])


def test_single_prompt_gives_a_string_batch_gives_a_list(tiny_model, tiny_tokenizer):
    one = lh.generate(tiny_model, tiny_tokenizer, "Верни JSON", max_new_tokens=6)
    many = lh.generate(tiny_model, tiny_tokenizer, ["Верни JSON", "hello"], max_new_tokens=6)
    assert isinstance(one, str) and isinstance(many, list) and len(many) == 2


def test_left_padded_batch_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    prompts = ["Write a Python function", "Здравствуйте, не могу войти в аккаунт, помогите", "JSON"]
    batch = lh.generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=8)
    assert batch == [lh.generate(tiny_model, tiny_tokenizer, p, max_new_tokens=8) for p in prompts]
    assert tiny_tokenizer.padding_side == "right"      # padded on the left without changing the tokenizer


def test_greedy_is_deterministic_and_returns_only_new_text(tiny_model, tiny_tokenizer):
    """The reply is exactly the greedy continuation of the chat-templated prompt, without the prompt's tokens."""
    tok, prompt = tiny_tokenizer, "Write a Python function that reverses a string"
    a = lh.generate(tiny_model, tok, prompt, max_new_tokens=10)
    assert a == lh.generate(tiny_model, tok, prompt, max_new_tokens=10)
    ids = tok(chat_text(tok, prompt), return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = tiny_model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:]
    assert len(new) == 10 and a == tok.decode(new, skip_special_tokens=True).strip() != ""
    full = tok.decode(out[0], skip_special_tokens=True)
    assert full.endswith(a) and full.startswith(tok.decode(ids[0], skip_special_tokens=True))  # prompt cut off


@pytest.mark.parametrize("pad", ["<pad>", None])
def test_the_tokenizer_is_left_as_it_was(two, pad, monkeypatch):
    """padding_side, pad_token and the backend's padding stay as the caller set them, whatever the call did."""
    tok = tiny.make_tokenizer()
    tok.pad_token = pad
    before = tokenizer_state(tok)
    prompts = ["Write a Python function", "Здравствуйте, не могу войти", "JSON"]
    one = lh.generate(two, tok, prompts[0], max_new_tokens=5)
    assert tokenizer_state(tok) == before
    batch = lh.generate(two, tok, prompts, max_new_tokens=5)
    assert tokenizer_state(tok) == before
    mixed = lh.generate(two, tok, prompts, adapter=["json", "coding", "base"], max_new_tokens=5)
    assert tokenizer_state(tok) == before
    assert batch[0] == one and batch == [lh.generate(two, tok, p, max_new_tokens=5) for p in prompts]
    assert mixed == [lh.generate(two, tok, p, adapter=a, max_new_tokens=5)
                     for p, a in zip(prompts, ["json", "coding", "base"])]

    def broken(*args, **kw):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(two, "generate", broken)
    for adapter in (None, ["json", "coding", "base"]):
        with pytest.raises(RuntimeError, match="out of memory"):
            lh.generate(two, tok, prompts, adapter=adapter, max_new_tokens=5)
        assert tokenizer_state(tok) == before


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True, False, None, 1e3])
def test_bad_max_new_tokens_is_refused_before_anything_runs(two, tiny_tokenizer, bad, monkeypatch):
    calls = []
    monkeypatch.setattr(two, "generate", lambda *a, **kw: calls.append(kw))
    before = tokenizer_state(tiny_tokenizer)
    for adapter in (None, "coding", ["json", "coding"]):
        with pytest.raises(lh.AdapterError, match=r"max_new_tokens must be a whole number.*got " + repr(bad)[:3]):
            lh.generate(two, tiny_tokenizer, ["hi", "there"], adapter=adapter, max_new_tokens=bad)
    routed = []
    with pytest.raises(lh.AdapterError, match="max_new_tokens"):
        lh.route_and_generate(two, tiny_tokenizer, ["hi"], lambda text: routed.append(text) or "json",
                              max_new_tokens=bad)
    assert calls == [] and routed == [] and lh.active_adapter(two) == "json"
    assert tokenizer_state(tiny_tokenizer) == before


def test_good_max_new_tokens_kinds(tiny_model, tiny_tokenizer):
    import numpy as np

    assert lh.generate(tiny_model, tiny_tokenizer, "hi", max_new_tokens=np.int64(3)) == \
        lh.generate(tiny_model, tiny_tokenizer, "hi", max_new_tokens=3)


@pytest.mark.parametrize("bad", ["", "   \n", 42, None, [], ["ok", ""]])
def test_bad_prompts_raise_prompt_error(tiny_model, tiny_tokenizer, bad):
    with pytest.raises(lh.PromptError):
        lh.generate(tiny_model, tiny_tokenizer, bad, max_new_tokens=2)


def test_prompt_longer_than_context_window(tiny_model, tiny_tokenizer):
    with pytest.raises(lh.PromptError, match="context window of 256"):
        lh.generate(tiny_model, tiny_tokenizer, "json " * 300, max_new_tokens=2)


def test_adapter_on_a_model_without_adapters(tiny_model, tiny_tokenizer):
    with pytest.raises(lh.AdapterError, match="no adapters loaded"):
        lh.generate(tiny_model, tiny_tokenizer, "hi", adapter="json", max_new_tokens=2)
    assert lh.generate(tiny_model, tiny_tokenizer, "hi", adapter="base", max_new_tokens=4) == \
        lh.generate(tiny_model, tiny_tokenizer, "hi", max_new_tokens=4)


@pytest.mark.real
def test_embedded_model_answers_in_text(embedded):
    model, tok = embedded
    reply = lh.generate(model, tok, "What is the capital of France?", max_new_tokens=16)
    assert "Paris" in reply and "<|im" not in reply
