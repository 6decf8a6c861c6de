"""Routers: keyword stems, the n-gram classifier ("semantic"), evaluate_router and the shipped data sets."""
from collections import Counter

import numpy as np
import pytest

import lora_helpers as lh
from lora_helpers._textfeatures import char_ngrams, hidden_state_features, normalize
from lora_helpers.shipped import load_labelled
from lora_helpers.router import DEFAULT_RULES, KeywordRouter, SemanticRouter

EVAL = load_labelled("router_eval")
EXAMPLES = load_labelled("router_examples")
ROUTES = ["json", "coding", "support"]


@pytest.fixture(scope="module")
def keyword():
    return lh.make_router("keyword")


@pytest.fixture(scope="module")
def semantic():
    return lh.make_router("semantic")


# -- keyword router -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, route", [
    ("Верни JSON", "json"),                              # the cheat-sheet's own rules
    ("Опиши схему ответа", "json"),
    ("Напиши код", "coding"),
    ("There is a bug here", "coding"),
])
def test_cheat_sheet_rules(keyword, text, route):
    assert keyword.route(text) == route


@pytest.mark.parametrize("word", ["схема", "схему", "схемы", "схеме", "схемой", "схемами", "СХЕМ"])
def test_schema_inflections(keyword, word):
    assert keyword.route(f"Нужна {word} для пользователя") == "json"


@pytest.mark.parametrize("word", ["код", "кода", "коде", "коду", "кодом", "Код", "bug", "bugs", "баг", "баги",
                                  "багов", "Bug", "code", "codes"])
def test_coding_inflections(keyword, word):
    assert keyword.route(f"Посмотри {word} пожалуйста") == "coding"


@pytest.mark.parametrize("text", [
    "Что говорит Трудовой кодекс об отпуске?",           # «код» is not a prefix of every word: no «кодекс»
    "Промокод не срабатывает",                          # nor a suffix: «промокод» is not «код»
    "Scan the barcode on the box",
    "Где мой багаж?",                                   # «баг» ≠ «багаж»
])
def test_word_boundaries(keyword, text):
    assert "coding" not in keyword.matches(text)


def test_json_inside_hyphenated_word(keyword):
    found = keyword.matches("Сделай JSON-схему для товара")
    assert [k for k, _ in found["json"]] == ["json", "схем"]


def test_star_keywords_take_any_ending(keyword):
    assert keyword.route("Нужен рефакторинг модуля") == "coding"
    assert keyword.route("Отрефакторить этот класс") == "coding"
    assert keyword.route("debugging a crash") == "coding"


def test_most_keywords_win_then_first_route(keyword):
    assert keyword.route("Fix the bug in the code of my JSON parser") == "coding"    # 2 coding vs 1 json
    assert keyword.route("Верни JSON из этого кода") == "json"                     # 1:1 → json listed first


def test_explain_names_the_keyword_or_the_default(keyword):
    assert keyword.explain("Найди баги в коде") == "coding: ключевые слова «код» (в слове «коде»), «баг» (в слове «баги»)"
    assert keyword.explain("Опиши схему ответа") == "json: ключевое слово «схем» (в слове «схему»)"
    assert (keyword.explain("Fix the bug in the code of my JSON parser")
            == "coding: ключевые слова «code», «bug»; совпали также json: «json»")
    assert keyword.explain("Привет, как дела?") == "support: ни одно ключевое слово не подошло — маршрут по умолчанию"
    sizes = ", ".join(f"{r} {len(DEFAULT_RULES[r])}" for r in ROUTES)
    assert repr(keyword) == f"KeywordRouter(ключевых слов: {sizes}; по умолчанию 'support')"


def test_custom_rules_and_default():
    r = lh.make_router("keyword", rules={"json": ["json"], "coding": ["python"]}, default="base")
    assert r.routes == ["json", "coding", "base"]
    assert r.route("Write Python") == "coding" and r.route("Закажи пиццу") == "base"


@pytest.mark.parametrize("bad", [None, 42, b"JSON", ["JSON"], "", "   \n\t"])
@pytest.mark.parametrize("kind", ["keyword", "semantic"])
def test_bad_prompts_raise_prompt_error(keyword, semantic, kind, bad):
    router = keyword if kind == "keyword" else semantic
    for call in (router.route, router.explain):
        with pytest.raises(lh.PromptError) as e:
            call(bad)
        assert isinstance(e.value, ValueError) and isinstance(e.value, lh.AdapterError)
        assert "prompt" in str(e.value)
    if kind == "semantic":
        with pytest.raises(lh.PromptError):
            semantic.scores(bad)


def test_bad_router_arguments():
    with pytest.raises(lh.AdapterError, match="Unknown router kind"):
        lh.make_router("magic")
    with pytest.raises(lh.AdapterError, match="keyword strings"):
        lh.make_router("keyword", rules={"json": [""]})
    with pytest.raises(lh.AdapterError, match="at least two routes"):
        lh.make_router("semantic", examples={"json": ["Верни JSON"]})


# -- semantic router ------------------------------------------------------------------------------

def test_semantic_accuracy_on_eval(semantic):
    acc, conf = lh.evaluate_router(semantic)
    assert acc >= 0.95, conf          # 69 of 72 (0.96), as the hand-written version scored
    no_kw = [x for x in EVAL if not x["has_keyword"]]
    assert lh.evaluate_router(semantic, no_kw)[0] >= 0.85


def test_semantic_scores(semantic):
    s = semantic.scores("Верни список городов в JSON")
    assert list(s) == ROUTES == semantic.routes
    assert abs(sum(s.values()) - 1) < 1e-9 and max(s, key=s.get) == "json"
    shown = ", ".join(f"{r} {p:.2f}" for r, p in s.items())
    assert (semantic.explain("Верни список городов в JSON")
            == f"json: классификатор, вероятность {s['json']:.2f} ≥ порога 0.40 ({shown})")
    assert repr(semantic) == ("SemanticRouter(классификатор на символьных n-граммах + ключевые слова; "
                              "маршруты: json, coding, support; порог 0.4; по умолчанию 'support')")


def test_classifier_is_scikit_learn_and_semantic_its_older_name(semantic):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    clf = lh.make_router("classifier")
    assert type(clf) is SemanticRouter and isinstance(clf.clf, LogisticRegression)
    assert isinstance(clf.ngrams, TfidfVectorizer) and clf.ngrams.analyzer == "char_wb"
    for x in EVAL[::5]:
        assert clf.scores(x["text"]) == semantic.scores(x["text"])


def test_threshold_falls_back_to_keyword_then_default():
    unsure = lh.make_router("semantic", threshold=1.0)                  # never confident enough
    assert unsure.route("Implement quicksort in Haskell, there is a bug") == "coding"
    text = unsure.explain("There is a bug")
    assert text.startswith("coding: классификатор не уверен (лучший — coding с вероятностью ")
    assert text.endswith("решает роутер по ключевым словам → coding: ключевое слово «bug»")
    assert unsure.route("Implement quicksort in Haskell") == "support"  # no keyword → default
    assert unsure.explain("Implement quicksort in Haskell").endswith("маршрут по умолчанию")
    custom = lh.make_router("semantic", threshold=1.0, default="base")
    assert custom.route("Implement quicksort in Haskell") == "base" and "base" in custom.routes


def test_semantic_is_deterministic(semantic):
    import pickle

    other = SemanticRouter()
    for x in EVAL[::7]:
        assert other.scores(x["text"]) == semantic.scores(x["text"])
    assert pickle.dumps(other.clf.coef_) == pickle.dumps(semantic.clf.coef_)   # the same model, bit for bit


def test_semantic_accepts_examples_in_three_shapes():
    d = {"json": ["Верни JSON", "Return JSON with fields"], "coding": ["Напиши код", "Fix this Python bug"]}
    pairs = [(t, r) for r, ts in d.items() for t in ts]
    rows = [{"text": t, "route": r} for t, r in pairs]
    scores = [SemanticRouter(examples=e).scores("JSON please") for e in (d, pairs, rows)]
    assert scores[0] == scores[1] == scores[2]


def test_semantic_with_tiny_model(tiny_model, tiny_tokenizer):
    r = lh.make_router("semantic", model=tiny_model, tokenizer=tiny_tokenizer)
    assert r.route("Верни JSON со схемой") in ROUTES and "скрытые состояния базовой модели" in repr(r)
    with pytest.raises(lh.AdapterError, match="both model and tokenizer"):
        lh.make_router("semantic", model=tiny_model)


def test_hidden_states_ignore_an_active_adapter(tiny_model, tiny_tokenizer):
    import torch
    from peft import LoraConfig, get_peft_model

    texts = ["Верни JSON", "Fix the bug in this code, please", "Где мой заказ?"]
    base = hidden_state_features(tiny_model, tiny_tokenizer, texts)
    peft = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False), adapter_name="coding")
    ids = torch.tensor([tiny_tokenizer("Верни JSON")["input_ids"]])
    with torch.no_grad(), peft.disable_adapter():
        plain = peft(input_ids=ids).logits
    assert not torch.allclose(peft(input_ids=ids).logits, plain)          # the adapter does change outputs
    np.testing.assert_allclose(hidden_state_features(peft, tiny_tokenizer, texts), base, atol=1e-5)
    assert peft.active_adapter == "coding"
    peft.train()
    np.testing.assert_allclose(hidden_state_features(peft, tiny_tokenizer, texts), base, atol=1e-5)
    assert peft.training and all(m.training for m in peft.modules())


@pytest.mark.real
def test_semantic_with_embedded_base(embedded):
    model, tok = embedded
    r = lh.make_router("semantic", model=model, tokenizer=tok)
    assert lh.evaluate_router(r)[0] >= 0.9


# -- evaluate_router ------------------------------------------------------------------------------

def test_confusion_matrix_is_consistent(keyword):
    import matplotlib
    matplotlib.use("Agg")

    acc, conf = lh.evaluate_router(keyword)
    m = np.asarray(conf.matrix)
    assert conf.labels == ROUTES
    counts = Counter(x["route"] for x in EVAL)
    assert m.sum(1).tolist() == [counts[r] for r in conf.labels]
    assert acc == pytest.approx(np.trace(m) / len(EVAL))
    assert len(conf.mistakes) == len(EVAL) - np.trace(m)
    assert all(t != p for _, t, p in conf.mistakes)
    lines = repr(conf).splitlines()
    assert lines[0].split() == ["верный", "\\", "выбранный", *ROUTES]
    assert [int(v) for v in lines[2].split()[1:]] == m[0].tolist() and lines[2].startswith("json")
    assert "<th style='text-align:left;vertical-align:top'>верный \\ выбранный</th>" in conf._repr_html_()
    ax = conf.plot(title="keyword")
    assert ax.get_title() == "keyword"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("куда направил роутер", "верный маршрут")


def test_evaluate_router_takes_pairs_and_dicts(keyword):
    acc, conf = lh.evaluate_router(keyword, [("Верни JSON", "json"), ("Привет", "coding")])
    assert acc == 0.5 and conf.mistakes == [("Привет", "coding", "support")]
    assert lh.evaluate_router(keyword, {"json": ["Верни JSON"]})[0] == 1.0
    acc, conf = lh.evaluate_router(keyword, {"json": "Верни JSON", "coding": "Привет"})  # one text, not letters
    assert acc == 0.5 and int(conf.matrix.sum()) == 2


def test_keyword_router_honest_score(keyword):
    """Not a target: documents what keywords get (all of the keyword-free half goes to the default)."""
    with_kw = [x for x in EVAL if x["has_keyword"]]
    without = [x for x in EVAL if not x["has_keyword"]]
    assert lh.evaluate_router(keyword, with_kw)[0] >= 0.9
    assert lh.evaluate_router(keyword, without)[0] == pytest.approx(1 / 3)


# -- shipped data ---------------------------------------------------------------------------------

def test_data_sizes_and_languages():
    for data, per_route in ((EXAMPLES, 20), (EVAL, 20)):
        counts = Counter((x["route"], x["lang"]) for x in data)
        for r in ROUTES:
            assert counts[r, "en"] + counts[r, "ru"] >= per_route and counts[r, "en"] and counts[r, "ru"]
    assert len(EVAL) >= 60 and set(x["route"] for x in EVAL + EXAMPLES) == set(ROUTES)


def test_has_keyword_field_agrees_with_keyword_router(keyword):
    for x in EVAL:
        assert x["has_keyword"] == bool(keyword.matches(x["text"])), x["text"]
    share = sum(not x["has_keyword"] for x in EVAL) / len(EVAL)
    assert 0.4 <= share <= 0.6
    for r in ROUTES:   # paraphrases in every route, not only in the default one
        assert sum(not x["has_keyword"] for x in EVAL if x["route"] == r) >= 8


def test_eval_kept_apart_from_examples():
    norm = {normalize(x["text"]) for x in EXAMPLES}
    assert not norm & {normalize(x["text"]) for x in EVAL}
    assert len({normalize(x["text"]) for x in EVAL}) == len(EVAL)
    v = char_ngrams().fit([x["text"] for x in EXAMPLES + EVAL])
    sim = (v.transform([x["text"] for x in EVAL]) @ v.transform([x["text"] for x in EXAMPLES]).T).toarray()
    assert sim.max() < 0.7          # no near-duplicates (closest pair measured ≈ 0.5)


def test_default_rules_keep_the_cheat_sheet():
    assert {"json", "схем"} <= set(DEFAULT_RULES["json"]) and {"код", "bug"} <= set(DEFAULT_RULES["coding"])
    assert isinstance(lh.make_router(), KeywordRouter)


def test_a_plain_function_is_a_router():
    def by_word(text):
        return "json" if "json" in text.lower() else "support"

    acc, conf = lh.evaluate_router(by_word, {"json": ["Верни JSON", "json please"], "support": ["где заказ"]})
    assert acc == 1.0 and conf.labels[:2] == ["json", "support"]
    acc, conf = lh.evaluate_router(by_word, {"coding": ["fix the bug"]})
    assert acc == 0.0 and conf.mistakes == [("fix the bug", "coding", "support")]


def test_a_function_router_that_returns_no_name_is_a_clear_error():
    with pytest.raises(lh.AdapterError, match="returned None"):
        lh.evaluate_router(lambda text: None, {"json": ["x"]})
    with pytest.raises(lh.AdapterError, match="not a router"):
        lh.evaluate_router(42, {"json": ["x"]})


def test_route_and_generate_takes_a_plain_function(tiny_model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    cfg = dict(r=4, target_modules=["q_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model, LoraConfig(**cfg), adapter_name="json").eval()
    model.add_adapter("coding", LoraConfig(**cfg))

    def pick(text):
        return "coding" if "code" in text else "json"

    prompts = ["fix code", "give data"]
    pairs = lh.route_and_generate(model, tiny_tokenizer, prompts, pick, max_new_tokens=3)
    assert [a for a, _ in pairs] == ["coding", "json"]
    assert [r for _, r in pairs] == lh.generate(model, tiny_tokenizer, prompts, adapter=["coding", "json"],
                                                max_new_tokens=3)


@pytest.mark.parametrize("bad", [None, 42, b"JSON", "", "   \n\t"])
def test_routers_and_generate_check_a_prompt_alike(keyword, bad):
    """One prompt check (prompts.check_prompt) for the routers and generation: the same error, word for word."""
    from lora_helpers.prompts import check_prompt

    with pytest.raises(lh.PromptError) as routed:
        keyword.route(bad)
    with pytest.raises(lh.PromptError) as checked:
        check_prompt(bad)
    assert str(routed.value) == str(checked.value)


def test_the_shipped_data_is_read_by_one_function():
    """Router data sets and the demo training data come through shipped.load_labelled alike."""
    from lora_helpers import _textfeatures, shipped

    assert shipped.load_examples("json") == shipped.load_labelled("json_train")
    assert not hasattr(_textfeatures, "load_labelled")
