"""Notebook 04's scenario: the text-to-SQL data, ``check_sql``, and how the test copies shorten its training."""
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from lora_helpers.course import sql
from lora_helpers.course.sql import TABLES, check_sql, demo_db, load_sql, tables_read
from lora_helpers.errors import AdapterError

ROOT = Path(__file__).resolve().parent.parent
NB04 = ROOT / "04_own_router_project.ipynb"
sys.path.insert(0, str(ROOT / "tools"))
import notebooks_for_base  # noqa: E402

TRAIN = load_sql("train")
HELDOUT = load_sql("heldout")


# ----------------------------------------------------------------------------- the data
def test_data_sizes_and_fields():
    assert 40 <= len(TRAIN) <= 80 and len(HELDOUT) >= 10
    assert all(set(r) == {"prompt", "reply"} for r in TRAIN)
    assert all(set(r) == {"prompt", "table", "sql"} and r["table"] in TABLES for r in HELDOUT)


def test_heldout_prompts_are_never_trained_on():
    def norm(t):
        return " ".join(t.lower().replace("ё", "е").strip(" .?!").split())
    trained = {norm(r["prompt"]) for r in TRAIN}
    assert not [r["prompt"] for r in HELDOUT if norm(r["prompt"]) in trained]


@pytest.mark.parametrize("row", TRAIN, ids=lambda r: r["prompt"][:40])
def test_every_training_reply_is_the_house_style_and_passes_the_check(row):
    reply = row["reply"]
    assert "\n" not in reply and reply.endswith(";") and reply.startswith("SELECT ")
    main = sorted(tables_read(reply))[0]
    verdict = check_sql(reply, main, reply)
    assert verdict.ok and verdict.same_result, verdict.reason


@pytest.mark.parametrize("row", HELDOUT, ids=lambda r: r["prompt"][:40])
def test_every_reference_query_passes_and_returns_rows(row):
    verdict = check_sql(row["sql"], row["table"], row["sql"])
    assert verdict.ok and verdict.same_result is True, verdict.reason
    assert sql.run_query(demo_db(), row["sql"]), "a reference with no rows cannot tell right from wrong"


def test_references_are_told_apart_by_their_rows():
    """Two different held-out questions on one table give different rows, so same_result means something."""
    rows = {}
    for r in HELDOUT:
        rows.setdefault(r["table"], []).append(repr(sql.run_query(demo_db(), r["sql"])))
    for table, results in rows.items():
        assert len(set(results)) == len(results), table


# ----------------------------------------------------------------------------- check_sql
GOOD = "SELECT * FROM customers WHERE city = 'Berlin';"


@pytest.mark.parametrize("reply, form, runs, table", [
    (GOOD, True, True, True),
    ("  select name from customers where city = 'Berlin'  ", True, True, True),   # no ';', lower case
    ("SELECT name FROM customers WHERE city = 'a;b';", True, True, True),           # ';' inside quotes
    ("```sql\n" + GOOD + "\n```", False, False, False),                              # fenced
    ("Here is the query: " + GOOD, False, False, False),                            # prose first
    (GOOD + " This returns every customer in Berlin.", False, False, False),        # prose after
    (GOOD + " DELETE FROM customers;", False, False, False),                        # a second statement
    ("DELETE FROM customers WHERE city = 'Berlin';", False, False, False),           # not a SELECT
    ("SELECT * FROM customer WHERE city = 'Berlin';", True, False, False),           # no such table
    ("SELECT * FROM customers WHERE town = 'Berlin';", True, False, False),          # no such column
    ("SELECT * FROM orders WHERE status = 'shipped';", True, True, False),           # wrong table
    ("", False, False, False),
])
def test_check_sql_verdicts(reply, form, runs, table):
    v = check_sql(reply, "customers")
    assert (v.form, v.runs, v.table) == (form, runs, table), v.reason
    assert v.ok == (form and runs and table) == bool(v)
    assert v.reason


def test_join_reads_both_tables():
    reply = ("SELECT orders.id, customers.name FROM orders JOIN customers ON orders.customer_id = customers.id;")
    assert tables_read(reply) == {"orders", "customers"}
    assert check_sql(reply, "customers").ok and check_sql(reply, "orders").ok
    assert not check_sql(reply, "products").ok


def test_same_result_ignores_row_order_and_float_noise_but_not_content():
    ref = "SELECT name FROM customers WHERE country = 'Germany';"
    assert check_sql("SELECT name FROM customers WHERE country = 'Germany' ORDER BY name DESC;", "customers",
                     ref).same_result is True
    assert check_sql("SELECT name FROM customers WHERE city = 'Berlin';", "customers", ref).same_result is False
    assert check_sql("SELECT * FROM customers WHERE country = 'Germany';", "customers", ref).same_result is False
    assert check_sql("SELECT AVG(price) * 1.0 FROM products;", "products",
                     "SELECT SUM(price) / COUNT(*) FROM products;").same_result is True
    assert check_sql(GOOD, "customers").same_result is None  # no reference given


def test_a_runaway_query_is_stopped(monkeypatch):
    monkeypatch.setattr(sql, "TIMEOUT_S", 0.01)
    cross = "SELECT COUNT(*) FROM " + ", ".join(f"customers t{i}" for i in range(9)) + ";"  # 8**9 rows
    v = check_sql(cross, "customers")
    assert v.form and not v.runs and "interrupted" in v.reason


def test_check_sql_never_changes_the_demo_database():
    check_sql("SELECT * FROM customers; DROP TABLE customers;", "customers")
    assert check_sql(GOOD, "customers").ok
    db = demo_db()
    with pytest.raises(sqlite3.Error):
        sql.run_query(db, "SELECT * FROM customers; DROP TABLE customers;")
    assert sql.run_query(db, "SELECT COUNT(*) FROM customers;") == [(len(sql.ROWS["customers"]),)]


@pytest.mark.parametrize("reply, table", [(None, "customers"), (["SELECT 1"], "customers"), (GOOD, "clients")])
def test_check_sql_bad_input_is_a_clear_error(reply, table):
    with pytest.raises(AdapterError, match="str|Unknown table"):
        check_sql(reply, table)


def test_unknown_split():
    with pytest.raises(AdapterError, match="train.*heldout"):
        load_sql("test")


# ----------------------------------------------------------------------------- the notebook's frame
def _cells(path):
    return json.loads(Path(path).read_text())["cells"]


def _tags(cell):
    return set(cell["metadata"].get("tags", []))


def test_notebook_04_checks_enough_base_independent_outputs():
    checked = [c for c in _cells(NB04) if {"nbval-check-output", "any-base"} <= _tags(c)]
    assert len(checked) >= 4 and all(c["outputs"] for c in checked)


def test_test_copies_shorten_04s_training_and_keep_its_checks(tmp_path):
    """make test: --same-base keeps every checked output; TRAIN_STEPS=3 reaches the training loop's form field."""
    copy = notebooks_for_base.prepare(tmp_path, {"TRAIN_STEPS": "3"}, names=[NB04.name], same_base=True)[0]
    original, short = _cells(NB04), _cells(copy)
    assert [_tags(c) for c in short] == [_tags(c) for c in original]
    changed = [(a, b) for c, o in zip(short, original)
               for a, b in zip("".join(o["source"]).splitlines(), "".join(c["source"]).splitlines()) if a != b]
    assert len(changed) == 1 and changed[0][0].startswith("TRAIN_STEPS = ")
    assert changed[0][1] == 'TRAIN_STEPS = 3  #@param {type:"integer"}'
    loop = next("".join(c["source"]) for c in short if "TRAIN_STEPS = 3" in "".join(c["source"]))
    assert "range(TRAIN_STEPS)" in loop, "the form field is what the training loop runs"


def test_other_base_copies_compare_only_any_base_outputs(tmp_path):
    copy = notebooks_for_base.prepare(tmp_path, names=[NB04.name])[0]
    checked = [c for c in _cells(copy) if "nbval-check-output" in _tags(c)]
    assert checked and all("any-base" in _tags(c) for c in checked)
    assert len(checked) < sum("nbval-check-output" in _tags(c) for c in _cells(NB04))
