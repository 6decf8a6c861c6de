"""Ready scenarios for notebook 04's one editable cell: ``load(name)`` -> :class:`Scenario`.

A scenario is what the learner brings: a route (= adapter) name, labelled prompts for the router and held-out
ones to measure it, (prompt, reply) pairs to train on and held-out pairs to test on, a check
``check(reply, pair) -> bool | {column: bool}``, and optionally the instruction a good prompt would add and
keywords for the route. The catalogue:

* ``"sql"``: a question about the shop database -> one bare SELECT (``course/sql.py``); the check runs the
  reply in SQLite: "one SELECT on the schema" and "the reference's rows", two columns.
* ``"dates"``: a date written in words, in English or Russian -> the ISO date ``2024-03-05``; the check is a
  regular expression and a string comparison. A format the 135M base learns in ~30 steps: with notebook 04's
  loop (30 steps, batch 8, lr 2e-3) SmolLM2-135M gave 12 of 12 ISO dates, 10 of 12 right, where the base with
  the instruction gave 1 and 0 (2026-12-07).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import AdapterError


@dataclass
class Scenario:
    """Everything notebook 04's ``my-scenario`` cell binds (``MY_ROUTE`` = ``route``, and so on)."""
    route: str
    router_examples: list[str]
    router_heldout: list[str]
    train_pairs: list[dict]
    test_pairs: list[dict]
    check: Callable
    instruction: str = ""
    keywords: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- sql
SQL_ROUTER_EXAMPLES = [
    "Show all customers from Berlin", "How many orders were cancelled last month?",
    "List the five most expensive products", "Average salary per department",
    "Write a SQL query that counts customers per country", "Which employees were hired after 2022?",
    "Покажи всех клиентов из Берлина", "Сколько заказов в статусе pending?",
    "Выведи товары дороже 200 из таблицы products", "Напиши SQL-запрос: средняя сумма заказа",
    "Найди сотрудников отдела продаж", "Total revenue per product from the orders table",
]
SQL_ROUTER_HELDOUT = [
    "Show all products in the kitchen category", "Count employees in each department",
    "List customers who signed up in 2024", "What is the total of all delivered orders?",
    "Query the orders table for pending orders", "Покажи сотрудников с зарплатой выше 60000",
    "Сколько клиентов из Франции?", "Выведи пять самых дорогих товаров",
]
SQL_KEYWORDS = ["sql", "select", "таблиц", "table", "сколько", "how many", "average", "средн", "total",
                "покажи", "выведи", "show all", "list the", "customers", "клиент", "сотрудник", "employee",
                "товар", "product"]


def check_sql_pair(reply: str, pair: dict) -> dict:
    """Two columns: one bare SELECT that runs on the schema and reads the right table; the reference's rows."""
    from .sql import check_sql
    verdict = check_sql(reply, pair["table"], pair["reply"])
    return {"один SELECT по схеме": verdict.ok, "те же строки, что у эталона": bool(verdict.same_result)}


def _sql() -> Scenario:
    from .sql import SCHEMA, load_sql
    test = [{"prompt": r["prompt"], "reply": r["sql"], "table": r["table"]} for r in load_sql("heldout")]
    instruction = ("You write SQLite queries for this database:\n" + SCHEMA
                   + "Answer with one bare SELECT statement for the question: no explanation, no ``` block.")
    return Scenario("sql", list(SQL_ROUTER_EXAMPLES), list(SQL_ROUTER_HELDOUT), load_sql("train"), test,
                    check_sql_pair, instruction, list(SQL_KEYWORDS))


# ----------------------------------------------------------------------------- dates
MONTHS_EN = ("January February March April May June July August September October November December").split()
MONTHS_RU = ("января февраля марта апреля мая июня июля августа сентября октября ноября декабря").split()
# {d}: the date in words. Requests for the router, in both languages; some without the word "date".
_DATE_TEMPLATES = [
    "Write this date as YYYY-MM-DD: {d}", "Convert to an ISO date: {d}", "Normalize the date: {d}",
    "What is {d} in ISO 8601 format?", "Date for the database field, please: {d}",
    "Format the date {d} as year-month-day", "The invoice is dated {d}. Give the ISO date.",
    "Запиши дату в формате ГГГГ-ММ-ДД: {d}", "Переведи дату в формат ISO: {d}", "Нормализуй дату: {d}",
    "Как записать {d} в формате ISO 8601?", "Дата для поля в базе: {d}",
    "Договор подписан {d}. Нужна дата в формате ISO.", "Приведи дату {d} к виду год-месяц-день",
]
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date_words(rng: random.Random, y: int, m: int, d: int, russian: bool) -> str:
    if russian:
        return rng.choice([f"{d} {MONTHS_RU[m - 1]} {y} года", f"{d} {MONTHS_RU[m - 1]} {y} г.",
                           f"{d} {MONTHS_RU[m - 1]} {y}"])
    month = MONTHS_EN[m - 1]
    return rng.choice([f"{month} {d}, {y}", f"{d} {month} {y}", f"{month} {d} {y}"])


def date_pairs(n: int, seed: int) -> list[dict]:
    """``n`` pairs {prompt: a request with a date in words, reply: the ISO date}, the same for the same seed."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        y, m, d = rng.randint(2015, 2027), rng.randint(1, 12), rng.randint(1, 28)
        template = _DATE_TEMPLATES[i % len(_DATE_TEMPLATES)]
        russian = bool(re.search("[а-яА-Я]", template))
        pairs.append({"prompt": template.format(d=_date_words(rng, y, m, d, russian)),
                      "reply": f"{y:04d}-{m:02d}-{d:02d}"})
    return pairs


def check_date_pair(reply: str, pair: dict) -> dict:
    """Two columns: the reply is one ISO date and nothing else; it is the reference's date."""
    text = reply.strip()
    return {"только дата ГГГГ-ММ-ДД": bool(_ISO.fullmatch(text)), "та же дата": text == pair["reply"]}


def _dates() -> Scenario:
    train, test = date_pairs(48, seed=1), date_pairs(12, seed=2)
    router = [p["prompt"] for p in date_pairs(12, seed=3)]
    heldout = [p["prompt"] for p in date_pairs(8, seed=4)]
    instruction = "Answer with the date only, in the format YYYY-MM-DD (for example 2024-03-05), nothing else."
    return Scenario("dates", router, heldout, train, test, check_date_pair, instruction,
                    ["дат", "date", "iso", "yyyy", "гггг"])


BUILDERS = {"sql": _sql, "dates": _dates}


def load(name: str) -> Scenario:
    """A fresh copy of the catalogue's scenario ``name`` ("sql" or "dates")."""
    if name not in BUILDERS:
        raise AdapterError(f"Unknown scenario {name!r}; the catalogue has {', '.join(BUILDERS)}. "
                           "For your own scenario, write its lists and check in the cell instead.")
    return BUILDERS[name]()
