"""Text features for the routers (offline, no downloads).

* ``normalize``: lower case, ё → е, one space between words.
* ``char_ngrams``: the character n-gram TF-IDF vectorizer (scikit-learn, ``analyzer="char_wb"``).
* ``hidden_state_features``: mean-pooled hidden states of a causal LM (base weights, no adapter).
"""
from __future__ import annotations

import re

import numpy as np

from .modes import eval_mode
from .names import PEFT_BASE

_SPACES = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+|[^\w\s]")   # words, and each punctuation mark on its own


def normalize(text: str) -> str:
    return _SPACES.sub(" ", text.lower().replace("ё", "е")).strip()


def char_ngrams():
    """An unfitted scikit-learn ``TfidfVectorizer`` over character n-grams (3–5) inside word boundaries
    (``char_wb``) of the normalised text, sublinear tf, smooth idf, rows of unit length. Punctuation marks
    count as words of their own (``{``, ``(``, ``:`` say a lot about a prompt)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, preprocessor=_words)


def _words(text: str) -> str:
    return " ".join(_TOKEN.findall(normalize(text)))


def hidden_state_features(model, tokenizer, texts: list[str], layer: int | None = None,
                          batch_size: int = 16, max_tokens: int = 128) -> np.ndarray:
    """Mean-pooled hidden states of ``layer`` for each text, from the base weights only.

    ``layer=None`` takes the layer at 80% of the depth (24 of SmolLM2-135M's 30: the best in a
    4-fold cross-validation on the router examples; the last layer and the early ones were worse).

    Texts are right-padded by hand (a causal model's real tokens never see the padding), and a
    ``PeftModel`` is called with ``adapter_names=["__base__", ...]`` so its active adapter is untouched.
    Runs in eval mode and restores each module's train/eval flag afterwards.
    """
    import torch

    from peft import PeftModel

    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] or [0] for t in texts]
    device = next(model.parameters()).device
    out = []
    with eval_mode(model), torch.no_grad():  # eval mode: no dropout; PEFT's adapter_names needs it too
        for s in range(0, len(ids), batch_size):
            chunk = ids[s:s + batch_size]
            width = max(map(len, chunk))
            input_ids = torch.tensor([c + [c[-1]] * (width - len(c)) for c in chunk], device=device)
            mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk], device=device)
            kwargs = dict(input_ids=input_ids, attention_mask=mask, output_hidden_states=True,
                          logits_to_keep=1)
            if isinstance(model, PeftModel):
                kwargs["adapter_names"] = [PEFT_BASE] * len(chunk)
            states = model(**kwargs).hidden_states
            hidden = states[round(0.8 * (len(states) - 1)) if layer is None else layer].float()
            m = mask.unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * m).sum(1) / m.sum(1)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)
