"""The package's surface: every public name resolves, and its modules run as scripts cleanly."""
import subprocess
import sys

import pytest

import lora_helpers as lh


def test_lazy_exports_resolve():
    for name in ("train_adapter", "vllm_command", "RoutedClient", "shell_line"):
        assert callable(getattr(lh, name)) and name in dir(lh)
    from lora_helpers import train_adapter
    from lora_helpers.train import train_adapter as direct
    assert train_adapter is direct
    with pytest.raises(AttributeError, match="no_such_thing"):
        lh.no_such_thing


@pytest.mark.parametrize("module", ["course.train_demo", "serve", "course.evaluate", "course.bench", "course.serve_local"])
def test_modules_run_as_scripts_without_warnings(module):
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", f"lora_helpers.{module}", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout and "Warning" not in r.stderr


def _imports(path, package_parts):
    """The lora_helpers modules that ``path`` imports at module level (function-level imports included)."""
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package_parts[:len(package_parts) - node.level]
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:
                found.update(".".join(base + [a.name]) for a in node.names)
    return found


def test_the_core_imports_nothing_from_course():
    """The wheel's core works without the course tooling: no module outside lora_helpers/course imports it,
    not even inside a function."""
    import ast
    from pathlib import Path
    root = Path(lh.__file__).parent
    offenders = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] + [a.name for a in node.names] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == "course" or n.startswith("course.") or "lora_helpers.course" in n for n in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
    r = subprocess.run([sys.executable, "-c", "import sys, lora_helpers as lh; lh.make_router('classifier'); "
                        "print(sorted(m for m in sys.modules if m.startswith('lora_helpers.course')))"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


def test_no_import_cycles():
    from pathlib import Path
    root = Path(lh.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        parts = ["lora_helpers"] + list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            pkg = parts
        else:
            pkg = parts[:-1]
        graph[".".join(parts)] = {m for m in _imports(path, pkg + ["_"]) if m != ".".join(parts)}
    modules = set(graph)
    graph = {m: {d if d in modules else d.rsplit(".", 1)[0] for d in deps} & modules for m, deps in graph.items()}
    # a package __init__ re-exports; cycles through it are how Python packages work, so leave it out
    inits = {"lora_helpers", "lora_helpers.course"}
    edges = {m: deps - inits for m, deps in graph.items() if m not in inits}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in edges.get(m, ()):
            assert state.get(d) != "open", f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in edges:
        if m not in state:
            visit(m, [])
    assert "lora_helpers.serve" in edges and "lora_helpers.course.serve_local" in edges


def test_serve_local_finds_the_serve_venv_make_builds(monkeypatch):
    """`make serve-setup` builds .venv-serve at the repository root (where the Makefile is); the local vLLM
    runner looks there when LORA_VLLM is unset (it looked one folder too deep, inside lora_helpers/)."""
    import re
    from pathlib import Path
    from lora_helpers.course import serve_local
    root = Path(lh.__file__).resolve().parents[1]
    venv = re.search(r"^SERVE_VENV\s*:=\s*(\S+)", (root / "Makefile").read_text(), re.M).group(1)
    assert serve_local.SERVE_VENV == root / venv
    monkeypatch.delenv("LORA_VLLM", raising=False)
    expected = str(root / venv / "bin" / "python") if (root / venv / "bin" / "python").exists() else "vllm"
    assert serve_local.vllm_program() == expected
