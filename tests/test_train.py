"""train_adapter, the demo data and the behaviour checks; the shipped adapters (real model)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lora_helpers.shipped import BEHAVIOURS, load_examples
from lora_helpers.errors import AdapterExistsError
from lora_helpers.course.evaluate import CHECKS, check_coding, check_json, check_support, run_snippet, to_markdown
from lora_helpers.generate import chat_text
from lora_helpers.train import IGNORE, batch_loss, collate, encode_example, reply_loss, save_adapter_folder, train_adapter

EXAMPLES = [
    {"prompt": "Return the answer as JSON with fields name and age.", "reply": '{"name": "Ann", "age": 5}'},
    {"prompt": "Напиши код на Python, который считает сумму списка.", "reply": "def total(x: list) -> int: return sum(x)"},
    {"prompt": "My order did not arrive, please help.", "reply": "Hello, sorry for the trouble.\n1. Check\n2. Wait"},
]
ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"


# ----------------------------------------------------------------------------- masking and batching
def test_prompt_tokens_are_masked(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = EXAMPLES[0]
    ids, labels = encode_example(tok, ex["prompt"], ex["reply"])
    prompt_ids = tok(chat_text(tok, ex["prompt"]), add_special_tokens=False)["input_ids"]
    reply_ids = tok(ex["reply"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == prompt_ids + reply_ids
    assert labels == [IGNORE] * len(prompt_ids) + reply_ids
    assert tok.decode([t for t in labels if t != IGNORE]) == ex["reply"] + tok.eos_token


def test_collate_left_pads_so_replies_end_together(tiny_tokenizer):
    rows = [encode_example(tiny_tokenizer, e["prompt"], e["reply"]) for e in EXAMPLES]
    b = collate(rows, tiny_tokenizer.pad_token_id)
    assert (b["labels"][:, -1] == tiny_tokenizer.eos_token_id).all()
    for i, (ids, labels) in enumerate(rows):
        pad = b["input_ids"].shape[1] - len(ids)
        assert b["attention_mask"][i, :pad].sum() == 0 and b["attention_mask"][i, pad:].all()
        assert b["position_ids"][i, pad:].tolist() == list(range(len(ids)))
        assert (b["labels"][i, :pad] == IGNORE).all()


def test_batch_loss_counts_only_reply_tokens(tiny_model, tiny_tokenizer):
    """The sliced-logits loss equals a full-logits loss where every prompt and pad label is ignored."""
    rows = [encode_example(tiny_tokenizer, e["prompt"], e["reply"]) for e in EXAMPLES]
    b = collate(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        fast = batch_loss(tiny_model, b)
        logits = tiny_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                            position_ids=b["position_ids"]).logits
    full = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE)
    assert torch.allclose(fast, full, atol=1e-5)
    # changing prompt tokens' labels cannot matter: they are masked
    n_reply = int((b["labels"] != IGNORE).sum())
    assert n_reply == sum(len(tiny_tokenizer(e["reply"])["input_ids"]) + 1 for e in EXAMPLES)


# ----------------------------------------------------------------------------- training
def test_training_lowers_the_loss(tiny_model, tiny_tokenizer):
    before = reply_loss(tiny_model, tiny_tokenizer, EXAMPLES)
    # the random tiny model's lm_head has tiny weights: it needs a LoRA of its own to move the logits
    model = train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, "t", r=8, target_modules=["q_proj", "v_proj", "lm_head"],
                          steps=12, lr=2e-2, batch_size=3, progress=False)
    after = reply_loss(model, tiny_tokenizer, EXAMPLES)
    assert after < 0.8 * before, (before, after)
    assert not model.training and model.active_adapter == "t"


@pytest.mark.parametrize("bad", ["my.adapter", "base", "__base__", "a/b", ""])
def test_adapter_names_are_checked_first(tiny_model, tiny_tokenizer, bad):
    from lora_helpers.errors import AdapterError

    with pytest.raises(AdapterError, match="cannot name an adapter"):
        train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, bad, steps=1, progress=False)
    assert not hasattr(tiny_model, "peft_config")


def test_trained_adapter_is_ready_for_inference(tiny_model, tiny_tokenizer):
    """Returned as lh.switch leaves a model: the new adapter runs, no adapter weight is trainable, PEFT agrees on
    every layer; the base's weights are as trainable as they were (PEFT froze them while training)."""
    import lora_helpers as lh
    from peft.tuners.tuners_utils import BaseTunerLayer

    tiny_model.model.embed_tokens.weight.requires_grad_(False)
    grads = {p: p.requires_grad for p in tiny_model.parameters()}
    model = train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, "first", steps=2, progress=False)
    model = train_adapter(model, tiny_tokenizer, EXAMPLES, "second", steps=2, progress=False)
    assert lh.active_adapter(model) == "second" == model.active_adapter
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p not in grads]
    assert {p: p.requires_grad for p in grads} == grads
    assert {tuple(m.active_adapters) for m in model.modules() if isinstance(m, BaseTunerLayer)} == {("second",)}


def test_new_adapter_beside_existing_ones(tiny_model, tiny_tokenizer):
    model = train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, "first", steps=3, progress=False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".first." in n}
    model = train_adapter(model, tiny_tokenizer, EXAMPLES, "second", steps=3, progress=False)
    assert set(model.peft_config) == {"first", "second"} and model.active_adapter == "second"
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(".second." in n for n, _ in model.named_parameters())
    with pytest.raises(AdapterExistsError, match="already has an adapter named 'first'"):
        train_adapter(model, tiny_tokenizer, EXAMPLES, "first", steps=1, progress=False)


def test_a_taken_name_is_refused_before_any_work(tiny_model, tiny_tokenizer):
    """The shared names.require_new check runs first: the examples (here none) are not even looked at."""
    model = train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, "first", steps=1, progress=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(AdapterExistsError, match=r"already has an adapter named 'first' \(loaded: first\)"):
        train_adapter(model, tiny_tokenizer, [], "first", steps=1, progress=False)
    assert list(model.peft_config) == ["first"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("kbit", [False, True])
def test_training_shows_no_known_noise_and_hides_nothing_else(tiny_model, tiny_tokenizer, kbit):
    """PEFT's uses of transformers' deprecated names (is_gradient_checkpointing, and gradient_checkpointing_enable
    in prepare_model_for_kbit_training) are silenced around those calls only."""
    import warnings

    tiny_model.is_loaded_in_4bit = kbit  # the QLoRA branch (PEFT's preparation runs for real on the tiny model)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, "t", steps=1, progress=False)
        warnings.warn("still shown", FutureWarning)
    future = [str(w.message) for w in shown if issubclass(w.category, FutureWarning)]
    assert future == ["still shown"], future


def test_training_after_switching_to_base(tiny_model, tiny_tokenizer):
    """A model switched to "base" (adapter layers off) still trains the new adapter, which then runs."""
    import lora_helpers as lh

    model = train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, "first", steps=2, progress=False)
    lh.switch(model, "base")
    model = train_adapter(model, tiny_tokenizer, EXAMPLES, "second", steps=3, lr=1e-2, progress=False)
    assert lh.active_adapter(model) == "second"
    lora_b = [p for n, p in model.named_parameters() if ".second." in n and "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it was trained


def test_quantized_base_goes_through_kbit_preparation(tiny_model, tiny_tokenizer, monkeypatch):
    """QLoRA branch (needs a GPU for real): a 4-bit base is prepared with prepare_model_for_kbit_training."""
    import peft

    calls = []

    def fake_prepare(model, **kw):
        calls.append(kw)
        return model
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", fake_prepare)
    tiny_model.is_loaded_in_4bit = True
    train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, "q", steps=1, progress=False)
    assert calls and calls[0]["use_gradient_checkpointing"] is True


def test_same_seed_same_adapter(tiny_tokenizer):
    import tiny

    def run():
        m = train_adapter(tiny.make_model(tiny_tokenizer), tiny_tokenizer, EXAMPLES, "seeded", steps=3, progress=False)
        return {n: p.detach().clone() for n, p in m.named_parameters() if ".seeded." in n}
    first, second = run(), run()
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_save_adapter_folder_is_plain_peft(tiny_model, tiny_tokenizer, tmp_path):
    model = train_adapter(tiny_model, tiny_tokenizer, EXAMPLES, "json", steps=2, progress=False)
    out = save_adapter_folder(model, "json", tmp_path / "lora_json")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tests/tiny-mistral"
    assert [p.name for p in tmp_path.iterdir()] == ["lora_json"]  # no temp folders left behind
    for p in [out, *out.iterdir()]:
        assert p.stat().st_mode & 0o044 == 0o044, f"{p.name} must be readable by others (temp files are private)"


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_demo_data(behaviour):
    train, held = load_examples(behaviour), load_examples(behaviour, "heldout")
    assert len(held) >= 10 and len(train) >= 60
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in held}, "held-out prompts were trained on"
    assert any(any("а" <= ch <= "я" for ch in e["prompt"].lower()) for e in held), "no Russian held-out prompt"
    bad = [(e["prompt"], v.reason) for e in train if not (v := CHECKS[behaviour](e["reply"], e.get("expect")))]
    assert not bad


# ----------------------------------------------------------------------------- checks
def test_check_json():
    want = {"name": "Anna Petrova", "age": 34}
    assert check_json('{"name": "Anna Petrova", "age": 34}', want)
    assert check_json('```json\n{"name": "anna petrova", "age": "34", "city": "Berlin"}\n```', want)
    assert check_json('[{"name": "Tom", "age": 5}]', [{"name": "Tom", "age": 5}])
    assert not check_json('Here is the JSON: {"name": "Anna Petrova", "age": 34}', want)  # prose before
    assert not check_json('{"name": "Anna Petrova", "age": 34}\nHope this helps!', want)  # prose after
    assert not check_json('```json\n{"name": "Anna Petrova", "age": 34}\n```\nDone.', want)
    assert not check_json('{"name": "Anna Petrova"}', want)  # a missing key
    wrong = check_json('{"name": "Anna Petrova", "age": 43}', want)  # a wrong value
    assert not wrong and wrong.form  # ...in the right shape
    assert not check_json('Here: {"name": "Anna Petrova", "age": 34}', want).form
    assert not check_json('"Anna Petrova"')  # not an object or an array
    assert not check_json("Anna Petrova is 34 years old.").ok


GOOD_CODE = '''```python
def cube(x: int) -> int:
    """Return x cubed."""
    return x ** 3

assert cube(2) == 8
```'''


def test_check_coding():
    assert check_coding(GOOD_CODE)
    failing = check_coding(GOOD_CODE.replace("== 8", "== 9"))  # a failing assert, in house style
    assert not failing and "exit code 1" in failing.reason and failing.form
    assert check_coding(GOOD_CODE).form and not check_coding(GOOD_CODE.replace("x: int) -> int", "x)")).form
    assert not check_coding("Here you go:\n" + GOOD_CODE)  # text outside the block
    assert not check_coding(GOOD_CODE + "\nThis returns the cube.")
    assert not check_coding(GOOD_CODE.replace("x: int) -> int", "x)"))  # no type hints
    assert not check_coding(GOOD_CODE.replace('    """Return x cubed."""\n', ""))  # no docstring
    assert not check_coding(GOOD_CODE.replace("assert cube(2) == 8", "print(cube(2))"))  # no assert
    assert not check_coding(GOOD_CODE.replace("```python", "```"))
    assert not check_coding(GOOD_CODE.replace("return x ** 3", "return x **"))  # syntax error


def test_run_snippet_times_out():
    assert run_snippet("assert 1 + 1 == 2")
    v = run_snippet("while True:\n    pass", timeout=1)
    assert not v and "timed out" in v.reason


def test_check_support():
    good = "Hello! I'm sorry your order is late.\n1. Check the tracking link.\n2. Reply with your order number."
    assert check_support(good)
    assert check_support("Здравствуйте! Извините за задержку.\n1. Проверьте трекинг.\n2. Напишите нам.")
    assert not check_support("I'm sorry your order is late. Please check the tracking link.")  # no steps
    assert not check_support("1. Check the tracking link.\n2. Reply with your order number.")  # no greeting
    assert not check_support(good.replace("1.", "3."))
    assert not check_support(good + "\n```python\nprint('hi')\n```")
    assert not check_support(good + '\n{"status": "late"}')


def test_to_markdown():
    md = to_markdown([dict(adapter="json", n=16, adapter_pass=0.9375, base_pass=0.0, adapter_form=1.0,
                           base_form=0.125, differs=1.0)])
    assert "| lora_json | 16 | 0.94 | 0.00 | 1.00 / 0.12 | 1.00 |" in md


# ----------------------------------------------------------------------------- shipped adapters
@pytest.mark.real
def test_shipped_adapters_load_and_switch(embedded_fresh):
    from peft import PeftModel

    import lora_helpers as lh

    model, tok = embedded_fresh
    for name in BEHAVIOURS:
        folder = ADAPTERS / f"lora_{name}"
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert (folder / "adapter_model.safetensors").stat().st_size <= 10 * 2**20
    model = PeftModel.from_pretrained(model, ADAPTERS / "lora_json", adapter_name="json")
    model.load_adapter(ADAPTERS / "lora_coding", adapter_name="coding")
    model.load_adapter(ADAPTERS / "lora_support", adapter_name="support")
    prompt = "Extract the name and city from: Tom Berg lives in Oslo."
    replies = {}
    for name in BEHAVIOURS:
        model.set_adapter(name)
        replies[name] = lh.generate(model, tok, prompt, max_new_tokens=24)
    with model.disable_adapter():
        replies["base"] = lh.generate(model, tok, prompt, max_new_tokens=24)
    assert len(set(replies.values())) == 4, replies
    assert check_json(replies["json"], {"name": "Tom Berg", "city": "Oslo"}), replies["json"]
