"""Demo adapters on a budget: each notebook trains only what it uses, the 7B recipe fits a T4 in minutes by an
estimate that states its model, a progress bar shows the time left, and the opening cell's time table."""
import re

import pytest

import lora_helpers as lh
from lora_helpers.course import demo


@pytest.fixture
def session(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "session"))
    monkeypatch.setenv(demo.TRAIN_STEPS_ENV, "1")
    trained = []
    real = demo._train
    monkeypatch.setattr(demo, "_train", lambda model, tok, names, *a, **kw:
                        trained.append(list(names)) or real(model, tok, names, *a, **kw))
    return trained


def test_a_notebook_trains_only_the_adapters_it_asks_for(session, tiny_model, tiny_tokenizer):
    json_only = demo.demo_adapters(tiny_model, tiny_tokenizer, progress=False, names=("json",))
    assert list(json_only) == ["json"] and session == [["json"]]
    everything = demo.demo_adapters(tiny_model, tiny_tokenizer, progress=False)  # the next notebook: all three
    assert session == [["json"], ["coding", "support"]] and everything["json"] == json_only["json"]
    assert demo.demo_adapters(tiny_model, tiny_tokenizer, progress=False, names="support") == {
        "support": everything["support"]}
    assert len(session) == 2


def test_the_embedded_base_gets_the_shipped_adapters_it_asks_for(monkeypatch, tiny_model, tiny_tokenizer):
    monkeypatch.delenv(demo.TRAIN_STEPS_ENV, raising=False)
    tiny_model.name_or_path = lh.base.EMBEDDED_NAME
    assert demo.demo_adapters(tiny_model, tiny_tokenizer, names=("json",)) == {"json": lh.DEMO_ADAPTERS["json"]}


@pytest.mark.parametrize("names", [("jsn",), (), ["json", 3], None, "all"])
def test_unknown_names_are_refused_before_any_work(session, tiny_model, tiny_tokenizer, names):
    with pytest.raises(lh.AdapterError, match=r"names=.*some of the demo adapters \('json', 'coding', 'support'\)"):
        demo.demo_adapters(tiny_model, tiny_tokenizer, names=names)
    assert session == []


def test_the_7b_recipe_trains_all_three_in_under_5_minutes_by_the_stated_estimate():
    seconds, text = demo.t4_estimate(demo.RECIPES_LARGE, 150)
    assert seconds <= 5 * 60
    assert text == ("3 адаптера × 20 шагов × ~4 с/шаг (оценка для T4: батч 4 × ~150 токенов, QLoRA, ~150 токенов/с; "
                    "не замер) ≈ 4 мин")
    assert demo.t4_estimate({"json": demo.RECIPES_LARGE["json"]}, 150)[1].startswith("1 адаптер × 20 шагов")


def test_a_large_base_prints_the_estimate_with_its_tokenizers_tokens(session, monkeypatch, tiny_model,
                                                                     tiny_tokenizer, capsys):
    monkeypatch.setattr(demo, "LARGE", 0)  # the tiny model stands in for a 7B one
    demo.demo_adapters(tiny_model, tiny_tokenizer, progress=False, names=("json", "coding"))
    out = capsys.readouterr().out
    tokens = demo._mean_tokens(tiny_tokenizer, ("json", "coding"))
    assert f"2 адаптера × 1 шаг × ~{4 * tokens / demo.T4_TOKENS_PER_SECOND:.0f} с/шаг" in out
    assert f"батч 4 × ~{tokens:.0f} токенов" in out and "оценка для T4" in out


def test_without_a_large_base_there_is_no_t4_estimate(session, tiny_model, tiny_tokenizer, capsys):
    demo.demo_adapters(tiny_model, tiny_tokenizer, progress=False, names=("json",))
    out = capsys.readouterr().out
    assert "обучаю их сейчас (LoRA, 1 шаг всего)" in out and "T4" not in out


def test_training_shows_a_progress_bar_with_the_time_left_unless_tqdm_is_disabled(session, monkeypatch, tiny_model,
                                                                                   tiny_tokenizer, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    demo.demo_adapters(tiny_model, tiny_tokenizer, names=("json",))
    err = capsys.readouterr().err
    assert "LoRA json" in err and re.search(r"1/1 \[\d\d:\d\d<\d\d:\d\d", err), err[-500:]
    monkeypatch.setenv("TQDM_DISABLE", "1")
    demo.demo_adapters(tiny_model, tiny_tokenizer, names=("coding",))
    assert "LoRA coding" not in capsys.readouterr().err


def test_the_time_table_of_each_notebook():
    table = demo.time_table("01")
    lines = table.splitlines()
    assert lines[1].split("|")[1:4] == [" Этап                    ", " CPU (замер) ", " T4 (оценка)    "]
    assert "| Скачать, ГБ" in table and "~4.1" in table and "оценка, не замер" in lines[0]
    train = demo.t4_estimate(demo.RECIPES_LARGE, demo.T4_TOKENS_PER_EXAMPLE)[0] / 60
    assert f"~{train:.0f} (0 с Drive)" in table and f"| Всего, мин              | {demo.CPU_MINUTES['01']['total']}" in table  # measured
    two = demo.time_table("02_merge_adapter.ipynb", cpu={"merge": 0.4, "total": 3.2})
    assert re.search(r"\| Слияние, мин +\| 0\.4 +\| ~2 ", two) and re.search(r"\| Всего, мин +\| 3\.2 ", two)
    assert f"~{train:.0f} (0 с Drive)" in two  # 02 uses all three (the trap loads coding, combining uses support)
    with pytest.raises(lh.AdapterError, match="notebook='05'.*'01'"):
        demo.time_table("05")


@pytest.mark.parametrize("key", ["01", "02", "03", "04"])
def test_the_t4_column_is_the_sum_of_what_the_notebook_runs(key):
    t, run = demo.t4_minutes(key), demo.NOTEBOOK_RUNS[key]
    parts = ("download", "load", "train", "merge", "decode", "small")
    assert t["total"] == pytest.approx(sum(t[p] for p in parts))
    assert t["download"] == pytest.approx(demo.T4_DOWNLOAD_GB * 1024 / demo.T4_DOWNLOAD_MB_S / 60)  # once
    assert t["load"] == run["loads"] * demo.T4_LOAD_MINUTES
    assert t["decode"] == pytest.approx(run["decode"] / demo.T4_DECODE_TOKENS_PER_S / 60)
    assert t["merge"] == pytest.approx(run["write_gb"] * 1024 / demo.T4_WRITE_MB_S / 60)
    table = demo.time_table(key)
    assert re.search(rf"\| Всего, мин +\| [\d.]+ +\| ~{t['total']:.0f} +\|", table)
    assert f"до {run['decode']} токенов ответов" in table.splitlines()[-1]


def test_demo_training_counts_only_the_adapters_a_notebook_uses(monkeypatch):
    monkeypatch.setitem(demo.NOTEBOOK_RUNS, "03", dict(demo.NOTEBOOK_RUNS["03"], adapters=("json",)))
    one = demo.t4_estimate({"json": demo.RECIPES_LARGE["json"]}, demo.T4_TOKENS_PER_EXAMPLE)[0] / 60
    assert demo.t4_minutes("03")["train"] == pytest.approx(one)
    assert f"~{one:.0f} (0 с Drive)" in demo.time_table("03") and "адаптеры json (" in demo.time_table("03")


def test_04_counts_its_own_training_also_with_drive():
    t, own = demo.t4_minutes("04"), demo.NOTEBOOK_RUNS["04"]["own"]
    assert own["steps"] == 30 and own["batch_size"] == 8  # TRAIN_STEPS and BATCH in 04's training cell
    mine = demo.t4_estimate({"sql": own}, own["tokens"])[0] / 60
    assert t["train_drive"] == pytest.approx(mine) and t["train"] > mine
    table = demo.time_table("04")
    assert f"(~{mine:.0f} с Drive)" in table and f"| Обучение адаптеров, мин | {demo.CPU_MINUTES['04']['train']} " in table
    assert "свой" in table.splitlines()[-1]


def test_demo_training_reports_its_loss_in_russian(session, tiny_model, tiny_tokenizer, capsys):
    """The learner sees these lines on a T4 while the demo adapters train: Russian, like everything on screen."""
    demo.demo_adapters(tiny_model, tiny_tokenizer, progress=False, names=("json",))
    out = capsys.readouterr().out
    assert re.search(r"^\[json\] loss в начале: \d+\.\d{3}$", out, re.M), out
    assert re.search(r"^\[json\] loss в конце: \d+\.\d{3} \(среднее последних шагов: 1\); всего шагов: 1, время: \d+ с$", out, re.M), out
    assert "start loss" not in out and "mean of the last" not in out
