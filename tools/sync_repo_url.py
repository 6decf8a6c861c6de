"""Rewrite the Colab badges and install cells of the notebooks and README from pyproject's Repository URL.

Usage: python tools/sync_repo_url.py   (after changing [project.urls] Repository in pyproject.toml)
"""
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GITHUB = re.compile(r"(github\.com/|colab\.research\.google\.com/github/)[\w\-]+/[\w\-]+")


def repo_url() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def targets():
    return sorted(ROOT.glob("0*.ipynb")) + [ROOT / "README.md"]


def sync(check: bool = False) -> list[Path]:
    """Rewrite (or with check=True only list) the files whose GitHub links differ from the Repository URL."""
    slug = repo_url().split("github.com/", 1)[1].rstrip("/")
    changed = []
    for path in targets():
        text = path.read_text()
        new = GITHUB.sub(lambda m: m.group(1) + slug, text)
        if new != text:
            changed.append(path)
            if not check:
                path.write_text(new)
    return changed


if __name__ == "__main__":
    out = sync(check="--check" in sys.argv)
    print("\n".join(str(p.relative_to(ROOT)) for p in out) or "all links agree with pyproject.toml")
    sys.exit(1 if out and "--check" in sys.argv else 0)
