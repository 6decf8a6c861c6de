"""Static checks of the stored notebooks: no secrets, Colab-ready structure, one repository URL, no test
plumbing or English UI on screen, the course's frame (time, self-check, next notebook)."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(ROOT.glob("0*.ipynb"))
sys.path.insert(0, str(ROOT / "tools"))
import sync_repo_url  # noqa: E402

TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")
HOME = re.compile(r"(/root/|/home/[\w.\-]+/|/Users/[\w.\-]+/|C:\\\\Users\\\\)")
NBVAL_TAGS = {"nbval-check-output", "nbval-ignore-output", "nbval-raises-exception", "nbval-skip"}
FOUR_TICKS = re.compile(r"[Ее]сли отмечено 4 пункт\w* или больше")


def cells(nb_path):
    return json.loads(nb_path.read_text())["cells"]


def source(cell) -> str:
    return "".join(cell["source"])


def setup_cell(nb_path) -> str:
    return next(source(c) for c in cells(nb_path) if c["cell_type"] == "code")


def output_texts(nb_path):
    """Every stored output's text (stream text, text-like mime types) and the stored widget state (what a
    viewer draws for a widget: its labels, status line and Output), one string per item."""
    widgets = json.loads(nb_path.read_text())["metadata"].get("widgets", {})
    yield json.dumps(widgets, ensure_ascii=False)
    for cell in cells(nb_path):
        for out in cell.get("outputs", []):
            parts = [out.get("text", "")] + [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
            parts += [out.get("evalue", "")]
            yield "".join("".join(p) if isinstance(p, list) else str(p) for p in parts)


def test_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_load_switch_adapters.ipynb", "02_merge_adapter.ipynb",
                                           "03_router_demo.ipynb", "04_own_router_project.ipynb"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_tokens_or_home_paths_in_stored_outputs(nb):
    for cell in cells(nb):
        for out in cell.get("outputs", []):
            text = json.dumps(out)
            assert not TOKEN.search(text), f"token-like string in {nb.name}"
            assert not HOME.search(text), f"absolute home path in {nb.name}: {HOME.search(text).group()}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_ready_structure(nb):
    cs = cells(nb)
    first = source(cs[0])
    assert cs[0]["cell_type"] == "markdown" and first.startswith("# ")
    assert "colab-badge.svg" in first and nb.name in first and "T4 GPU" in first
    # 04 is the learner's own hour (≈1 ч); the others take ≈30 мин
    duration = r"[≈~]\s?1\s?ч" if nb.name.startswith("04_") else r"[≈~]\s?30\s?мин"
    assert re.search(duration, first), f"the first cell says how long the notebook takes ({duration})"
    last = source(cs[-1])
    assert "Самопроверка" in last and last.count("- [ ]") >= 5
    anchors = {a for c in cs if c["cell_type"] == "markdown" for a in re.findall(r'<a id="([\w-]+)"', source(c))}
    assert anchors and set(re.findall(r"\]\(#([\w-]+)\)", last)) <= anchors


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_installs_in_colab_only_and_loads_the_chosen_base(nb):
    setup = setup_cell(nb)
    assert setup.splitlines()[1] == ('BASE = "auto"  #@param ["auto", "smollm2-135m", "smollm2-135m-4bit", '
                                     '"mistral-7b", "mistral-7b-official"]')
    assert 'if "google.colab" in sys.modules:' in setup and "lh.setup(" in setup and "lh.load_base(BASE)" in setup
    colab = setup.split('if "google.colab" in sys.modules:')[1].split("import lora_helpers")[0]
    assert "RuntimeError" in colab, "a failed clone or pip install stops with a clear message"
    assert not re.search(r"\btorch\b", colab), "the install step must not replace Colab's torch"
    assert "%" not in colab and "!" not in colab.replace("!=", ""), "no shell magics: they fail silently"


def test_setup_cell_is_the_same_in_every_notebook():
    """One setup cell for the whole course: only its last (print) line may differ."""
    bodies = {nb.name: setup_cell(nb).rstrip().rsplit("\n", 1)[0] for nb in NOTEBOOKS}
    assert len(set(bodies.values())) == 1, sorted(bodies)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_markers_are_tags_not_comments(nb):
    for i, cell in enumerate(cells(nb)):
        if cell["cell_type"] == "code":
            assert "NBVAL" not in source(cell).upper(), f"{nb.name} cell {i}: use a cell tag, not a comment"
        tags = set(cell["metadata"].get("tags", []))
        assert {t for t in tags if t.startswith("nbval")} <= NBVAL_TAGS, f"{nb.name} cell {i}: {tags}"
    assert any("nbval-check-output" in c["metadata"].get("tags", []) for c in cells(nb)), \
        "at least one output is checked"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_test_plumbing_on_screen(nb):
    for cell in cells(nb):
        text = source(cell).lower()
        assert "для теста" not in text and "проверяется автоматически" not in text, source(cell)[:120]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_no_english_button_or_off_glossary_words_in_stored_outputs(nb):
    for text in output_texts(nb):
        assert not re.search(r"\bGenerate\b", text), f"English button label in {nb.name}: {text[:200]}"
        for word in ("маршрутизатор", "ток/с"):
            assert word not in text.lower(), f"{word!r} in a stored output of {nb.name}: use the glossary"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_glossary_in_the_prose(nb):
    for cell in cells(nb):
        text = source(cell).lower()
        for word in ("маршрутизатор", "ток/с", "шпаргалк"):
            assert word not in text, f"{word!r} in {nb.name}: {source(cell)[:120]}"


@pytest.mark.parametrize("nb", NOTEBOOKS[:-1], ids=lambda p: p.name)
def test_self_check_ends_with_the_four_ticks_line_and_links_the_next_notebook(nb):
    last = source(cells(nb)[-1])
    ticks = FOUR_TICKS.search(last)
    assert ticks and ticks.start() > last.rindex("- [ ]"), "the self-check ends with the 4-ticks line"
    following = NOTEBOOKS[NOTEBOOKS.index(nb) + 1].name
    assert re.search(r"\]\([^)]*" + re.escape(following) + r"\)", last), f"no link to {following}"


def test_the_last_notebook_ends_with_the_four_ticks_line():
    last = source(cells(NOTEBOOKS[-1])[-1])
    ticks = FOUR_TICKS.search(last)
    assert ticks and ticks.start() > last.rindex("- [ ]"), "the self-check ends with the 4-ticks line"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_run_all_never_publishes_or_mounts_by_itself(nb):
    """Hub uploads and Drive mounts sit behind form fields that are off by default (issue 14)."""
    code = "\n".join(source(c) for c in cells(nb) if c["cell_type"] == "code")
    if re.search(r'push_to_hub\(|where="hub"', code):
        assert re.search(r'^PUBLISH_TO_HUB = False +#@param \{type:"boolean"\}$', code, re.M)
        for line in code.splitlines():
            if re.search(r'push_to_hub\(|where="hub"', line) and not line.lstrip().startswith("#"):
                block = code[: code.index(line)]
                assert "if PUBLISH_TO_HUB" in block
    if "mount_drive(" in code:
        assert re.search(r'^USE_DRIVE = False +#@param \{type:"boolean"\}$', code, re.M)
        assert all("USE_DRIVE and lh.mount_drive()" in line for line in code.splitlines() if "mount_drive(" in line)


def test_repository_url_written_once_and_in_sync():
    assert sync_repo_url.sync(check=True) == []
    slug = sync_repo_url.repo_url().split("github.com/")[1]
    for nb in NOTEBOOKS:
        text = nb.read_text()
        assert f"github/{slug}/blob/main/{nb.name}" in text and f'REPO_URL = \\"https://github.com/{slug}\\"' in text


def test_sync_rewrites_every_link(tmp_path, monkeypatch):
    for p in sync_repo_url.targets() + [ROOT / "pyproject.toml"]:
        shutil.copy(p, tmp_path / p.name)
    py = tmp_path / "pyproject.toml"
    py.write_text(re.sub(r'Repository = ".*"', 'Repository = "https://github.com/new-owner/new-name"', py.read_text()))
    monkeypatch.setattr(sync_repo_url, "ROOT", tmp_path)
    assert len(sync_repo_url.sync()) == len(NOTEBOOKS) + 1  # the notebooks and README.md
    for p in sync_repo_url.targets():
        text = p.read_text()
        assert "new-owner/new-name" in text and "lora-adapters-course/lora-adapters-course" not in text


def test_adapter_table_in_01_matches_the_data_and_the_readme():
    """Notebook 01's table per adapter: training examples = lines in the data, pass rate = README's table."""
    data = ROOT / "lora_helpers" / "data"
    prose = "\n".join(source(c) for c in cells(NOTEBOOKS[0]) if c["cell_type"] == "markdown")
    readme = (ROOT / "README.md").read_text()
    for name in ("json", "coding", "support"):
        row = re.search(rf"^\| `{name}` \|.*$", prose, re.M)
        assert row, f"no table row for {name}"
        count, rate = [cell.strip() for cell in row.group().strip("|").split("|")][2:4]
        assert count.split()[0] == str(sum(1 for line in open(data / f"{name}_train.jsonl", encoding="utf-8") if line.strip())), (name, count)
        assert re.search(rf"^\| lora_{name} \| \d+ \| {re.escape(rate)} \|", readme, re.M), (name, rate)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_opening_cell_has_the_time_table(nb):
    """The opening cell shows CPU (measured) and T4 (estimate) times as course.demo.time_table has them."""
    from lora_helpers.course import demo
    opening = source(cells(nb)[0])
    table = demo.time_table(nb.name).splitlines()[1:]
    assert all(line in opening.splitlines() for line in table), "run /tmp-free: paste demo.time_table() again"
    assert "оценка, не замер" in opening and "| Всего, мин" in opening


@pytest.mark.parametrize("nb", [p for p in NOTEBOOKS if p.name[:2] in ("01", "02", "03")], ids=lambda p: p.name)
def test_the_t4_estimate_counts_what_the_notebook_runs(nb):
    """demo.NOTEBOOK_RUNS, which the T4 column is counted from, names the demo adapters the notebook asks for
    and the ~4 GB models it loads under Run all (the base, and a merged model read back; not the small 4-bit
    experiment, not the Hub cells that only run with PUBLISH_TO_HUB)."""
    from lora_helpers.course import demo
    run = demo.NOTEBOOK_RUNS[nb.name[:2]]
    code = "\n".join(source(c) for c in cells(nb) if c["cell_type"] == "code" and "PUBLISH_TO_HUB and" not in source(c))
    asked = re.findall(r"demo_adapters\(([^)]*)\)", code)
    assert len(asked) == 1, asked
    names = re.search(r"names=\(([^)]*)\)", asked[0])
    assert run["adapters"] == (tuple(re.findall(r'"(\w+)"', names.group(1))) if names else demo.NAMES)
    loads = len(re.findall(r"lh\.load_base\(BASE\)", code))
    loads += len(re.findall(r"AutoModelForCausalLM\.from_pretrained\((?!q_)", code))
    assert loads == run["loads"]


FIRST_THREE = [p for p in NOTEBOOKS if p.name[:2] in ("01", "02", "03")]
STORED_NOTE = "*На встроенной модели (CPU) было так:*"


@pytest.mark.parametrize("nb", FIRST_THREE, ids=lambda p: p.name)
def test_what_the_stored_replies_showed_is_a_labelled_note(nb):
    """On a T4 the learner sees Mistral's replies: prose reads the printed checks, and what SmolLM2 answered is
    a labelled note after it, never the paragraph's claim."""
    prose = [source(c) for c in cells(nb) if c["cell_type"] == "markdown"]
    assert not [p for p in prose if re.search(r"сохранённ\w+ прогон", p)]
    notes = [p for p in prose if STORED_NOTE in p]
    assert len(notes) == {"01": 5, "02": 2, "03": 2}[nb.name[:2]]
    assert all(p.index(STORED_NOTE) > 0 for p in notes), "the general reading comes first"


@pytest.mark.parametrize("nb", FIRST_THREE, ids=lambda p: p.name)
def test_code_cells_are_short(nb):
    long = [i for i, c in enumerate(cells(nb)) if c["cell_type"] == "code" and len(source(c).splitlines()) > 25]
    assert not long, f"code cells over 25 lines: {long}"


@pytest.mark.parametrize("nb", [p for p in FIRST_THREE if p.name[:2] in ("01", "03")], ids=lambda p: p.name)
def test_the_loop_over_set_adapter_re_enables_the_layers_the_switchers_base_turned_off(nb):
    """«base (без адаптера)» in the switcher calls disable_adapter_layers; PEFT's set_adapter does not undo it."""
    loops = [(i, source(c)) for i, c in enumerate(cells(nb)) if c["cell_type"] == "code"
             and re.search(r"^for .*\n\s+model\.set_adapter\(", source(c), re.M)]
    assert loops
    for i, code in loops:
        assert code.index("model.enable_adapter_layers()") < code.index("model.set_adapter(")
        assert "set_adapter" in source(cells(nb)[i - 1]) and "base (без адаптера)" in source(cells(nb)[i - 1])


# ----------------------------------------------------------------------------- notebook 04: the learner's one cell
NB04 = ROOT / "04_own_router_project.ipynb"
SCENARIO_NAMES = {"MY_ROUTE", "MY_ROUTER_EXAMPLES", "MY_ROUTER_HELDOUT", "MY_TRAIN_PAIRS", "MY_TEST_PAIRS",
                  "my_check"}


def _tagged(nb_path, tag):
    return [c for c in cells(nb_path) if tag in c["metadata"].get("tags", [])]


def _bound_names(code: str) -> set[str]:
    import ast
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def test_04_has_exactly_one_scenario_cell_and_it_binds_the_names():
    scenario = _tagged(NB04, "my-scenario")
    assert len(scenario) == 1 and scenario[0]["cell_type"] == "code"
    bound = _bound_names(source(scenario[0]))
    assert SCENARIO_NAMES <= bound, SCENARIO_NAMES - bound
    assert re.search(r'^SCENARIO = "sql"  #@param \[.*"dates".*\]$', source(scenario[0]), re.M), \
        "the catalogue is picked with a form field, sql by default"


def test_04_no_other_code_cell_names_the_default_scenario():
    """sql, its data and its check live only in the my-scenario cell: every other cell reads MY_* names."""
    default = re.compile(r"sql|SCHEMA|\bshop\b|customers", re.I)
    for i, cell in enumerate(cells(NB04)):
        if cell["cell_type"] == "code" and "my-scenario" not in cell["metadata"].get("tags", []):
            assert not default.search(source(cell)), f"cell {i} names the default scenario: {source(cell)[:120]}"


def test_04_scenario_names_are_bound_only_in_the_scenario_cell():
    """Other cells may give the optional names a default before it, never the required ones."""
    for cell in cells(NB04):
        if cell["cell_type"] == "code" and "my-scenario" not in cell["metadata"].get("tags", []):
            assert not SCENARIO_NAMES & _bound_names(source(cell)), source(cell)[:120]
    code = [c for c in cells(NB04) if c["cell_type"] == "code"]
    first_use = min(i for i, c in enumerate(code) if "MY_ROUTE" in source(c))
    assert "my-scenario" in code[first_use]["metadata"].get("tags", [])


def test_04_course_routes_cell_keeps_two_of_the_three():
    cell, = _tagged(NB04, "course-routes")
    m = re.search(r"^COURSE_ROUTES = (\[.*?\])", source(cell), re.M)
    routes = json.loads(m.group(1).replace("'", '"'))
    assert len(routes) == 2 and set(routes) <= {"json", "coding", "support"}
    assert "names=COURSE_ROUTES" in source(cell), "only the kept course adapters are fetched (trained on a T4)"


def test_04_training_loop_is_one_tagged_cell_with_the_form_field():
    loop, = _tagged(NB04, "train-loop")
    src = source(loop)
    assert re.search(r'^TRAIN_STEPS = 30  #@param \{type:"integer"\}$', src, re.M)
    assert src.count("TRAIN_STEPS = ") == 1 and "range(1, TRAIN_STEPS + 1)" in src
    assert "fresh_adapter(model)" in src, "each run of the cell starts a fresh adapter"
    assert ".float()" in src and "heldout_loss(" in src
    assert sum("get_peft_model(" in source(c) for c in cells(NB04) if c["cell_type"] == "code") == 1
