import pytest

import lora_helpers as lh
from lora_helpers.generate import chat_text


def test_single_prompt_gives_a_string_batch_gives_a_list(tiny_model, tiny_tokenizer):
    one = lh.generate(tiny_model, tiny_tokenizer, "Верни JSON", max_new_tokens=6)
    many = lh.generate(tiny_model, tiny_tokenizer, ["Верни JSON", "hello"], max_new_tokens=6)
    assert isinstance(one, str) and isinstance(many, list) and len(many) == 2


def test_left_padded_batch_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    prompts = ["Write a Python function", "Здравствуйте, не могу войти в аккаунт, помогите", "JSON"]
    batch = lh.generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=8)
    assert batch == [lh.generate(tiny_model, tiny_tokenizer, p, max_new_tokens=8) for p in prompts]
    assert tiny_tokenizer.padding_side == "left"


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
