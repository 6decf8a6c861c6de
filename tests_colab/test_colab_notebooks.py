"""The notebooks on Colab's own versions (`make test-colab`, run by .venv-colab's Python 3.13).

Each notebook runs top to bottom as "Run all" would in Colab: its setup cell sees `google.colab` (a
stand-in, tests_colab/fake_colab), finds the repository at /content/lora-adapters-course (a link to this
checkout instead of a clone) and installs the course with its own `pip install -r requirements.txt`.
Notebook 01 runs with Drive and Hub publishing switched on, as a learner who declines the Drive dialog
and whose HF_TOKEN cannot write: it must finish with clear messages, never stop, never print the token.
"""
import importlib.metadata as md
import json
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import notebooks_for_base  # noqa: E402

CLONE = Path("/content/lora-adapters-course")
DRIVE = Path("/content/drive")  # where Colab mounts Google Drive; a declined mount must leave nothing there
READ_ONLY_TOKEN = "hf_" + "ReadOnly" * 5  # token-shaped; the stand-in Hub refuses every write made with it


def _colab_pins() -> dict:
    """Every version requirements-colab.txt (which builds .venv-colab) pins: Colab's own (and the test runner's)."""
    pins = {}
    for line in (ROOT / "requirements-colab.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if "==" in spec:
            name, version = spec.split("==")
            pins[name] = version
    return pins


COLAB_VERSIONS = _colab_pins()


def _assert_colabs_versions():
    changed = {n: md.version(n) for n, v in COLAB_VERSIONS.items() if md.version(n).split("+")[0] != v}
    assert not changed, f"not Colab's versions (requirements-colab.txt): {changed}"


class _ReadOnlyHub(BaseHTTPRequestHandler):
    """Answers like the Hub does to a read-only token: reads of unknown repos 404, every write 403."""
    requests: list = []

    def _answer(self, code, message):
        type(self).requests.append((self.command, self.path))
        body = json.dumps({"error": message}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Message", message)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/api/whoami"):
            self._whoami()
        else:
            self._answer(404, "Repository not found")

    def _whoami(self):
        type(self).requests.append((self.command, self.path))
        body = json.dumps({"type": "user", "name": "learner", "auth": {"accessToken": {"role": "read"}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self._answer(403, "You don't have the rights to create a model under this namespace")

    do_PUT = do_DELETE = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def colab_runtime(tmp_path_factory):
    if CLONE.is_symlink():
        CLONE.unlink()
    for path in (CLONE, DRIVE):  # a leftover Drive folder would make mount_drive() see Drive as mounted
        if path.exists():
            pytest.fail(f"{path} exists and is not this test's; move it away and run again")
    CLONE.parent.mkdir(parents=True, exist_ok=True)
    CLONE.symlink_to(ROOT)
    hub = ThreadingHTTPServer(("127.0.0.1", 0), _ReadOnlyHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        yield tmp_path_factory.mktemp("colab"), f"http://127.0.0.1:{hub.server_address[1]}"
    finally:
        hub.shutdown()
        CLONE.unlink()
        shutil.rmtree(DRIVE, ignore_errors=True)  # it did not exist before the test (checked above)


def _run(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + json.dumps(out.get("data", {}), ensure_ascii=False))
    return "\n".join(texts)


def test_runtime_is_colabs():
    assert {"torch", "transformers", "peft", "accelerate", "huggingface_hub", "ipywidgets"} <= set(COLAB_VERSIONS)
    _assert_colabs_versions()
    assert sys.version_info[:2] == (3, 13)


def test_01_with_a_declined_drive_and_a_token_that_cannot_publish(colab_runtime, monkeypatch):
    work, hub = colab_runtime
    monkeypatch.setenv("FAKE_COLAB_DRIVE", "decline")
    monkeypatch.setenv("FAKE_COLAB_SECRETS", json.dumps({"HF_TOKEN": READ_ONLY_TOKEN}))
    monkeypatch.setenv("HF_ENDPOINT", hub)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("LORA_SESSION_DIR", str(work / "session"))
    monkeypatch.delenv("LORA_DRIVE_DIR", raising=False)
    nb = notebooks_for_base.prepare(work / "drive_hub", {"USE_DRIVE": "True", "PUBLISH_TO_HUB": "True"},
                                    names=["01_load_switch_adapters.ipynb"])[0]
    text = _run(nb)
    assert "Google Drive не подключён" in text
    assert "сохранено (session)" in text and not DRIVE.exists()
    assert READ_ONLY_TOKEN not in text and READ_ONLY_TOKEN not in nb.read_text()
    assert any(method in ("POST", "PUT") for method, _ in _ReadOnlyHub.requests), "publishing was never tried"
    _assert_colabs_versions()  # the install cell kept what Colab has


@pytest.mark.parametrize("name", ["02_merge_adapter.ipynb", "03_router_demo.ipynb", "04_own_router_project.ipynb"])
def test_notebook_runs_with_defaults(colab_runtime, monkeypatch, name):
    """Defaults, except that 04 trains its own adapter for 3 steps (a real run, not the stored recipe's)."""
    work, _ = colab_runtime
    monkeypatch.setenv("LORA_SESSION_DIR", str(work / "session"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("FAKE_COLAB_SECRETS", raising=False)
    _run(notebooks_for_base.prepare(work / "defaults", {"TRAIN_STEPS": "3"}, names=[name])[0])


@pytest.mark.parametrize("name", notebooks_for_base.NOTEBOOKS)
def test_notebook_on_the_4bit_base(colab_runtime, monkeypatch, name):
    """The T4 path on Colab's versions: the embedded base in nf4 (bitsandbytes, as the install cell puts it
    there), demo adapters trained on the spot with QLoRA (2 steps) by 01 and reused by 02, 03 and 04 (which
    trains only its own adapter, also for 2 steps)."""
    work, _ = colab_runtime
    monkeypatch.setenv("LORA_HELPERS_BASE", "smollm2-135m-4bit")
    monkeypatch.setenv("LORA_HELPERS_DEMO_TRAIN", "2")
    monkeypatch.setenv("LORA_SESSION_DIR", str(work / "session-4bit"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("FAKE_COLAB_SECRETS", raising=False)
    text = _run(notebooks_for_base.prepare(work / "4bit", {"TRAIN_STEPS": "2"}, names=[name])[0])  # raises if a cell fails
    trained = "обучаю их сейчас" in text
    assert trained == (name == notebooks_for_base.NOTEBOOKS[0]), "01 trains the demo adapters, the others reuse them"


def test_every_install_cell_kept_colabs_versions():
    """Last: after all the notebooks' install cells ran (fp32 and 4-bit), Colab's versions are still there, and
    `make test-colab` then runs the unit tests on them."""
    _assert_colabs_versions()
