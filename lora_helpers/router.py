"""Routers: pick an adapter name ("json", "coding", "support") from the prompt text.

* ``KeywordRouter`` — the cheat-sheet's rules («json», «схем» → json; «код», «bug» → coding),
  extended with English and Russian stems; no model, microseconds per prompt. Written by hand: it is
  the lesson.
* ``SemanticRouter`` (``make_router("classifier")``; ``"semantic"`` is the older name of the same kind) —
  a logistic-regression classifier (scikit-learn) trained at construction on labelled example prompts
  (shipped in ``lora_helpers/data/router_examples.jsonl``) over character n-grams and keyword
  counts, optionally joined with the base model's own hidden states; no download. Unsure → keyword
  rules → default. On the shipped eval set (72 EN+RU prompts, half without any keyword): keyword 0.65,
  n-grams 0.96, n-grams + SmolLM2-135M hidden states 0.99.
* ``evaluate_router`` — accuracy and a confusion matrix on a labelled set (by default the shipped
  ``router_eval.jsonl``, kept apart from the examples).

``explain()``, the reprs and the confusion table/plot speak Russian (a notebook shows them); errors are
English. Bad prompts (not a ``str``, empty or whitespace) raise ``PromptError`` in every router.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from . import tables
from ._textfeatures import char_ngrams, hidden_state_features, normalize
from .errors import AdapterError
from .prompts import check_prompt
from .shipped import load_labelled

# A keyword is a stem, matched at the start of a word, case-insensitively (ё = е), followed by
# nothing or one inflectional ending: Russian case/number endings for Cyrillic stems
# (схем → схема/схему/схемы/схемой; код → кода/коде/кодом, but not «кодекс», «промокод»),
# -s/-es/-ed/-d/-ing for Latin ones (bug → bugs). A trailing "*" allows any continuation
# (рефактор* → рефакторинг, рефакторить). A space matches spaces or a hyphen ("log in" → log-in).
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "json": ("json", "jsonl", "схем", "schema", "yaml", "xml", "csv", "field", "пол",
             "structured", "структурир*"),
    "coding": ("код", "code", "coding", "bug", "баг", "debug*", "отлад*", "refactor*", "рефактор*",
               "отрефактор*", "function", "функци", "python", "питон", "javascript", "typescript",
               "sql", "regex", "script", "скрипт", "exception", "исключени", "compil*", "компил*",
               "programming", "программир*", "traceback", "stack trace"),
    "support": ("order", "refund", "password", "account", "login", "log in", "sign in", "delivery",
                "shipping", "subscription", "invoice", "payment", "billing", "charge", "cancel*",
                "customer", "заказ*", "возврат", "парол", "аккаунт", "логин", "войти", "зайти",
                "вход", "доставк", "подписк", "оплат*", "списа*", "деньг", "денег", "посылк",
                "поддержк", "счет", "отмен*"),
}
_RU_ENDINGS = ("а я о е у ю ы и ь й ом ем ой ей ою ею ам ям ами ями ах ях ов ев ью ия ие ий ии ию "
               "ый ая ое ые ого его ому ему ым им ых их ую юю").split()
_RU_TAIL = "(?:" + "|".join(sorted(_RU_ENDINGS, key=len, reverse=True)) + ")?"
_EN_TAIL = "(?:ing|es|ed|s|d)?"


def _keyword_pattern(keyword: str) -> re.Pattern:
    kw = normalize(keyword)
    stem, tail = (kw[:-1], r"\w*") if kw.endswith("*") else (
        kw, _RU_TAIL if re.search("[а-я]$", kw) else _EN_TAIL)
    body = r"[\s\-]+".join(re.escape(part) for part in stem.split(" "))
    return re.compile(rf"(?<!\w){body}{tail}(?!\w)")


def _pairs(labelled) -> list[tuple[str, str]]:
    """(text, route) pairs from ``{route: [texts]}`` (or ``{route: text}``), dicts with "text"/"route", or
    (text, route) tuples."""
    if isinstance(labelled, Mapping):  # a lone string is one text, not a list of characters
        return [(t, r) for r, texts in labelled.items() for t in ([texts] if isinstance(texts, str) else texts)]
    pairs = [(x["text"], x["route"]) if isinstance(x, Mapping) else tuple(x) for x in labelled]
    if not pairs:
        raise AdapterError("The labelled set is empty; expected (text, route) pairs or {route: [texts]}.")
    return pairs


class FunctionRouter:
    """A plain ``str -> str`` function as a router: ``route`` calls it, ``explain`` names it."""

    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def route(self, text: str) -> str:
        """The function's route name for ``text`` (checked to be a non-empty str)."""
        name = self.fn(check_prompt(text))
        if not isinstance(name, str) or not name:
            raise AdapterError(f"The router function {self.name!r} returned {name!r} for {text!r:.40}; "
                               "expected the name of an adapter (a non-empty str), e.g. 'json' or 'base'.")
        return name

    def explain(self, text: str) -> str:
        return f"{self.route(text)} — так решила функция {self.name}()"

    def __repr__(self) -> str:
        return f"FunctionRouter({self.name})"


def as_router(router):
    """``router`` itself when it has ``route`` (and ``explain``, optional); a plain ``str -> str`` function
    wrapped as a :class:`FunctionRouter`. Anything else raises AdapterError."""
    if hasattr(router, "route"):
        return router if hasattr(router, "explain") else _Explained(router)
    if callable(router):
        return FunctionRouter(router)
    raise AdapterError(f"{router!r:.60} is not a router: expected an object with .route(text) -> str "
                       "(e.g. lh.make_router('keyword')) or a function text -> adapter name.")


class _Explained:
    """A router without ``explain``: the explanation is just its route."""

    def __init__(self, router):
        self.router = router
        self.routes = getattr(router, "routes", [])

    def route(self, text: str) -> str:
        return self.router.route(text)

    def explain(self, text: str) -> str:
        return self.router.route(text)


class _Router:
    """``route`` and ``explain`` from the subclass's ``_decide(text) -> (route, one-line reason)``."""

    def route(self, text: str) -> str:
        """The route name for ``text``. Raises ``PromptError`` for a non-string or empty prompt."""
        return self._decide(text)[0]

    def explain(self, text: str) -> str:
        """One line (in Russian, a notebook shows it): the route and what decided it."""
        return self._decide(text)[1]


class KeywordRouter(_Router):
    """Route by keyword stems. The route with the most distinct matching keywords wins; a tie goes
    to the route listed first in ``rules`` (json, coding, support — the cheat-sheet's if/elif order);
    no match → ``default``.

    ``rules``: ``{route: [keywords]}`` (see ``DEFAULT_RULES`` for the keyword syntax), replacing the
    built-in rules when given. ``default`` may be a route without keywords (e.g. "base").
    """

    def __init__(self, rules: Mapping[str, Iterable[str]] | None = None, default: str = "support"):
        rules = DEFAULT_RULES if rules is None else rules
        self.rules = {r: (kws,) if isinstance(kws, str) else tuple(kws) for r, kws in rules.items()}
        keywords = [k for ks in self.rules.values() for k in ks]
        if not self.rules or not all(isinstance(k, str) and k.strip("* ") for k in keywords):
            raise AdapterError(f"Keyword rules must map route names to non-empty keyword strings, got "
                               f"{rules!r:.200}. Example: {{'json': ['json', 'схем'], "
                               "'coding': ['код', 'bug']}.")
        self.default = default
        self.routes = list(self.rules) + ([default] if default not in self.rules else [])
        self._patterns = {r: [(k, _keyword_pattern(k)) for k in ks] for r, ks in self.rules.items()}

    def matches(self, text: str) -> dict[str, list[tuple[str, str]]]:
        """``{route: [(keyword, the word it matched), ...]}`` for every route with a match."""
        norm = normalize(check_prompt(text))
        found = {}
        for route, pats in self._patterns.items():
            hits = [(k, m.group(0)) for k, p in pats if (m := p.search(norm))]
            if hits:
                found[route] = hits
        return found

    def _decide(self, text: str) -> tuple[str, str]:
        found = self.matches(text)
        if not found:
            return self.default, f"{self.default}: ни одно ключевое слово не подошло — маршрут по умолчанию"
        best = max(found, key=lambda r: len(found[r]))     # first route wins a tie
        why = ", ".join(f"«{k}»" + (f" (в слове «{w}»)" if w != normalize(k) else "") for k, w in found[best])
        label = "ключевое слово" if len(found[best]) == 1 else "ключевые слова"
        others = "; ".join(f"{r}: " + ", ".join(f"«{k}»" for k, _ in hits)
                           for r, hits in found.items() if r != best)
        return best, f"{best}: {label} {why}" + (f"; совпали также {others}" if others else "")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{r} {len(k)}" for r, k in self.rules.items())
        return f"KeywordRouter(ключевых слов: {sizes}; по умолчанию {self.default!r})"


class SemanticRouter(_Router):
    """A classifier on character n-grams: scikit-learn's ``LogisticRegression`` trained at construction on
    labelled example prompts (``make_router("classifier")``; the class keeps its older name).

    Features: character n-gram TF-IDF of the prompt (``TfidfVectorizer(analyzer="char_wb")``); how many
    keywords of each route match (scaled by ``keyword_weight``); with ``model`` and ``tokenizer`` also the
    model's mean-pooled hidden states at ``layer`` (``None``: 80% of the depth; base weights only, a
    PeftModel's active adapter is left alone), standardised and scaled by ``hidden_weight``.
    ``examples``: ``{route: [texts]}``, dicts with "text"/"route", or pairs; ``None`` uses the
    shipped EN+RU ``router_examples.jsonl``. When the top probability is below ``threshold``, the keyword
    router decides if a keyword matches, else ``default``. ``threshold=0.4`` and ``C=100`` (inverse L2
    strength) were the best pair in a 4-fold cross-validation on the examples. L-BFGS on one thread with
    a fixed ``random_state``: the same examples give the same model.
    """

    def __init__(self, examples=None, model=None, tokenizer=None, threshold: float = 0.4,
                 rules: Mapping[str, Iterable[str]] | None = None, default: str = "support",
                 keyword_weight: float = 0.5, layer: int | None = None, hidden_weight: float = 1.0,
                 C: float = 100.0):
        if (model is None) != (tokenizer is None):
            raise AdapterError("SemanticRouter needs both model and tokenizer (or neither, for n-grams "
                               f"only); got model={type(model).__name__}, "
                               f"tokenizer={type(tokenizer).__name__}.")
        pairs = _pairs(load_labelled("router_examples") if examples is None else examples)
        texts = [check_prompt(t) for t, _ in pairs]
        self.classes = list(dict.fromkeys(r for _, r in pairs))
        if len(self.classes) < 2:
            raise AdapterError(f"SemanticRouter needs examples for at least two routes, got {self.classes}.")
        self.threshold, self.default = float(threshold), default
        self.keyword = KeywordRouter(rules, default)
        self.routes = self.classes + [r for r in self.keyword.routes if r not in self.classes]
        self.model, self.tokenizer, self.layer, self.hidden_weight = model, tokenizer, layer, hidden_weight
        self.keyword_weight = keyword_weight
        self.ngrams = char_ngrams().fit(texts)
        H = None
        if model is not None:
            H = hidden_state_features(model, tokenizer, texts, layer)
            self._mu, self._sd = H.mean(0), H.std(0) + 1e-6
        y = np.array([self.classes.index(r) for _, r in pairs])     # classes_ keep the examples' order
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):    # ~100 rows: threads only fight (20x slower on a busy 2-core machine)
            self.clf = LogisticRegression(C=C, max_iter=2000, random_state=0).fit(self._features(texts, H), y)

    def _features(self, texts: list[str], H: np.ndarray | None = None):
        from scipy import sparse

        hits = [self.keyword.matches(t) for t in texts]
        counts = np.array([[len(h.get(r, ())) for r in self.classes] for h in hits], dtype=float)
        parts = [self.ngrams.transform(texts), sparse.csr_matrix(self.keyword_weight * counts)]
        if self.model is not None:
            if H is None:
                H = hidden_state_features(self.model, self.tokenizer, texts, self.layer)
            H = (H - self._mu) / self._sd
            H /= np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-12)
            parts.append(sparse.csr_matrix(self.hidden_weight * H))
        return sparse.hstack(parts, format="csr")

    def scores(self, text: str) -> dict[str, float]:
        """``{route: probability}`` from the classifier (sums to 1; no fallback applied)."""
        p = self.clf.predict_proba(self._features([check_prompt(text)]))[0]
        return {r: float(v) for r, v in zip(self.classes, p)}

    def _decide(self, text: str) -> tuple[str, str]:
        s = self.scores(text)
        best = max(s, key=s.get)
        shown = ", ".join(f"{r} {p:.2f}" for r, p in s.items())
        if s[best] >= self.threshold:
            return best, (f"{best}: классификатор, вероятность {s[best]:.2f} ≥ порога {self.threshold:.2f} "
                          f"({shown})")
        route, why = self.keyword._decide(text)
        return route, (f"{route}: классификатор не уверен (лучший — {best} с вероятностью {s[best]:.2f} < порога "
                       f"{self.threshold:.2f}; {shown}), решает роутер по ключевым словам → {why}")

    def __repr__(self) -> str:
        feats = "классификатор на символьных n-граммах + ключевые слова"
        if self.model is not None:
            feats += (" + скрытые состояния базовой модели (слой "
                      f"{'по умолчанию' if self.layer is None else self.layer})")
        return (f"SemanticRouter({feats}; маршруты: {', '.join(self.classes)}; порог {self.threshold}; "
                f"по умолчанию {self.default!r})")


def make_router(kind: str = "keyword", **kwargs):
    """``make_router("keyword", rules=None, default="support")`` → ``KeywordRouter``;
    ``make_router("classifier", model=None, tokenizer=None, examples=None, threshold=0.4, ...)`` →
    ``SemanticRouter``, the classifier on character n-grams (``"semantic"``: the same kind, its older name)."""
    kinds = {"keyword": KeywordRouter, "classifier": SemanticRouter, "semantic": SemanticRouter}
    if kind not in kinds:
        raise AdapterError(f"Unknown router kind {kind!r}; expected one of {sorted(kinds)}.")
    return kinds[kind](**kwargs)


class Confusion:
    """A confusion matrix: ``matrix[i][j]`` counts prompts of true route ``labels[i]`` routed to
    ``labels[j]``. ``mistakes`` lists ``(text, true, predicted)``; ``plot(ax=None)`` draws it; it prints
    as a table (plain text, or HTML in a notebook)."""

    corner = "верный \\ выбранный"

    def __init__(self, labels: list[str], matrix: np.ndarray, mistakes: list[tuple[str, str, str]]):
        self.labels, self.matrix, self.mistakes = labels, matrix, mistakes

    def rows(self) -> list[dict]:
        """One dict per true route: ``{corner: route, <routed-to route>: count, ...}`` (for ``lora_helpers.tables``)."""
        return [{self.corner: x, **{y: int(v) for y, v in zip(self.labels, row)}}
                for x, row in zip(self.labels, self.matrix)]

    def _columns(self) -> dict:
        return {self.corner: self.corner, **{x: x for x in self.labels}}

    def __repr__(self) -> str:
        return tables.text(self.rows(), self._columns())

    def _repr_html_(self) -> str:
        return tables.html(self.rows(), self._columns())

    def plot(self, ax=None, title: str | None = None):
        """Draw the matrix with counts in the cells; returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(1.2 * len(self.labels) + 2, 1.1 * len(self.labels) + 1.5))
        ax.imshow(self.matrix, cmap="Blues")
        ticks = range(len(self.labels))
        ax.set_xticks(ticks, self.labels)
        ax.set_yticks(ticks, self.labels)
        ax.set_xlabel("куда направил роутер")
        ax.set_ylabel("верный маршрут")
        top = self.matrix.max() or 1
        for i in ticks:
            for j in ticks:
                v = self.matrix[i, j]
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
        if title:
            ax.set_title(title)
        return ax


def evaluate_router(router, labelled=None) -> tuple[float, Confusion]:
    """Route every labelled prompt with ``router`` (a router object or a plain ``str -> str`` function);
    return ``(accuracy, Confusion)``.

    ``labelled``: ``{route: [texts]}``, dicts with "text"/"route", or (text, route) pairs;
    ``None`` uses the shipped EN+RU evaluation set ``router_eval.jsonl``.
    """
    router = as_router(router)
    pairs = _pairs(load_labelled("router_eval") if labelled is None else labelled)
    predicted = [router.route(t) for t, _ in pairs]
    truth = [r for _, r in pairs]
    labels = list(dict.fromkeys([*getattr(router, "routes", []), *truth, *predicted]))
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(truth, predicted):
        matrix[labels.index(t), labels.index(p)] += 1
    mistakes = [(text, t, p) for (text, t), p in zip(pairs, predicted) if t != p]
    return float(np.trace(matrix) / len(pairs)), Confusion(labels, matrix, mistakes)
