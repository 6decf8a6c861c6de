"""Notebook 04's worked scenario: text-to-SQL for a small shop database.

* ``SCHEMA`` and ``demo_db()``: four tables (customers, products, orders, employees) with a few rows, in an
  in-memory SQLite database, so a reply can be run, not just read.
* ``load_sql("train" | "heldout")``: ``lora_helpers/data/sql_{split}.jsonl``; train rows are
  ``{"prompt", "reply"}``, held-out rows ``{"prompt", "table", "sql"}`` (the table the query must read and a
  reference query). Held-out prompts are never trained on (tests/test_own_project.py checks that).
* ``check_sql(reply, table, reference)``: is the reply one bare SELECT statement that SQLite runs on the demo
  database and that reads ``table``? And does it give the reference query's rows? The reasons are in
  Russian: the notebook prints them.
"""
from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from dataclasses import dataclass

from ..errors import AdapterError
from ..shipped import DATA_DIR

SCHEMA = """\
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, country TEXT, email TEXT, signup_date TEXT);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL, stock INTEGER);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER, quantity INTEGER,
                     total REAL, status TEXT, order_date TEXT);
CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, department TEXT, salary REAL, hire_date TEXT);
"""
ROWS = {
    "customers": [
        (1, "Anna Schmidt", "Berlin", "Germany", "anna@example.com", "2023-01-15"),
        (2, "Jonas Weber", "Munich", "Germany", "jonas@example.com", "2023-03-02"),
        (3, "Marie Dubois", "Paris", "France", "marie@example.com", "2022-11-20"),
        (4, "Luca Rossi", "Rome", "Italy", "luca@example.com", "2024-02-10"),
        (5, "Olga Ivanova", "Berlin", "Germany", "olga@example.com", "2024-05-05"),
        (6, "Pierre Martin", "Lyon", "France", "pierre@example.com", "2023-07-19"),
        (7, "Sofia Bianchi", "Milan", "Italy", "sofia@example.com", "2022-09-30"),
        (8, "Tom Lee", "London", "UK", "tom@example.com", "2024-01-08"),
    ],
    "products": [
        (1, "Laptop", "electronics", 1200.0, 5), (2, "Headphones", "electronics", 150.0, 40),
        (3, "Coffee Maker", "kitchen", 85.0, 12), (4, "Blender", "kitchen", 60.0, 0),
        (5, "Desk Chair", "furniture", 230.0, 7), (6, "Bookshelf", "furniture", 140.0, 3),
        (7, "Phone Case", "accessories", 20.0, 100), (8, "Backpack", "accessories", 55.0, 25),
    ],
    "orders": [
        (1, 1, 1, 1, 1200.0, "delivered", "2024-01-20"), (2, 1, 7, 3, 60.0, "delivered", "2024-02-02"),
        (3, 2, 3, 1, 85.0, "shipped", "2024-03-05"), (4, 3, 5, 2, 460.0, "pending", "2024-03-18"),
        (5, 4, 2, 1, 150.0, "cancelled", "2024-03-21"), (6, 5, 8, 2, 110.0, "shipped", "2024-04-02"),
        (7, 5, 6, 1, 140.0, "pending", "2024-04-11"), (8, 6, 1, 1, 1200.0, "shipped", "2024-05-09"),
        (9, 7, 4, 4, 240.0, "cancelled", "2024-05-30"), (10, 8, 2, 2, 300.0, "delivered", "2024-06-14"),
        (11, 5, 3, 1, 85.0, "delivered", "2024-06-20"), (12, 2, 7, 5, 100.0, "pending", "2024-07-01"),
    ],
    "employees": [
        (1, "Ivan Petrov", "sales", 52000.0, "2021-04-01"), (2, "Emma Brown", "sales", 61000.0, "2019-09-15"),
        (3, "Ali Khan", "support", 45000.0, "2022-01-10"), (4, "Nina Novak", "support", 47000.0, "2023-06-01"),
        (5, "Chen Wei", "engineering", 83000.0, "2020-02-17"), (6, "Sara Costa", "engineering", 91000.0, "2021-11-08"),
    ],
}
TABLES = tuple(ROWS)
TIMEOUT_S = 2.0  # a query from a model may be a cross join of everything: stop it


def demo_db() -> sqlite3.Connection:
    """A fresh in-memory SQLite database with ``SCHEMA`` and ``ROWS``."""
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    for table, rows in ROWS.items():
        db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    db.commit()
    return db


def load_sql(split: str = "train") -> list[dict]:
    """The rows of ``sql_train.jsonl`` or ``sql_heldout.jsonl``."""
    if split not in ("train", "heldout"):
        raise AdapterError(f"Unknown split {split!r}; expected 'train' or 'heldout'.")
    with open(DATA_DIR / f"sql_{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class SqlVerdict:
    """``ok``: one bare SELECT that runs and reads the expected table; ``same_result``: the reference's rows
    (None when no reference was given or the query did not run); ``reason``: the first failure, or a summary."""
    form: bool
    runs: bool
    table: bool
    same_result: bool | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.form and self.runs and self.table

    def __bool__(self) -> bool:
        return self.ok


def _statement_end(text: str) -> int | None:
    """Index of the first ``;`` outside quotes, or None."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            return i
    return None


def tables_read(sql: str) -> set[str]:
    """Lower-case names after FROM and JOIN."""
    return {t.lower() for t in re.findall(r"\b(?:from|join)\s+[\"`\[]?([A-Za-z_]\w*)", sql, re.I)}


def run_query(db: sqlite3.Connection, sql: str) -> list[tuple]:
    """The rows of ``sql`` (one statement), stopped after ``TIMEOUT_S``; raises ``sqlite3.Error``."""
    deadline = time.monotonic() + TIMEOUT_S
    db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.set_progress_handler(None, 0)


def _same_rows(a: list[tuple], b: list[tuple]) -> bool:
    def key(rows):
        return sorted(repr(tuple(round(v, 6) if isinstance(v, float) else v for v in r)) for r in rows)
    return key(a) == key(b)


def _snippet(text: str, width: int = 40) -> str:
    """The start of ``text`` on one line (a model's reply may run on for lines)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width] + "…"


def check_sql(reply: str, table: str, reference: str | None = None) -> SqlVerdict:
    """Check a model's reply to a text-to-SQL prompt against the demo database (see the module docstring)."""
    if not isinstance(reply, str):
        raise AdapterError(f"check_sql needs the reply as a str, got {type(reply).__name__}.")
    if table.lower() not in TABLES:
        raise AdapterError(f"Unknown table {table!r}; the demo database has {', '.join(TABLES)}.")
    text = reply.strip()
    if "```" in text:
        return SqlVerdict(False, False, False, None, "запрос в блоке ``` — нужен голый SQL без обёртки")
    if not re.match(r"select\b", text, re.I):
        return SqlVerdict(False, False, False, None, "ответ начинается не с SELECT")
    end = _statement_end(text)
    if end is not None and text[end + 1:].strip():
        return SqlVerdict(False, False, False, None, f"после запроса ещё текст: «{_snippet(text[end + 1:])}»")
    sql = text if end is None else text[:end + 1]
    with contextlib.closing(demo_db()) as db:
        try:
            rows = run_query(db, sql)
        except (sqlite3.Error, sqlite3.Warning) as e:
            return SqlVerdict(True, False, False, None, f"SQLite не выполнил запрос: {e}")
        read = tables_read(sql)
        if table.lower() not in read:
            return SqlVerdict(True, True, False, None,
                              f"читает {', '.join(sorted(read)) or 'ни одной таблицы'}, а нужна таблица {table}")
        same = None if reference is None else _same_rows(rows, run_query(db, reference))
    summary = {None: "", True: "; результат совпал с эталоном", False: "; результат не совпал с эталоном"}[same]
    return SqlVerdict(True, True, True, same, f"один SELECT, выполняется, таблица {table}{summary}")
