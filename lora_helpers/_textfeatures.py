"""Small offline text features for the routers (no scikit-learn, no downloads).

* ``normalize``: lower case, ё → е, one space between words.
* ``CharNgrams``: character n-gram TF-IDF (n-grams inside word boundaries, like scikit-learn's
  ``char_wb``; punctuation kept), sublinear tf, smooth idf, rows scaled to unit length.
* ``SoftmaxRegression``: multinomial logistic regression with L2, full-batch gradient descent
  from zeros, so it is deterministic.
* ``hidden_state_features``: mean-pooled hidden states of a causal LM (base weights, no adapter).
* ``load_labelled``: the shipped JSONL data sets.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np

from .course.demo_data import DATA_DIR  # the shipped labelled prompts
_SPACES = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+|[^\w\s]")   # words, and each punctuation mark on its own


def normalize(text: str) -> str:
    return _SPACES.sub(" ", text.lower().replace("ё", "е")).strip()


class CharNgrams:
    """TF-IDF over character n-grams of each token padded with spaces (``" код "`` → ``" ко"``,
    ``"код"``, ``"од "``, ``" код"``...); punctuation marks are tokens too (``{``, ``(``, ``:`` say a lot)."""

    def __init__(self, ngram_range: tuple[int, int] = (3, 5)):
        self.ngram_range = ngram_range
        self.vocab: dict[str, int] = {}
        self.idf = np.zeros(0)

    def _grams(self, text: str) -> Counter:
        lo, hi = self.ngram_range
        grams: Counter = Counter()
        for word in _TOKEN.findall(normalize(text)):
            w = f" {word} "
            for n in range(lo, hi + 1):
                grams.update(w[i:i + n] for i in range(max(len(w) - n + 1, 1)))
        return grams

    def fit(self, texts: list[str]) -> "CharNgrams":
        df: Counter = Counter()
        for t in texts:
            df.update(set(self._grams(t)))
        self.vocab = {g: i for i, g in enumerate(sorted(df))}
        n = len(texts)
        self.idf = np.array([math.log((1 + n) / (1 + df[g])) + 1.0 for g in sorted(df)])
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        X = np.zeros((len(texts), len(self.vocab)))
        for r, t in enumerate(texts):
            for g, c in self._grams(t).items():
                j = self.vocab.get(g)
                if j is not None:
                    X[r, j] = 1.0 + math.log(c)
        X *= self.idf
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class SoftmaxRegression:
    """Multinomial logistic regression: ``fit(X, y)``, ``predict_proba(X)``; ``l2`` is the weight penalty.

    Plain full-batch gradient descent from zeros, run in the dual (``W = X.T @ A``; exact, since every
    step stays in the span of the rows): with far more n-grams than examples this costs an
    ``n × n`` kernel instead of ``n × features`` products per step.
    """

    def __init__(self, l2: float = 1e-4, lr: float = 2.0, steps: int = 2000):
        self.l2, self.lr, self.steps = l2, lr, steps

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> "SoftmaxRegression":
        n = len(X)
        Y, K = np.eye(n_classes)[y], X @ X.T
        A, self.b = np.zeros((n, n_classes)), np.zeros(n_classes)
        for _ in range(self.steps):
            G = (_softmax(K @ A + self.b) - Y) / n
            A -= self.lr * (G + self.l2 * A)
            self.b -= self.lr * G.sum(0)
        self.W = X.T @ A
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return _softmax(X @ self.W + self.b)


def _softmax(Z: np.ndarray) -> np.ndarray:
    Z = np.exp(Z - Z.max(axis=1, keepdims=True))
    return Z / Z.sum(axis=1, keepdims=True)


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
    modes = [(m, m.training) for m in model.modules()]   # eval mode: no dropout; PEFT needs it too
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(ids), batch_size):
                chunk = ids[s:s + batch_size]
                width = max(map(len, chunk))
                input_ids = torch.tensor([c + [c[-1]] * (width - len(c)) for c in chunk], device=device)
                mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk], device=device)
                kwargs = dict(input_ids=input_ids, attention_mask=mask, output_hidden_states=True,
                              logits_to_keep=1)
                if isinstance(model, PeftModel):
                    kwargs["adapter_names"] = ["__base__"] * len(chunk)
                states = model(**kwargs).hidden_states
                hidden = states[round(0.8 * (len(states) - 1)) if layer is None else layer].float()
                m = mask.unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * m).sum(1) / m.sum(1)).cpu().numpy())
    finally:
        for module, training in modes:
            module.training = training
    return np.concatenate(out).astype(np.float64)


def load_labelled(name: str) -> list[dict]:
    """Read ``lora_helpers/course/data/<name>.jsonl`` (e.g. ``"router_examples"``, ``"router_eval"``)."""
    path = DATA_DIR / f"{name}.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
