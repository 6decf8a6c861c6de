"""pyproject.toml's version ranges agree with what is tested (requirements-colab.txt, requirements-dev.txt)
and with the version gates in the code (switching.peft_tested)."""
import re
import tomllib
from pathlib import Path

import peft
import transformers
from packaging.requirements import Requirement
from packaging.version import Version

from lora_helpers.switching import peft_tested

ROOT = Path(__file__).resolve().parent.parent


def spec(name):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d).specifier for d in deps if Requirement(d).name == name)


def pinned(file, name):
    return re.search(rf"^{name}==(\S+)", (ROOT / file).read_text(), re.M).group(1)


def test_peft_range_is_the_tested_one():
    allowed = spec("peft")
    tested = [pinned("requirements-colab.txt", "peft"), pinned("requirements-dev.txt", "peft"), peft.__version__]
    assert all(v in allowed and peft_tested(v) for v in tested), (allowed, tested)
    newest = max(Version(v) for v in tested)
    untested = [f"{newest.major}.{newest.minor + 1}.0", f"{newest.major + 1}.0.0", "0.19.1"]
    assert not [v for v in untested if v in allowed], (allowed, untested)
    assert [peft_tested(v) for v in untested] == [False] * 3  # the code's own gate agrees
    for v in ("0.20.0", "0.21.2", "0.21.9"):
        assert (v in allowed) == peft_tested(v), v


def test_transformers_range_is_the_tested_major():
    allowed = spec("transformers")
    tested = [pinned("requirements-colab.txt", "transformers"), pinned("requirements-dev.txt", "transformers"),
              transformers.__version__]
    assert all(v in allowed for v in tested), (allowed, tested)
    assert "6.0.0" not in allowed and "5.14.0" not in allowed


def test_requirements_txt_states_the_same_ranges_as_pyproject():
    """What the Colab install cell installs (requirements.txt) may not allow a PEFT or transformers that the
    package itself (pyproject.toml) refuses."""
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = {r.name: r.specifier for r in (Requirement(line) for line in lines if line)}
    for name in ("peft", "transformers"):
        assert reqs[name] == spec(name), (name, str(reqs[name]), str(spec(name)))
