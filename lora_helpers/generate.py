"""Text generation: one prompt, a batch, a mixed-adapter batch, and routed generation."""
from __future__ import annotations

import operator
import warnings

import torch

from .errors import AdapterError, PromptError
from .modes import eval_mode
from .names import BASE, PEFT_BASE, loaded_names, require_loaded
from .prompts import check_prompt
from .switching import temporary_switch


def chat_text(tokenizer, prompt: str, system: str | None = None) -> str:
    """The prompt wrapped in the tokenizer's chat template, ready for the assistant's reply."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def pad_id(tokenizer) -> int:
    """The token that pads a batch: the tokenizer's pad token, else its end-of-sequence token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def context_window(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


@torch.inference_mode()
def generate(model, tokenizer, prompt_or_prompts, adapter=None, max_new_tokens: int = 128,
             system: str | None = None, **kw):
    """Generate a reply (greedy by default) and return only the new text.

    ``prompt_or_prompts``: a string -> a string; a list of strings -> a list (one left-padded batch).
    ``adapter``: None = the active adapter; a name (or "base") = that adapter for this call only;
    a list with one name per prompt = one mixed-adapter batch (PEFT's ``adapter_names``).
    Extra keyword arguments go to ``model.generate`` (e.g. ``do_sample=True, temperature=0.7``).

    Neither the tokenizer nor the model is left changed: the padding is done here, not through the
    tokenizer's ``padding_side``/``pad_token``; a model in training mode runs in eval mode for the call
    (no dropout, so greedy replies are reproducible; PEFT's mixed batches refuse training mode) and each
    module's mode is put back afterwards, also after an error. Bad input raises before anything runs.
    """
    single = isinstance(prompt_or_prompts, str)
    prompts = [prompt_or_prompts] if single else prompt_or_prompts
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise PromptError(f"Expected a prompt string or a non-empty list of them, got {prompt_or_prompts!r}.")
    texts = [chat_text(tokenizer, check_prompt(p), system) for p in prompts]
    max_new_tokens = check_max_new_tokens(max_new_tokens)

    options = dict(max_new_tokens=max_new_tokens, do_sample=False)
    if not kw.get("do_sample"):  # silence "temperature is set but do_sample=False" from presets
        options.update(temperature=None, top_p=None, top_k=None)
    if isinstance(adapter, (list, tuple)):
        if len(adapter) != len(prompts):
            raise AdapterError(f"adapter= has {len(adapter)} names for {len(prompts)} prompts; give one per prompt.")
        _refuse_peft_base(adapter)
        names = set(adapter)
        if len(names) == 1:
            adapter = adapter[0]
        else:
            require_loaded(model, adapter, allow_base=True)
            options["adapter_names"] = [PEFT_BASE if a == BASE else a for a in adapter]
            # adapter_names needs the LoRA layers enabled: in "base" mode activate any named one meanwhile
            adapter = next(a for a in adapter if a != BASE)
    else:
        _refuse_peft_base([adapter])

    pad = pad_id(tokenizer)
    enc = _left_padded(tokenizer, texts, pad, model.device)
    limit = context_window(model)
    if limit and enc["input_ids"].shape[1] + max_new_tokens > limit:
        longest = int(enc["attention_mask"].sum(1).max())
        raise PromptError(f"The prompt has {longest} tokens; with max_new_tokens={max_new_tokens} that exceeds "
                          f"the model's context window of {limit} tokens. Shorten the prompt or lower "
                          "max_new_tokens.")
    options["pad_token_id"] = pad
    options.update(kw)
    with eval_mode(model), temporary_switch(model, adapter):
        out = model.generate(**enc, **options)
    replies = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    replies = [r.strip() for r in replies]
    return replies[0] if single else replies


def check_max_new_tokens(n) -> int:
    """``n`` as an int if it is a whole number >= 1 (not a bool, float or string), else an AdapterError."""
    try:
        value = None if isinstance(n, bool) else operator.index(n)
    except TypeError:
        value = None
    if value is None or value < 1:
        raise AdapterError(f"max_new_tokens must be a whole number of tokens, at least 1; got {n!r} "
                           f"({type(n).__name__}). Pass e.g. max_new_tokens=64.")
    return value


def _left_padded(tokenizer, texts, pad: int, device) -> dict:
    """One batch, each row padded on the left with ``pad`` (the tokenizer's own padding settings untouched)."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _refuse_peft_base(names) -> None:
    if PEFT_BASE in names:
        raise AdapterError(f"adapter= names {PEFT_BASE!r}, which PEFT reserves for 'no adapter' in a mixed batch, "
                           f"so it would silently run the base model. Use {BASE!r} for the base, or rename the "
                           "adapter (letters, digits, '_' and '-').")


def route_and_generate(model, tokenizer, prompts, router, max_new_tokens: int = 128, fallback: str = BASE, **kw):
    """Route each prompt with ``router`` (a router object or a plain ``str -> str`` function) and answer all
    of them in one mixed-adapter batch.

    Returns a list of ``(adapter, reply)`` (one pair for a single str prompt). A route naming an adapter that
    is not loaded falls back to ``fallback`` ("base" by default) with a warning, so a router never breaks
    generation.
    """
    from .router import as_router  # router imports the text features; only this function needs it

    router = as_router(router)
    check_max_new_tokens(max_new_tokens)
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    loaded = loaded_names(model)
    routes = []
    for p in prompts:
        name = router.route(check_prompt(p))
        if name != BASE and name not in loaded:
            warnings.warn(f"The router chose {name!r}, which is not loaded (loaded: {sorted(loaded)}); "
                          f"answering with {fallback!r} instead.")
            name = fallback
        routes.append(name)
    replies = generate(model, tokenizer, prompts, adapter=routes, max_new_tokens=max_new_tokens, **kw)
    pairs = list(zip(routes, replies))
    return pairs[0] if single else pairs
