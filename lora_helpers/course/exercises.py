"""Notebook 03's exercise: the learner writes a router (a plain function text -> route) and checks it here.

``check_router(fn)`` routes every prompt of a small labelled EN+RU set (``EXERCISE_SET``, kept apart from
the router's training examples and evaluation set), prints a Russian verdict — the accuracy, and every
prompt it got wrong — and returns a :class:`RouterCheck`. ``solution_router`` is a worked solution.
The learner's own scenarios: ``check_router(fn, examples={"route": [prompts], ...})``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import AdapterError
from ..router import _pairs as router_pairs

THRESHOLD = 0.8  # 15 of the 18 shipped prompts

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
    ("Why does my SQL query return duplicate rows?", "coding"),
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


def solution_router(text: str) -> str:
    """A worked solution: a few keyword stems per route, checked in order (support phrases with «код» first)."""
    t = text.lower()  # "JSON" and "json" alike
    # Substrings match inside words: "script" would catch "subscription", so only «скрипт» is used.
    if any(w in t for w in ("json", "yaml", "csv", "xml", "схем", "поля", "полей", "field")):
        return "json"
    if any(w in t for w in ("промокод", "promo code", "код подтвержд", "sms")):
        return "support"
    if any(w in t for w in ("код", "code", "bug", "баг", "python", "функци", "function", "sql",
                            "скрипт", "рефактор")):
        return "coding"
    return "support"


@dataclass
class RouterCheck:
    """The result of :func:`check_router`; true when the router passed."""
    passed: bool
    accuracy: float
    threshold: float
    total: int
    misses: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt, expected, what it got)

    def __bool__(self) -> bool:
        return self.passed

    def report(self) -> str:
        """The Russian verdict that ``check_router`` prints."""
        right = self.total - len(self.misses)
        head = f"Верно {right} из {self.total} (точность {self.accuracy:.2f}, нужно не меньше {self.threshold:.2f})."
        lines = [("🎉 Отлично, роутер прошёл проверку! " if self.passed else "❌ Пока не проходит. ") + head]
        if self.misses:
            lines.append("Ошибки:" if not self.passed else "Осталось ошибок:")
            lines += [f"  • «{p}» → ожидали {exp}, получили {got}" for p, exp, got in self.misses]
        if not self.passed:
            lines.append("Добавьте слова-признаки для этих запросов (и не забудьте text.lower()), "
                         "затем запустите ячейку с роутером и эту ячейку снова.")
        elif self.misses:
            lines.append("Ключевые слова не всесильны: такие запросы лучше ловит классификатор.")
        return "\n".join(lines)


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


def check_router(router, examples=None, threshold: float = THRESHOLD, verbose: bool = True) -> RouterCheck:
    """Route every labelled prompt with ``router`` and print a Russian verdict listing the misses.

    ``router``: a function text -> route name (or any object with ``.route``). ``examples``: your own
    ``{route: [prompts]}`` or (prompt, route) pairs; ``None`` uses ``EXERCISE_SET`` (json, coding, support).
    An exception or a non-string from the function counts as a miss and is shown. Returns a ``RouterCheck``.
    """
    fn = _as_function(router)
    pairs = _pairs(examples)
    if not 0 < float(threshold) <= 1:
        raise AdapterError(f"threshold must be in (0, 1], got {threshold!r}; the default is {THRESHOLD}.")
    misses = []
    for text, expected in pairs:
        got = _answer(fn, text)
        if got != expected:
            misses.append((text, expected, got))
    accuracy = 1 - len(misses) / len(pairs)
    result = RouterCheck(accuracy >= threshold - 1e-9, accuracy, float(threshold), len(pairs), misses)
    if verbose:
        print(result.report())
    return result
