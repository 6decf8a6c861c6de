"""Notebook 03's exercise: the learner writes a router (a plain function text -> route) and checks it here.

``check_router(fn)`` routes two small labelled EN+RU sets, both kept apart from the router's training examples
and evaluation set. The practice set (``EXERCISE_SET``) is reported per route, with at most two example misses
shown — enough to see the kind of mistake, not a list of words to copy. The held-out set decides the verdict
and is never printed; it lives in ``lora_helpers/data/router_exercise_heldout.jsonl``, not in this file, so
that reading the worked solution here (``solution_router``) does not show it, and a router that memorises
the shown misses does not pass. The learner's own scenarios: ``check_router(fn, examples=..., heldout=...)``. SQL has no place
in this three-route exercise: notebook 04 makes ``sql`` a route (and an adapter) of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import AdapterError
from ..shipped import load_labelled
from ..router import _pairs as router_pairs

THRESHOLD = 0.8  # 15 of the 18 held-out prompts
HELDOUT_DATA = "router_exercise_heldout"  # lora_helpers/data/<this>.jsonl

# Six prompts per route, half English, half Russian. Several need more than the word «json» or «код»:
# a JSON task without the word, code without «код», and support questions about a promo code or an SMS code.
EXERCISE_SET: list[tuple[str, str]] = [
    ("Return the result as JSON: name Maria, age 31.", "json"),
    ("Extract the fields name and email from: Tom Lee, tom@mail.com.", "json"),
    ("Turn this into YAML: host localhost, port 8080.", "json"),
    ("Верни JSON с полями title и year: «Сталкер», 1979.", "json"),
    ("Составь схему данных для карточки книги.", "json"),
    ("Разбери адрес на поля: Москва, ул. Ленина, д. 5.", "json"),
    ("Write a Python function that checks whether a number is prime.", "coding"),
    ("Fix the bug in this loop: for i in range(10) print(i)", "coding"),
    ("Add type hints to this Python script.", "coding"),
    ("Напиши функцию, которая считает факториал.", "coding"),
    ("В этом коде ошибка: def f(x) return x", "coding"),
    ("Отрефактори скрипт, он слишком длинный.", "coding"),
    ("I forgot my password and cannot log in.", "support"),
    ("My promo code does not work at checkout.", "support"),
    ("Please cancel my subscription.", "support"),
    ("Где мой заказ? Прошла уже неделя.", "support"),
    ("Мне дважды списали деньги за покупку.", "support"),
    ("Не приходит код подтверждения по SMS.", "support"),
]


SHOWN_MISSES = 2  # example misses printed from the practice set


def heldout_set() -> list[tuple[str, str]]:
    """The held-out (prompt, route) pairs that decide the default verdict: six per route, half English, half
    Russian, with the practice set's kinds of trap. Read from a data file, never printed."""
    return router_pairs(load_labelled(HELDOUT_DATA))


def solution_router(text: str) -> str:
    """A worked solution: a few keyword stems per route, checked in order (support phrases with «код» first)."""
    t = text.lower()  # "JSON" and "json" alike
    # Substrings match inside words: "script" would catch "subscription", so only «скрипт» is used.
    if any(w in t for w in ("json", "yaml", "csv", "xml", "схем", "поля", "полей", "field")):
        return "json"
    if any(w in t for w in ("промокод", "promo code", "код подтвержд", "sms")):
        return "support"
    if any(w in t for w in ("код", "code", "bug", "баг", "python", "функци", "function", "скрипт",
                            "рефактор")):
        return "coding"
    return "support"


@dataclass
class RouterCheck:
    """The result of :func:`check_router`; true when the router passed.

    ``accuracy``/``total`` are on the set that decides (the held-out one when there is one); ``misses`` are
    the practice set's misses (prompt, expected, what it got), all of them, for your own code to look at.
    """
    passed: bool
    accuracy: float
    threshold: float
    total: int
    misses: list[tuple[str, str, str]] = field(default_factory=list)
    per_route: dict[str, tuple[int, int]] = field(default_factory=dict)  # practice set: route -> (right, total)
    held_out: bool = False  # whether a separate, unshown set decided

    def __bool__(self) -> bool:
        return self.passed

    def report(self, shown: int = SHOWN_MISSES) -> str:
        """The Russian verdict that ``check_router`` prints."""
        counts = ", ".join(f"{route} {right} из {n}" for route, (right, n) in self.per_route.items())
        lines = [f"Тренировочный набор: {counts}."]
        if self.misses:
            lines.append(f"Примеры ошибок ({min(shown, len(self.misses))} из {len(self.misses)}):")
            lines += [f"  • «{p}» → ожидали {exp}, получили {got}" for p, exp, got in _spread(self.misses, shown)]
        right = round(self.accuracy * self.total)
        where = "Проверочный набор (его запросы не показываются)" if self.held_out else "Итог"
        head = (f"{where}: верно {right} из {self.total} (точность {self.accuracy:.2f}, "
                f"нужно не меньше {self.threshold:.2f}).")
        lines.append(("🎉 Отлично, роутер прошёл проверку! " if self.passed else "❌ Пока не проходит. ") + head)
        if not self.passed:
            lines.append("Подумайте, какими ещё словами люди просят то же самое (и не забудьте text.lower()), "
                         "затем запустите ячейку с роутером и эту ячейку снова.")
        return "\n".join(lines)


def _spread(misses, n: int) -> list[tuple[str, str, str]]:
    """Up to ``n`` misses, one per expected route first, so the examples show different kinds of mistake."""
    first = list({exp: (p, exp, got) for p, exp, got in reversed(misses)}.values())[::-1]
    return (first + [m for m in misses if m not in first])[:n]


def _pairs(examples) -> list[tuple[str, str]]:
    if examples is None:
        return list(EXERCISE_SET)
    try:
        pairs = router_pairs(examples)
    except AdapterError:  # an empty set: the message below says what is expected
        pairs = []
    if not pairs or not all(len(p) == 2 and all(isinstance(s, str) and s.strip() for s in p) for p in pairs):
        raise AdapterError(f"examples must be {{route: [prompts]}} or (prompt, route) pairs of non-empty strings, "
                           f"got {examples!r:.200}. Example: {{'json': ['Верни JSON'], 'coding': ['Напиши код']}}.")
    return pairs


def _as_function(router):
    if callable(router) and not hasattr(router, "route"):
        return router
    if callable(getattr(router, "route", None)):
        return router.route
    raise AdapterError(f"check_router needs a function that takes the prompt text and returns a route name, "
                       f"got {type(router).__name__} ({router!r:.60}). Define one, e.g. "
                       "def my_router(text): return 'json' if 'json' in text.lower() else 'support', "
                       "and pass the function itself: check_router(my_router) (no parentheses after my_router).")


def _answer(fn, text: str) -> str:
    """What the learner's function gave for ``text``, as shown in a miss (errors and non-strings described)."""
    try:
        got = fn(text)
    except Exception as e:  # the learner's code: any error becomes a visible miss, not a crash
        return f"ошибку {type(e).__name__}: {e}"
    if isinstance(got, str):
        return got
    return f"{got!r} (не строку: функция должна вернуть название маршрута, например \"json\")"


def _score(fn, pairs) -> tuple[list[tuple[str, str, str]], dict[str, tuple[int, int]]]:
    misses, per_route = [], {}
    for text, expected in pairs:
        got = _answer(fn, text)
        right, n = per_route.get(expected, (0, 0))
        per_route[expected] = (right + (got == expected), n + 1)
        if got != expected:
            misses.append((text, expected, got))
    return misses, per_route


def check_router(router, examples=None, heldout=None, threshold: float = THRESHOLD,
                 verbose: bool = True) -> RouterCheck:
    """Route labelled prompts with ``router`` and print a Russian verdict.

    ``router``: a function text -> route name (or any object with ``.route``). ``examples``: the practice
    set, reported per route with at most two example misses (default ``EXERCISE_SET``); ``heldout``: the
    set that decides, never printed (default ``heldout_set()`` when ``examples`` is None; with your own
    ``examples`` and no ``heldout``, the examples decide). Both take ``{route: [prompts]}`` or (prompt, route)
    pairs. An exception or a non-string from the function counts as a miss. Returns a ``RouterCheck``.
    """
    fn = _as_function(router)
    practice = _pairs(examples)
    decider = _pairs(heldout) if heldout is not None else (heldout_set() if examples is None else None)
    if not 0 < float(threshold) <= 1:
        raise AdapterError(f"threshold must be in (0, 1], got {threshold!r}; the default is {THRESHOLD}.")
    misses, per_route = _score(fn, practice)
    decisive_misses = _score(fn, decider)[0] if decider is not None else misses
    total = len(decider if decider is not None else practice)
    accuracy = 1 - len(decisive_misses) / total
    result = RouterCheck(accuracy >= threshold - 1e-9, accuracy, float(threshold), total, misses, per_route,
                         held_out=decider is not None)
    if verbose:
        print(result.report())
    return result
