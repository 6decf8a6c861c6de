"""Static checks of the stored notebooks: no secrets, Colab-ready structure, one repository URL."""
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


def cells(nb_path):
    return json.loads(nb_path.read_text())["cells"]


def test_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_load_switch_adapters.ipynb", "02_merge_adapter.ipynb",
                                           "03_router_demo.ipynb"]


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
    first = "".join(cs[0]["source"])
    assert cs[0]["cell_type"] == "markdown" and first.startswith("# ")
    assert "colab-badge.svg" in first and nb.name in first and "T4 GPU" in first
    setup = next("".join(c["source"]) for c in cs if c["cell_type"] == "code")
    assert 'if "google.colab" in sys.modules:' in setup and "lh.setup(" in setup and 'load_base("auto")' in setup
    assert "torch" not in setup.split("if")[1].split("import lora_helpers")[0].replace("torch из Colab", "")
    last = "".join(cs[-1]["source"])
    assert "Самопроверка" in last and last.count("- [ ]") >= 5
    anchors = {a for c in cs if c["cell_type"] == "markdown" for a in re.findall(r'<a id="([\w-]+)"', "".join(c["source"]))}
    assert anchors and set(re.findall(r"\]\(#([\w-]+)\)", last)) <= anchors


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
    assert len(sync_repo_url.sync()) == 4
    for p in sync_repo_url.targets():
        text = p.read_text()
        assert "new-owner/new-name" in text and "lora-adapters-course/lora-adapters-course" not in text
