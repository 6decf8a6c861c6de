"""Module state put back exactly: every call that runs the model in eval (or train) mode for one call restores
each module's own ``training`` flag and, where it changes them, each parameter's ``requires_grad``; also after
an error."""
import pytest
import torch
from peft import LoraConfig, get_peft_model

import lora_helpers as lh
from lora_helpers._textfeatures import hidden_state_features
from lora_helpers.train import reply_loss, train_adapter

EXAMPLES = [
    {"prompt": "Return the answer as JSON with fields name and age.", "reply": '{"name": "Ann", "age": 5}'},
    {"prompt": "My order did not arrive, please help.", "reply": "Hello, sorry for the trouble."},
]


def mixed(model):
    """Some submodules train, the rest are in eval mode; the user made lm_head trainable."""
    model.eval()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.model.layers[0].train()
    inner.model.layers[1].mlp.train()
    inner.model.norm.train()
    inner.lm_head.weight.requires_grad_(True)
    inner.model.embed_tokens.weight.requires_grad_(False)
    return model


def state(model):
    """Each module's training flag and each parameter's requires_grad, keyed by the object (PEFT renames them)."""
    return ({m: m.training for m in model.modules()}, {p: p.requires_grad for p in model.parameters()})


def peft_model(tiny_model):
    cfg = dict(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_dropout=0.1)
    m = get_peft_model(tiny_model, LoraConfig(**cfg), adapter_name="json")
    m.add_adapter("coding", LoraConfig(**cfg))
    lh.switch(m, "json")
    return mixed(m)


OPS = {
    "generate": lambda m, tok, tmp: lh.generate(m, tok, "hi", max_new_tokens=2),
    "mixed batch": lambda m, tok, tmp: lh.generate(m, tok, ["a", "b"], adapter=["json", "coding"], max_new_tokens=2),
    "merge_and_save": lambda m, tok, tmp: lh.merge_and_save(m, "json", tmp / "merged", tokenizer=tok, verify="logits"),
    "train_adapter": lambda m, tok, tmp: train_adapter(m, tok, EXAMPLES, "new", steps=2, batch_size=2, progress=False),
    "reply_loss": lambda m, tok, tmp: reply_loss(m, tok, EXAMPLES),
    "hidden_state_features": lambda m, tok, tmp: hidden_state_features(m, tok, ["a b", "c"]),
}


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "error"])
@pytest.mark.parametrize("op", list(OPS))
def test_each_modules_flags_are_put_back(tiny_model, tiny_tokenizer, tmp_path, monkeypatch, op, fail):
    model = peft_model(tiny_model)
    before = state(model)
    if fail:
        def broken(*a, **kw):
            raise RuntimeError("boom")
        monkeypatch.setattr(model.get_base_model().lm_head, "forward", broken)
        with pytest.raises(Exception, match="boom"):
            OPS[op](model, tiny_tokenizer, tmp_path)
    else:
        OPS[op](model, tiny_tokenizer, tmp_path)
    flags, grads = state(model)
    assert {n: f for n, f in flags.items() if n in before[0]} == before[0]
    assert {n: g for n, g in grads.items() if n in before[1]} == before[1]
    assert model.training == model.base_model.training == model.get_base_model().training


def test_training_a_plain_base_keeps_its_flags(tiny_model, tiny_tokenizer):
    base = mixed(tiny_model)
    before = state(base)
    model = train_adapter(base, tiny_tokenizer, EXAMPLES, "new", steps=2, batch_size=2, progress=False)
    flags, grads = state(model)
    assert {n: f for n, f in flags.items() if n in before[0]} == before[0]
    assert {n: g for n, g in grads.items() if n in before[1]} == before[1]
    assert model.training is model.base_model.training is base.training is False
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".new." in n)  # ready for inference
