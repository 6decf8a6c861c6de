"""The package's surface: every public name resolves, and its modules run as scripts cleanly."""
import subprocess
import sys

import pytest

import lora_helpers as lh


def test_lazy_exports_resolve():
    for name in ("train_adapter", "evaluate_adapters", "vllm_command", "RoutedClient", "shell_line"):
        assert callable(getattr(lh, name)) and name in dir(lh)
    from lora_helpers import train_adapter
    from lora_helpers.train import train_adapter as direct
    assert train_adapter is direct
    with pytest.raises(AttributeError, match="no_such_thing"):
        lh.no_such_thing


@pytest.mark.parametrize("module", ["train", "evaluate", "serve", "bench"])
def test_modules_run_as_scripts_without_warnings(module):
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", f"lora_helpers.{module}", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout and "Warning" not in r.stderr
