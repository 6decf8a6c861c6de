"""Notebook 04: the catalogue's scenarios (text-to-SQL data and ``check_sql``, dates), the tooling around the
learner's scenario, how the test copies shorten its training, and a run of the notebook with a scenario of our
own put into its one editable cell."""
import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest

from lora_helpers.course import project, scenarios, sql
from lora_helpers.course.checks_text import asks_for_credentials
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
    assert "range(1, TRAIN_STEPS + 1)" in loop, "the form field is what the training loop runs"


def test_other_base_copies_compare_only_any_base_outputs(tmp_path):
    copy = notebooks_for_base.prepare(tmp_path, names=[NB04.name])[0]
    checked = [c for c in _cells(copy) if "nbval-check-output" in _tags(c)]
    assert checked and all("any-base" in _tags(c) for c in checked)
    assert len(checked) < sum("nbval-check-output" in _tags(c) for c in _cells(NB04))


# ----------------------------------------------------------------------------- the catalogue
@pytest.mark.parametrize("name", list(scenarios.BUILDERS))
def test_catalogue_scenario_is_consistent(name):
    s = scenarios.load(name)
    assert s.route == name and s.instruction and s.keywords
    assert len(s.router_examples) >= 10 and len(s.router_heldout) >= 8
    assert 40 <= len(s.train_pairs) <= 80 and len(s.test_pairs) >= 10
    assert not {p["prompt"] for p in s.train_pairs} & {p["prompt"] for p in s.test_pairs}
    assert not set(s.router_examples) & set(s.router_heldout)
    for pair in s.test_pairs:
        marks = project.columns(s.check(pair["reply"], pair))
        assert len(marks) == 2 and all(marks.values()), (pair, marks)


def test_dates_check_tells_form_from_content():
    pair = {"prompt": "Convert to an ISO date: March 5, 2024", "reply": "2024-03-05"}
    check = scenarios.check_date_pair
    assert check("2024-03-05", pair) == {"только дата ГГГГ-ММ-ДД": True, "та же дата": True}
    assert list(check("2024-05-03", pair).values()) == [True, False]
    assert list(check("The date is 2024-03-05.", pair).values()) == [False, False]
    assert list(check("```\n2024-03-05\n```", pair).values()) == [False, False]


def test_dates_are_the_same_for_the_same_seed_and_russian_prompts_get_russian_months():
    assert scenarios.date_pairs(5, 1) == scenarios.date_pairs(5, 1) != scenarios.date_pairs(5, 2)
    for pair in scenarios.date_pairs(28, 9):
        y, m, d = map(int, pair["reply"].split("-"))
        months = scenarios.MONTHS_RU if re.search("[а-я]", pair["prompt"].split(":")[0]) else scenarios.MONTHS_EN
        assert months[m - 1] in pair["prompt"] and str(y) in pair["prompt"] and str(d) in pair["prompt"]


def test_sql_check_has_two_columns_from_check_sql():
    pair = {"prompt": "p", "reply": "SELECT * FROM customers WHERE city = 'Rome';", "table": "customers"}
    assert list(scenarios.check_sql_pair("SELECT * FROM customers WHERE city = 'Rome';", pair).values()) == [True, True]
    assert list(scenarios.check_sql_pair("SELECT * FROM customers;", pair).values()) == [True, False]
    assert list(scenarios.check_sql_pair("Sure! SELECT * FROM customers;", pair).values()) == [False, False]


def test_unknown_scenario_is_a_clear_error():
    with pytest.raises(AdapterError, match="sql, dates"):
        scenarios.load("weather")


# ----------------------------------------------------------------------------- the tooling around the one cell
PAIRS = [{"prompt": "Shout: hi", "reply": "HI"}, {"prompt": "Shout: ok", "reply": "OK"}]


def shout_check(reply, pair):
    return {"caps": reply.isupper(), "same": reply == pair["reply"]}


@pytest.mark.parametrize("result, expected", [(True, {"проверка": True}), ({"a": 1, "b": 0}, {"a": True, "b": False})])
def test_columns_normalises_bool_and_dict(result, expected):
    assert project.columns(result) == expected


@pytest.mark.parametrize("result", [None, "yes", 1, {}, {1: True}])
def test_columns_refuses_anything_else(result):
    with pytest.raises(AdapterError, match="bool or a dict"):
        project.columns(result)


def test_check_scenario_summary_and_columns(capsys):
    cols = project.check_scenario("shout", ["a", "b"], ["c"], PAIRS, PAIRS[:1], shout_check, ["coding"])
    out = capsys.readouterr().out
    assert list(cols) == ["caps", "same"] and "эталонные ответы проходят вашу проверку: 1 из 1" in out
    assert "⚠" in out, "a held-out pair that is also trained on is reported"


@pytest.mark.parametrize("change, match", [
    (dict(route="base"), "cannot name"), (dict(route="coding"), "course route"),
    (dict(router_examples=[]), "MY_ROUTER_EXAMPLES"), (dict(router_heldout="text"), "MY_ROUTER_HELDOUT"),
    (dict(train_pairs=[{"prompt": "x"}]), "MY_TRAIN_PAIRS"), (dict(test_pairs=[("a", "b")]), "MY_TEST_PAIRS"),
    (dict(check="yes"), "function"), (dict(check=lambda r, p: "ok"), "bool or a dict"),
    (dict(instruction=3), "MY_INSTRUCTION"),
])
def test_check_scenario_refuses_wrong_shapes(change, match):
    args = dict(route="shout", router_examples=["a"], router_heldout=["b"], train_pairs=PAIRS, test_pairs=PAIRS,
                check=shout_check, course_routes=["coding"], instruction="")
    args.update(change)
    with pytest.raises(AdapterError, match=match):
        project.check_scenario(**args)


def test_router_sets_follow_the_kept_course_routes():
    ex, held = project.router_sets("shout", ["a"], ["b"], ["json"])
    assert list(ex) == list(held) == ["shout", "json"]
    with pytest.raises(AdapterError, match="COURSE_ROUTES"):
        project.router_sets("shout", ["a"], ["b"], ["weather"])


def test_suggested_keywords_come_from_the_route_and_avoid_the_others():
    words = project.suggest_keywords(["Shout this loudly", "shout that", "Please shout"], ["Please fix my code"])
    assert words[0] == "shout" and "pleas" not in words


def test_run_check_counts_each_column_and_every_check(capsys):
    counts = project.run_check(shout_check, PAIRS, ["HI", "ok"], "x")
    assert counts == {"caps": 1, "same": 1, "все проверки": 1}
    table = project.comparison({"база": counts, "адаптер": {"caps": 2, "same": 2, "все проверки": 2}}, 2)
    assert "caps" in table and "2 из 2" in table and "адаптер" in table


@pytest.mark.parametrize("reply, asks", [
    ("2. If it still doesn't work, reply with your login details and we will send you a new email.", True),
    ("Please send us your password so we can check.", True),
    ("Пришлите нам ваш логин и пароль.", True),
    ("1. Open the reset page. 2. Type your new password twice.", False),
    ("Never share your password with anyone.", False),
    ("Tell us your order number.", False),
])
def test_credential_requests_are_flagged(reply, asks):
    assert asks_for_credentials(reply) is asks


def test_support_reply_asking_for_login_details_fails_its_check():
    reply = ("Hello! Sorry the email didn't work. Please try this:\n1. Check the spam folder.\n"
             "2. If it still doesn't work, reply with your login details and we will send you a new email.")
    marks = project.course_checks("support", reply)
    assert list(marks.values()) == [True, False]


def test_verdict_against_the_bars(capsys):
    assert project.verdict(0.9, {"f": 0, "все проверки": 1}, {"f": 9, "все проверки": 5}, 10) is True
    assert "готово" in capsys.readouterr().out
    assert project.verdict(0.5, {"f": 0, "все проверки": 5}, {"f": 9, "все проверки": 5}, 10, [2.0, 1.0, 1.5]) is False
    out = capsys.readouterr().out
    assert "не готово" in out and "переобучение" in out and "примеры" in out and "инструкцией" in out


# ----------------------------------------------------------------------------- 04 run with a scenario of our own
# Nobody's catalogue: lower-case phrases to shout back in capitals. No MY_INSTRUCTION, no MY_KEYWORDS.
OWN_SCENARIO = '''
MY_ROUTE = "shout"
MY_ROUTER_EXAMPLES = ["Shout this: good morning", "Say it loudly: see you", "Крикни: доброе утро",
                      "Shout back: thank you", "Крикни громко: привет"]
MY_ROUTER_HELDOUT = ["Shout this phrase: well done", "Крикни: с днём рождения"]
words = ["good night", "hello there", "nice work", "hurry up", "all aboard", "happy new year", "stop", "go team"]
MY_TRAIN_PAIRS = [{"prompt": f"Shout this: {w}", "reply": w.upper() + "!"} for w in words]
MY_TEST_PAIRS = [{"prompt": f"Shout this: {w}", "reply": w.upper() + "!", "word": w}
                 for w in ["welcome home", "fire", "well done"]]

def my_check(reply, pair):
    return {"капслок": reply.strip().isupper(), "те же слова": pair["word"].upper() in reply.upper()}
'''


def _own_copy(tmp_path):
    """A copy of 04 with OWN_SCENARIO in its one editable cell and a 2-step training run; nothing else changed."""
    copy = notebooks_for_base.prepare(tmp_path, {"TRAIN_STEPS": "2"}, names=[NB04.name])[0]
    nb = json.loads(copy.read_text())
    cell, = [c for c in nb["cells"] if "my-scenario" in c["metadata"].get("tags", [])]
    cell["source"] = OWN_SCENARIO.strip().splitlines(keepends=True)
    copy.write_text(json.dumps(nb, ensure_ascii=False))
    return copy


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """04 executed top to bottom with OWN_SCENARIO on the embedded base; yields (notebook, client) with the
    kernel still up, so a test can run more cells in it."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    work = tmp_path_factory.mktemp("own04")
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(ROOT))
    mp.setenv("LORA_HELPERS_BASE", "smollm2-135m")
    mp.setenv("LORA_SESSION_DIR", str(work / "session"))
    mp.setenv("TQDM_DISABLE", "1")
    mp.setenv("MPLBACKEND", "Agg")
    for name in ("LORA_HELPERS_DEMO_TRAIN", "HF_TOKEN", "LORA_DRIVE_DIR"):
        mp.delenv(name, raising=False)
    nb = nbformat.read(_own_copy(work), as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            yield nb, client, work
    finally:
        mp.undo()


def _out(cell) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                   for o in cell.get("outputs", []))


def _code_cell(src):
    import nbformat
    return nbformat.v4.new_code_cell(src)


def _cell(nb, needle):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


@pytest.mark.real
def test_04_runs_a_scenario_of_its_own_everywhere(own_run):
    nb, _, work = own_run
    text = "\n".join(_out(c) for c in nb.cells)
    assert "маршрут (и имя адаптера): shout" in text
    router = _out(_cell(nb, "acc_kw, conf_kw = lh.evaluate_router"))
    assert re.search(r"^shout\s+\d", router, re.M), "the confusion matrix has a row for the learner's route"
    after = _out(_cell(nb, 'rows["адаптер"]'))
    for row in ("база", "база + инструкция", "адаптер"):
        assert re.search(rf"^{re.escape(row)}\s+\d+ из 3\s+\d+ из 3", after, re.M), (row, after)
    assert "капслок" in after and "те же слова" in after
    batch = _out(_cell(nb, "lh.route_and_generate"))
    assert "Shout this: welcome home" in batch and re.search(r"[✔✘] капслок", batch)
    assert "[shout]" in batch or "[base]" in batch
    saved = _out(_cell(nb, "lh.save_adapter(model, MY_ROUTE"))
    assert "shout" in saved
    assert (work / "session" / "shout" / "adapter_model.safetensors").is_file()
    assert "Итог:" in _out(_cell(nb, "project.verdict("))
    assert "SELECT" not in text and "[sql]" not in text and "маршрута sql" not in text


@pytest.mark.real
def test_04_training_cell_twice_gives_one_fresh_adapter_and_one_wrapper(own_run):
    nb, client, _ = own_run
    loop_index = next(i for i, c in enumerate(nb.cells) if "train-loop" in c.metadata.get("tags", []))
    probe = _code_cell('''
import json
from peft import PeftModel
layers = [m for m in model.modules() if hasattr(m, "lora_A")]
print(json.dumps({"first_loss": losses[0], "adapters": list(model.peft_config),
                  "wrappers": sum(isinstance(m, PeftModel) for m in model.modules()),
                  "layers_with_shout": sum("shout" in m.lora_A for m in layers),
                  "names": sum(".base_model.model.base_model.model." in n for n, _ in model.named_modules())}))
''')
    nb.cells.append(probe)
    client.execute_cell(probe, len(nb.cells) - 1)
    before = json.loads(_out(probe).strip().splitlines()[-1])
    for _ in range(2):
        client.execute_cell(nb.cells[loop_index], loop_index)
    probe.outputs = []
    client.execute_cell(probe, len(nb.cells) - 1)
    after = json.loads(_out(probe).strip().splitlines()[-1])
    assert before["adapters"].count("shout") == after["adapters"].count("shout") == 1
    assert sorted(after["adapters"]) == sorted(before["adapters"]), "the course adapters stay, shout is replaced"
    assert before["wrappers"] == after["wrappers"] == 1 and after["names"] == 0
    assert after["layers_with_shout"] == before["layers_with_shout"] > 0
    assert after["first_loss"] == pytest.approx(before["first_loss"], rel=1e-3), "a fresh adapter, not the old one"

