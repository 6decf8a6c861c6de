"""Notebook 04's tooling around the learner's scenario (``course/scenarios.py`` has ready ones).

* ``check_scenario(...)``: the names the ``my-scenario`` cell binds, checked before anything runs (clear
  ``AdapterError`` on a wrong shape), with a short summary; the reference replies must pass ``my_check``.
* ``router_sets(route, examples, heldout, course_routes)``: labelled prompts for the learner's route and the
  course routes kept (``COURSE_EXAMPLES`` / ``COURSE_HELDOUT``, written for this notebook);
  ``suggest_keywords``: words of a route's examples that no other route's examples use.
* ``run_check``: ``my_check`` on every held-out pair, printed with ✔/✘ per column; ``comparison``: the
  table of several rows (base, base + instruction, adapter); ``verdict``: against stated bars.
* ``course_checks(route, reply)``: the mixed batch's checks for the course routes, including
  ``asks_for_credentials`` (a help desk that asks for a password is a failure).
"""
from __future__ import annotations

import re

from ..errors import AdapterError
from ..names import check_name
from ..tables import text as text_table

ROUTER_BAR = 0.8   # as notebook 03's exercise: 80% of held-out prompts routed right
FORM_BAR = 0.8     # the adapter's first check on 80% of held-out pairs

COURSE_EXAMPLES = {
    "json": ["Return the answer as JSON with fields name and email",
             "Extract the name, age and city: Anna, 34, lives in Kazan.", "Convert this address into a JSON object",
             "Give me a JSON schema for a user profile", "Turn this list into YAML",
             "Parse the invoice into key/value fields", "Верни JSON с полями имя и город",
             "Опиши схему данных для карточки товара", "Извлеки поля name и phone из текста",
             "Преобразуй ответ в структурированный вид", "Format the result as a CSV row",
             "Сделай из этого текста JSON"],
    "coding": ["Write a Python function that reverses a string", "Fix the bug in my parser",
               "Refactor this script, it is too long", "Why does my code throw a KeyError?",
               "Write a regex that matches an email address", "Explain this stack trace",
               "How do I sort a dict by value in Python?", "Напиши функцию, которая считает факториал",
               "В этом коде баг, помогите", "Отрефактори этот класс", "Почему мой скрипт падает с исключением?",
               "Почему мой SQL-запрос возвращает дубликаты?"],
    "support": ["I forgot my password", "My order has not arrived yet", "How do I cancel my subscription?",
                "I was charged twice for one order", "The app does not let me log in", "Where is my refund?",
                "Не могу войти в личный кабинет", "Где мой заказ?", "Как отменить подписку?",
                "С карты списали деньги дважды", "Промокод не применяется при оплате",
                "Не приходит код подтверждения по SMS"],
}
COURSE_HELDOUT = {
    "json": ["Extract the product name and price as JSON", "Return a JSON array of the three cities mentioned",
             "Convert this table to YAML", "Structure this contact info: Tom Lee, tom@mail.com",
             "Верни ответ в формате JSON", "Разбери адрес на поля: Москва, ул. Ленина, д. 5",
             "Составь схему для заказа в интернет-магазине", "Pull out the date and amount from this receipt"],
    "coding": ["Write a function that checks whether a number is prime", "Debug this JavaScript snippet",
               "Why is my SQL query so slow?", "Add type hints to this Python code",
               "Напиши скрипт, который переименует файлы", "Исправь ошибку в функции сортировки",
               "Как написать unit-тест для этого класса?", "Перепиши цикл через list comprehension"],
    "support": ["My package was delivered to the wrong address", "I want a refund for my last order",
                "How do I change the email on my account?", "The payment page shows an error",
                "Мне пришёл не тот товар, что делать?", "Как сменить пароль?", "Заказ отменили без объяснения",
                "Когда вернут деньги за возврат?"],
}
# Substrings, checked in order by the notebook's keyword function (курс: «код» also finds «промокод»).
COURSE_KEYWORDS = {
    "json": ["json", "yaml", "csv", "схем", "schema", "поля", "fields", "структур"],
    "coding": ["python", "код", "code", "bug", "баг", "функци", "function", "скрипт", "script", "refactor",
               "рефактор", "regex", "почему мой", "why does my"],
    "support": ["password", "парол", "order", "заказ", "refund", "возврат", "login", "log in", "войти",
                "подписк", "subscription", "оплат", "charged", "списали"],
}
# One prompt per course route for the mixed batch.
MIXED_PROMPTS = {"json": "Extract the name and city: Olga lives in Samara.",
                 "coding": "Write a Python function that returns the sum of squares of a list.",
                 "support": "I did not get the password reset email."}


# ----------------------------------------------------------------------------- the scenario's names
def _texts(value, name: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, str) and t.strip() for t in value):
        raise AdapterError(f"{name} must be a non-empty list of prompt strings, got {value!r:.80}. "
                           f"Example: {name} = ['Show all customers from Berlin', ...].")
    return list(value)


def _pairs(value, name: str) -> list[dict]:
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(p, dict) and isinstance(p.get("prompt"), str) and isinstance(p.get("reply"), str)
        and p["prompt"].strip() and p["reply"].strip() for p in value)
    if not ok:
        raise AdapterError(f"{name} must be a non-empty list of dicts with str 'prompt' and 'reply', got "
                           f"{value!r:.80}. Example: {name} = [{{'prompt': 'Convert to ISO: May 3, 2024', "
                           "'reply': '2024-05-03'}, ...].")
    return list(value)


def columns(result) -> dict[str, bool]:
    """``my_check``'s result as ``{column: bool}``: a bool is one column, "проверка"."""
    if isinstance(result, bool):
        return {"проверка": result}
    if isinstance(result, dict) and result and all(isinstance(k, str) for k in result):
        try:
            return {k: bool(v) for k, v in result.items()}
        except Exception as e:  # e.g. a numpy array: truth value ambiguous
            raise AdapterError(f"my_check returned a dict whose values are not bools ({e}).") from e
    raise AdapterError(f"my_check must return a bool or a dict of named bools (one per column), got "
                       f"{result!r:.80}. Example: return {{'format': ok, 'same value': same}}.")


def check_scenario(route, router_examples, router_heldout, train_pairs, test_pairs, check,
                   course_routes=(), instruction: str = "") -> dict:
    """Check the names of the ``my-scenario`` cell and print a summary (in Russian); returns the check's
    columns. Raises ``AdapterError`` before anything is trained when something has the wrong shape."""
    check_name(route, "your route (MY_ROUTE)")
    if route in course_routes:
        raise AdapterError(f"MY_ROUTE={route!r} is also a course route {list(course_routes)}: "
                           "give your adapter a name of its own, e.g. 'my_" + route + "'.")
    examples, heldout = _texts(router_examples, "MY_ROUTER_EXAMPLES"), _texts(router_heldout, "MY_ROUTER_HELDOUT")
    train, test = _pairs(train_pairs, "MY_TRAIN_PAIRS"), _pairs(test_pairs, "MY_TEST_PAIRS")
    if not callable(check):
        raise AdapterError(f"my_check must be a function (reply, pair) -> bool or dict, got {check!r:.60}.")
    if not isinstance(instruction, str):
        raise AdapterError(f"MY_INSTRUCTION must be a str (or left out), got {type(instruction).__name__}.")
    marks = [columns(check(p["reply"], p)) for p in test]
    names = list(marks[0])
    if any(list(m) != names for m in marks):
        raise AdapterError(f"my_check must return the same columns for every pair; got {names} and others.")
    leaks = {p["prompt"] for p in train} & {p["prompt"] for p in test}
    leaks |= set(examples) & set(heldout)
    print(f"маршрут (и имя адаптера): {route}")
    print(f"примеров для роутера: {len(examples)}, отложенных: {len(heldout)}")
    print(f"пар для обучения: {len(train)}, отложенных пар: {len(test)}")
    print(f"колонки проверки: {', '.join(names)}")
    passed = sum(all(m.values()) for m in marks)
    print(f"эталонные ответы проходят вашу проверку: {passed} из {len(test)}")
    print("инструкция для базы:", "есть" if instruction.strip() else "нет (строка «база + инструкция» = база)")
    if leaks:
        print(f"⚠ {len(leaks)} отложенных запросов есть и среди обучающих — проверка выйдет завышенной")
    if passed < len(test):
        print("⚠ эталон не проходит вашу же проверку: исправьте my_check или эталонные ответы")
    return {n: n for n in names}


def router_sets(route: str, examples, heldout, course_routes) -> tuple[dict, dict]:
    """``({route: examples, <course route>: ...}, {route: heldout, ...})`` for the router and its evaluation."""
    unknown = [r for r in course_routes if r not in COURSE_EXAMPLES]
    if unknown or not course_routes:
        raise AdapterError(f"COURSE_ROUTES={list(course_routes)!r}: pick one or two of {list(COURSE_EXAMPLES)}.")
    return ({route: list(examples), **{r: COURSE_EXAMPLES[r] for r in course_routes}},
            {route: list(heldout), **{r: COURSE_HELDOUT[r] for r in course_routes}})


def _stems(text: str) -> set[str]:
    words = re.findall(r"[a-zа-я0-9]+", text.lower().replace("ё", "е"))
    return {w[:5] for w in words if len(w) >= 4 and not w.isdigit()}


def suggest_keywords(examples, others, n: int = 8) -> list[str]:
    """Up to ``n`` word beginnings (substrings) found in at least two of ``examples`` and in none of
    ``others``, most frequent first: a first set of rules for a route, to read and edit."""
    foreign = set().union(*map(_stems, others)) if others else set()
    counts: dict[str, int] = {}
    for text in examples:
        for s in _stems(text) - foreign:
            counts[s] = counts.get(s, 0) + 1
    ranked = sorted((s for s, c in counts.items() if c >= 2), key=lambda s: (-counts[s], s))
    return ranked[:n] or sorted(counts, key=lambda s: (-counts[s], s))[:n]


# ----------------------------------------------------------------------------- before / after
def _shown(reply: str, width: int = 70) -> str:
    flat = " ".join(reply.split()) or "(пустой ответ)"
    return flat if len(flat) <= width else flat[:width] + "…"


def run_check(check, pairs, replies, label: str, show: int | None = None) -> dict[str, int]:
    """``check`` on every (pair, reply): prints ✔/✘ per column for the first ``show`` pairs (all by default)
    and a summary line; returns ``{column: passed}`` plus ``"все проверки"``: pairs passing every column."""
    counts: dict[str, int] = {}
    every = 0
    for i, (pair, reply) in enumerate(zip(pairs, replies)):
        marks = columns(check(reply, pair))
        for name, ok in marks.items():
            counts[name] = counts.get(name, 0) + ok
        every += all(marks.values())
        if show is None or i < show:
            print(f"{' '.join('✔' if ok else '✘' for ok in marks.values())}  {_shown(pair['prompt'], 60)}\n"
                  f"     ответ: {_shown(reply)}")
    n = len(replies)
    print(f"{label}: " + "; ".join(f"{name} — {c} из {n}" for name, c in counts.items()))
    return {**counts, "все проверки": every}


def comparison(rows: dict[str, dict[str, int]], n: int) -> str:
    """A plain-text table: one row per label (base, base + instruction, adapter), one column per check."""
    names = list(next(iter(rows.values())))
    table = [{"": label, **{c: f"{counts[c]} из {n}" for c in names}} for label, counts in rows.items()]
    return text_table(table, {"": "", **{c: c for c in names}})


def verdict(router_accuracy: float, prompt_row: dict, adapter_row: dict, n: int,
            heldout_losses: list[float] | None = None) -> bool:
    """Print «готово» or what to try next, against ``ROUTER_BAR`` and ``FORM_BAR`` (see the notebook)."""
    first = next(iter(adapter_row))
    checks = [
        (router_accuracy >= ROUTER_BAR,
         f"роутер на отложенных запросах: {router_accuracy:.2f} (планка {ROUTER_BAR:.2f})",
         "добавьте примеры и ключевые слова тем маршрутам, которые роутер путает (матрица ошибок в разделе 2), "
         "и напишите новые отложенные запросы"),
        (adapter_row[first] >= FORM_BAR * n,
         f"адаптер, «{first}»: {adapter_row[first]} из {n} (планка {FORM_BAR:.0%})",
         "больше шагов (TRAIN_STEPS), если held-out loss ещё падал, или больше разных пар для обучения"),
        (adapter_row["все проверки"] > prompt_row["все проверки"],
         f"адаптер проходит все проверки: {adapter_row['все проверки']} из {n}, база с инструкцией: "
         f"{prompt_row['все проверки']} (адаптер должен быть лучше)",
         "база с хорошей инструкцией справляется не хуже — возможно, адаптер не нужен; или дайте ему больше "
         "данных и шагов"),
    ]
    for ok, line, _ in checks:
        print(("✔ " if ok else "✘ ") + line)
    if heldout_losses and len(heldout_losses) >= 3 and heldout_losses[-1] > min(heldout_losses):
        print("• held-out loss к концу вырос — похоже на переобучение: меньше шагов или больше данных")
    if all(ok for ok, _, _ in checks):
        print("Итог: готово ✔")
        return True
    print("Итог: пока не готово. Что попробовать:")
    for ok, _, tip in checks:
        if not ok:
            print("  •", tip)
    return False


# ----------------------------------------------------------------------------- the course routes' replies
def course_checks(route: str, reply: str) -> dict[str, bool]:
    """The checks the mixed batch prints for a course route's reply (``course/evaluate.py``'s, in Russian)."""
    from .checks_text import asks_for_credentials
    from .evaluate import check_coding, check_json, check_support
    if route == "json":
        return {"один JSON": check_json(reply).ok}
    if route == "coding":
        v = check_coding(reply)
        return {"блок python": v.form, "assert выполняются": v.ok}
    if route == "support":
        return {"приветствие и шаги": check_support(reply).ok,
                "не просит пароль или данные входа": not asks_for_credentials(reply)}
    raise AdapterError(f"No checks for route {route!r}; the course routes are {list(COURSE_EXAMPLES)}.")
