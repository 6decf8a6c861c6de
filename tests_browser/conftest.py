"""Fixtures for the browser test: a Voila server on 127.0.0.1 and headless Debian Chromium (Playwright).

Both start inside the test session and are always stopped, with bounded waits. `make browser-test`
installs what they need (Debian's chromium, requirements-browser.txt).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent
PAGE = HERE / "switcher_page.ipynb"
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", ROOT / "build" / "browser"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 90   # Voila answers HTTP (the kernel starts later, when the page is opened)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the server's process group (Voila and its kernels), then SIGKILL after grace_s."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def voila_url(artifacts, tmp_path_factory):
    """Serve switcher_page.ipynb with Voila on a free 127.0.0.1 port; yields the page URL."""
    port = _free_port()
    jdir = tmp_path_factory.mktemp("jupyter")
    env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               JUPYTER_RUNTIME_DIR=str(jdir / "runtime"),   # connection files away from other sessions
               JUPYTER_CONFIG_DIR=str(jdir / "config"),     # no user config changes what is served
               JUPYTER_DATA_DIR=str(jdir / "data"))         # (the kernel spec comes from .venv/share)
    log = open(artifacts / "voila.log", "w")
    cmd = [sys.executable, "-m", "voila", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           "--VoilaConfiguration.show_tracebacks=True", str(PAGE)]
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"voila exited with {proc.returncode}; see {artifacts / 'voila.log'}")
            try:  # any HTTP answer means the server is up (Voila runs the notebook per page request)
                urllib.request.urlopen(url + "voila/static/", timeout=5).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"voila did not answer on {url} within {SERVER_START_S}s; see {artifacts / 'voila.log'}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (never Playwright's own browser download)."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} not found: run `make browser-test` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="lh-chromium-")
    try:
        with sync_playwright() as pw:
            # launch_persistent_context = a fresh --user-data-dir of our own, removed afterwards
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS[1:],
                viewport={"width": 1100, "height": 720}, timeout=60_000)
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
