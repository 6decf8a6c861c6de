"""The version ranges: requirements.txt (what the Colab install cell installs) and pyproject.toml state the same
ones; they allow Colab's versions (requirements-colab.txt) and the newest releases our main CI runs
(requirements-dev.txt) and cap nothing Colab ships, so the install cell never downgrades a package Colab has;
the version gates in the code (switching.peft_tested, switching.shortcuts_proven) and the README agree."""
import re
import tomllib
from pathlib import Path

import peft
import transformers
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from lora_helpers.switching import peft_tested, shortcuts_proven

ROOT = Path(__file__).resolve().parent.parent


def requirements(file) -> dict:
    """{canonical name: Requirement} of a requirements file (comments and blank lines left out)."""
    lines = [line.split("#")[0].strip() for line in (ROOT / file).read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line]
    return {canonicalize_name(r.name): r for r in reqs}


def pins(file) -> dict:
    """{canonical name: version} for the packages ``file`` pins with ``==``."""
    return {n: str(next(iter(r.specifier)).version) for n, r in requirements(file).items()
            if len(r.specifier) == 1 and next(iter(r.specifier)).operator == "=="}


def spec(name):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d).specifier for d in deps if canonicalize_name(Requirement(d).name) == name)


def test_requirements_txt_states_the_same_ranges_as_pyproject():
    """What the Colab install cell installs (requirements.txt) allows exactly what the package itself
    (pyproject.toml) allows, package by package."""
    reqs = requirements("requirements.txt")
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert len(deps) >= 10
    for d in deps:
        name = canonicalize_name(d.name)
        assert name in reqs, name
        assert reqs[name].specifier == d.specifier, (name, str(reqs[name].specifier), str(d.specifier))


def test_install_cell_never_downgrades_what_colab_has():
    """For every package of requirements.txt that Colab ships: Colab's version and the newest release we test
    satisfy the range, and nothing caps it, so a newer Colab keeps its own version too."""
    reqs, colab, newest = requirements("requirements.txt"), pins("requirements-colab.txt"), pins("requirements-dev.txt")
    shipped = set(requirements("requirements-colab.txt")) & set(reqs)  # Colab's runtime, pinned or not
    assert {"transformers", "peft", "accelerate", "huggingface-hub", "ipywidgets", "scikit-learn"} <= shipped
    assert {"transformers", "peft", "accelerate", "huggingface-hub"} <= set(colab) & set(newest)
    for name in sorted(shipped):
        allowed = reqs[name].specifier
        assert all(s.operator in (">=", ">") for s in allowed), f"{name}{allowed}: an upper bound would downgrade"
        for where, versions in (("Colab", colab), ("newest", newest)):
            if name in versions:
                assert allowed.contains(versions[name], prereleases=True), (name, str(allowed), where, versions[name])
    assert "torch" in colab and "torch" not in reqs  # Colab's CUDA torch is never replaced


def test_tested_peft_releases_are_allowed_and_the_code_knows_them():
    allowed = spec("peft")
    colab, dev = pins("requirements-colab.txt")["peft"], pins("requirements-dev.txt")["peft"]
    tested = [colab, dev, peft.__version__]
    assert all(v in allowed and peft_tested(v) for v in tested), (allowed, tested)
    assert Version(dev) == max(Version(v) for v in tested)  # the main CI runs the newest end
    assert "0.19.1" not in allowed and not peft_tested("0.19.1")
    newest = Version(dev)
    later = [f"{newest.major}.{newest.minor + 1}.0", f"{newest.major + 1}.0.0"]
    # a later PEFT installs (never capped), but the code knows it untested: switching makes PEFT's own calls there
    assert all(v in allowed and not peft_tested(v) and not shortcuts_proven(v) for v in later), later
    for v in ("0.20.0", "0.21.2", "0.22.0"):
        assert (v in allowed) == peft_tested(v), v


def test_tested_transformers_releases_are_allowed():
    allowed = spec("transformers")
    tested = [pins("requirements-colab.txt")["transformers"], pins("requirements-dev.txt")["transformers"],
              transformers.__version__]
    assert all(v in allowed for v in tested), (allowed, tested)
    assert "5.14.0" not in allowed  # Colab's 5.15 is the oldest tested


def test_readme_states_the_tested_ranges():
    """The README's sentence on versions names Colab's and the newest tested release of each pinned package."""
    text = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    colab, newest = pins("requirements-colab.txt"), pins("requirements-dev.txt")
    for name in ("transformers", "peft", "accelerate", "huggingface-hub"):
        shown = {"huggingface-hub": "huggingface_hub", "peft": "PEFT"}.get(name, name)
        stated = f"{shown} {colab[name]}–{newest[name]}"
        assert stated in text, stated
