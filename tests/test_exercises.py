"""Notebook 03's router exercise: the labelled set, check_router's verdicts, the worked solution."""
import inspect
import json
import re
from pathlib import Path

import pytest

import lora_helpers as lh
from lora_helpers.course import exercises as ex
from lora_helpers.shipped import DATA_DIR


def cheat_sheet_router(text: str) -> str:
    """The starter the notebook gives: the cheat-sheet's four words."""
    text = text.lower()
    if "json" in text or "схем" in text:
        return "json"
    if "код" in text or "bug" in text:
        return "coding"
    return "support"


# -- the labelled set ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["EXERCISE_SET", "heldout_set"])
def test_exercise_sets_are_small_balanced_and_bilingual(name):
    labelled = getattr(ex, name)
    labelled = labelled() if callable(labelled) else labelled
    assert 12 <= len(labelled) <= 20
    routes = [r for _, r in labelled]
    assert set(routes) == {"json", "coding", "support"}
    assert min(routes.count(r) for r in set(routes)) >= 4
    cyrillic = [t for t, _ in labelled if re.search("[а-яё]", t, re.I)]
    assert 0.3 <= len(cyrillic) / len(labelled) <= 0.7
    assert len({t for t, _ in labelled}) == len(labelled)


def test_exercise_sets_are_apart_from_router_data_and_each_other():
    shipped = {json.loads(line)["text"].casefold() for name in ("router_eval", "router_examples")
               for line in (DATA_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()}
    assert len(shipped) > 100
    practice = {t.casefold() for t, _ in ex.EXERCISE_SET}
    heldout = {t.casefold() for t, _ in ex.heldout_set()}
    assert not shipped & practice and not shipped & heldout and not practice & heldout


def test_the_held_out_prompts_are_not_in_the_file_that_holds_the_solution():
    """03 sends learners to exercises.py for the worked solution: reading it must not show the deciding set."""
    source = Path(ex.__file__).read_text(encoding="utf-8")
    assert len(ex.heldout_set()) == 18
    assert not [t for t, _ in ex.heldout_set() if t in source or t[:25] in source]


def test_sql_is_left_to_notebook_04():
    """04 makes sql a route of its own; 03's three-route exercise neither asks for it nor solves it as coding."""
    prompts = [t for t, _ in ex.EXERCISE_SET + ex.heldout_set()]
    assert not [t for t in prompts if "sql" in t.lower()]
    assert '"sql"' not in inspect.getsource(ex.solution_router)


# -- verdicts -----------------------------------------------------------------------------------------

def test_solution_passes(capsys):
    result = ex.check_router(ex.solution_router)
    out = capsys.readouterr().out
    assert result and result.passed and result.accuracy >= ex.THRESHOLD and result.held_out
    assert result.total == len(ex.heldout_set())
    assert "прошёл проверку" in out and "Пока не проходит" not in out


def test_cheat_sheet_starter_fails_and_shows_counts_and_two_misses_only(capsys):
    result = ex.check_router(cheat_sheet_router)
    out = capsys.readouterr().out
    assert not result and result.accuracy < ex.THRESHOLD
    assert "Пока не проходит" in out and f"{result.accuracy:.2f}" in out
    expected_misses = [(t, r) for t, r in ex.EXERCISE_SET if cheat_sheet_router(t) != r]
    assert len(expected_misses) == len(result.misses) > ex.SHOWN_MISSES
    for route in ("json", "coding", "support"):
        right = sum(cheat_sheet_router(t) == r for t, r in ex.EXERCISE_SET if r == route)
        assert f"{route} {right} из 6" in out
    shown = [t for t, _ in expected_misses if f"«{t}»" in out]
    assert len(shown) == ex.SHOWN_MISSES == out.count("  • ")
    assert len({r for t, r in expected_misses if t in shown}) == 2      # two kinds of mistake, not one twice
    assert not any(t in out for t, _ in ex.heldout_set())                 # the deciding set is never shown


def test_memorising_the_practice_set_does_not_pass(capsys):
    """A router that answers every practice prompt by lookup scores 18/18 there, and still fails: the
    unshown held-out set decides."""
    answers = dict(ex.EXERCISE_SET)
    result = ex.check_router(lambda text: answers.get(text) or cheat_sheet_router(text))
    out = capsys.readouterr().out
    assert result.misses == [] and all(right == n for right, n in result.per_route.values())
    assert not result and "Пока не проходит" in out


def test_pass_exactly_at_threshold():
    wrong = {t for t, _ in ex.heldout_set()[:2]}
    n = len(ex.heldout_set())
    answers = dict(ex.heldout_set() + ex.EXERCISE_SET)

    def router(text):
        return "base" if text in wrong else answers[text]
    assert ex.check_router(router, threshold=(n - 2) / n, verbose=False).passed
    assert not ex.check_router(router, threshold=(n - 1) / n, verbose=False).passed


def test_router_object_with_route_method_is_accepted():
    result = ex.check_router(lh.make_router("keyword"), verbose=False)
    assert result.total == len(ex.heldout_set()) and 0 < result.accuracy <= 1


def test_own_scenarios(capsys):
    def weather_or_news(text):
        return "weather" if "погод" in text.lower() else "news"
    mine = {"weather": ["Какая погода завтра?", "Погода в Казани"], "news": ["Что нового в мире?"]}
    assert ex.check_router(weather_or_news, examples=mine).accuracy == 1.0
    pairs = [("Погода?", "weather"), ("Курс рубля", "weather")]
    result = ex.check_router(weather_or_news, examples=pairs)
    assert not result and result.misses == [("Курс рубля", "weather", "news")]
    assert "«Курс рубля» → ожидали weather, получили news" in capsys.readouterr().out
    # your own held-out prompts decide when given; the practice prompts are then only reported
    result = ex.check_router(weather_or_news, examples=pairs, heldout={"weather": ["Погода на неделю"]})
    assert result and result.held_out and result.total == 1 and len(result.misses) == 1


# -- the learner's mistakes ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["json", None, 42, cheat_sheet_router("Верни JSON")])
def test_not_a_function_is_a_clear_error(bad):
    with pytest.raises(lh.AdapterError, match=r"needs a function .*got " + type(bad).__name__) as err:
        ex.check_router(bad)
    assert "check_router(my_router)" in str(err.value)


def test_exception_in_learners_function_is_a_miss_with_the_error(capsys):
    def broken(text):
        if "JSON" in text:
            return "json"
        return {"coding": "coding"}[text]        # KeyError for everything else
    result = ex.check_router(broken)
    out = capsys.readouterr().out
    assert not result and "ошибку KeyError" in out
    assert sum("ошибку KeyError" in got for _, _, got in result.misses) == len(ex.EXERCISE_SET) - 2


def test_forgotten_return_is_a_miss_that_says_so(capsys):
    def no_return(text):
        "json" if "json" in text.lower() else "support"   # noqa: B018 — the learner forgot `return`
    result = ex.check_router(no_return)
    assert not result and len(result.misses) == len(ex.EXERCISE_SET)
    assert "None (не строку" in capsys.readouterr().out


@pytest.mark.parametrize("examples", [[], {}, [("текст",)], {"json": [""]}, [("Верни JSON", 1)]])
def test_bad_examples_are_a_clear_error(examples):
    with pytest.raises(lh.AdapterError, match="examples must be"):
        ex.check_router(ex.solution_router, examples=examples)


@pytest.mark.parametrize("threshold", [0, 1.5, -0.1])
def test_bad_threshold(threshold):
    with pytest.raises(lh.AdapterError, match="threshold must be"):
        ex.check_router(ex.solution_router, threshold=threshold)
