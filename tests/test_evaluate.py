"""The snippet runner's sandbox (course/evaluate.run_snippet): what model-written code may not do.

Each layer is checked against an independent probe of this machine (can ``unshare`` make namespaces here? does
the kernel have Landlock?), so a sandbox that silently fell back where the layer works fails a test; a layer
the machine lacks is reported as an xfail with the reason, never skipped silently.
"""
import ctypes
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from lora_helpers.course.evaluate import Verdict, check_coding, run_reply, run_snippet


def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    if not unshare:
        return False
    flags = ["--user", "--map-root-user", "--net", "--mount", "--mount-proc", "--pid", "--fork"]
    return subprocess.run([unshare, *flags, "--", sys.executable, "-c", "pass"], capture_output=True).returncode == 0


def _landlock_abi() -> int:
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


NAMESPACES = _unshare_works()
LANDLOCK = _landlock_abi()


def _alive(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker`` (zombies have an empty one)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def _sleeper(marker: str, seconds: int = 30, new_session: bool = False) -> str:
    """Snippet lines that start a grandchild sleeping ``seconds`` with ``marker`` on its command line."""
    return (f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({seconds})', '{marker}'], "
            f"start_new_session={new_session}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n")


def test_normal_snippets_keep_their_verdicts():
    assert run_snippet("def f(x: int) -> int:\n    return 2 * x\n\nassert f(2) == 4\nprint('готово')")
    v = run_snippet("assert sum([1, 2, 3]) == 7, 'сумма не сходится'")
    assert not v and v.reason == "exit code 1: AssertionError: сумма не сходится"
    v = run_snippet("def f(:\n")
    assert not v and v.reason.startswith("exit code 1: SyntaxError")
    v = run_snippet("import json, re, math, itertools, dataclasses, typing, collections\nraise SystemExit(3)")
    assert not v and v.reason == "exit code 3: ?"
    assert isinstance(v, Verdict)


REPLY = """Here is the function:
```python
def hours_to_minutes(hours: int) -> int:
    \"\"\"Return the minutes in ``hours`` hours.\"\"\"
    return hours * 60

assert hours_to_minutes(1) == {want}
```
It multiplies by 60."""


def test_run_reply_runs_the_python_block_of_a_models_reply():
    """The one runner a notebook calls on a model's reply: each outcome as one English line."""
    v = run_reply(REPLY.format(want=60))
    assert v and v.form and str(v) == "passed"
    v = run_reply(REPLY.format(want=1))
    assert not v and v.form and v.reason == "exit code 1: AssertionError"
    assert v.line == "line 5: assert hours_to_minutes(1) == 1"
    assert str(v) == "failed: exit code 1: AssertionError (line 5: assert hours_to_minutes(1) == 1)"
    v = run_reply("I cannot write code today.")
    assert not v and not v.form and str(v) == "failed: no ```python block in the reply"
    v = run_reply("```python\ndef f(x: int) -> int:\n    return x")
    assert not v and not v.form and "not closed" in v.reason
    v = run_reply("```python\nwhile True:\n    pass\n```", timeout=1)
    assert not v and v.form and str(v) == "failed: timed out after 1 s" and v.line == ""
    v = run_reply("```python\nx = 1\ndef f(:\n    pass\n```")
    assert not v and v.reason.startswith("exit code 1: SyntaxError") and v.line == "line 2: def f(:"
    assert all(ord(ch) < 128 for ch in str(v))


def test_the_line_that_raised_is_named_also_by_check_coding():
    v = check_coding(REPLY.format(want=1).split("\n", 1)[1].rsplit("\n", 1)[0])
    assert not v and v.form and v.line == "line 5: assert hours_to_minutes(1) == 1"
    v = run_snippet("def f(x: int) -> float:\n    return 1 / x\n\nassert f(0)")
    assert v.reason == "exit code 1: ZeroDivisionError: division by zero" and v.line == "line 2: return 1 / x"
    assert str(Verdict(True)) == "passed" and str(Verdict(False, "bad")) == "failed: bad"


def test_snippet_sees_no_token_or_other_secret(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "a1b2c3" * 6)
    monkeypatch.setenv("MY_API_KEY", "secret-value")
    v = run_snippet("import os\nleaked = sorted(k for k, v in os.environ.items() if 'hf_' in v or 'secret' in v "
                    "or 'TOKEN' in k or 'KEY' in k)\nassert not leaked, leaked\n"
                    "assert set(os.environ) <= {'PATH', 'LANG', 'LC_ALL', 'HOME', 'TMPDIR', 'OMP_NUM_THREADS', "
                    "'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'}, sorted(os.environ)")
    assert v, v.reason


@pytest.mark.parametrize("layers", ["this machine's", "Landlock alone"])
def test_snippet_cannot_write_in_the_callers_folder(monkeypatch, layers):
    """Landlock refuses (PermissionError); where namespaces work every mount is also read-only, which the
    kernel checks first (EROFS)."""
    caller = Path(tempfile.mkdtemp(prefix="lh-caller-"))
    try:
        caller.chmod(0o777)                 # writable by anyone: only the sandbox can keep the snippet out
        (caller / "keep.txt").write_text("mine")
        (caller / "keep.txt").chmod(0o666)
        monkeypatch.chdir(caller)
        if not LANDLOCK:
            pytest.xfail("no Landlock on this kernel: writes are limited only by file permissions")
        refused = ["PermissionError"]
        if layers == "Landlock alone":
            _no_layers(monkeypatch)
        else:
            refused.append("Read-only file system")
        v = run_snippet(f"open({str(caller / 'pwned.txt')!r}, 'w').write('x')")
        assert not v and any(r in v.reason for r in refused), v.reason
        v = run_snippet(f"import os\nos.remove({str(caller / 'keep.txt')!r})")
        assert not v and any(r in v.reason for r in refused), v.reason
        v = run_snippet(f"open({str(caller / 'keep.txt')!r}, 'a').write('x')")
        assert not v and any(r in v.reason for r in refused), v.reason
        assert sorted(p.name for p in caller.iterdir()) == ["keep.txt"]
        assert (caller / "keep.txt").read_text() == "mine"
        # its own folder stays writable
        assert run_snippet("open('notes.txt', 'w').write('ok')\nassert open('notes.txt').read() == 'ok'")
    finally:
        shutil.rmtree(caller)


def test_the_working_folder_is_temporary_and_removed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    v = run_snippet("import os, sys\nopen('left.txt', 'w').write('x')\nos.mkdir('sub')\nos.chmod('sub', 0)\n"
                    "sys.exit(os.getcwd())")
    folder = Path(v.reason.removeprefix("exit code 1: "))
    assert not v and folder.is_absolute() and folder != tmp_path
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def _run_in_thread(code: str, timeout: float):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("v", run_snippet(code, timeout=timeout)))
    thread.start()
    return thread, box


def _wait_for(marker: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if _alive(marker):
            return True
        time.sleep(0.05)
    return False


def test_a_grandchild_dies_with_the_timed_out_snippet():
    marker = f"lh-grandchild-{uuid.uuid4().hex}"
    thread, box = _run_in_thread("import subprocess, sys, time\n" + _sleeper(marker) + "time.sleep(60)", 3)
    assert _wait_for(marker, 3), "the grandchild never started: the test would prove nothing"
    thread.join(20)
    assert not thread.is_alive() and "timed out" in box["v"].reason
    assert not _alive(marker)


def test_a_background_child_does_not_outlive_a_clean_exit():
    marker = f"lh-background-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    v = run_snippet("import subprocess, sys\n" + _sleeper(marker), timeout=10)
    assert v, v.reason
    assert time.monotonic() - t0 < 8          # its exit ends the run; the sleeper does not hold it open
    assert not _alive(marker)


def test_a_grandchild_in_its_own_session_dies_too():
    marker = f"lh-escapee-{uuid.uuid4().hex}"
    if not NAMESPACES:
        pytest.xfail("no user namespaces here: a grandchild that calls setsid escapes the process-group kill")
    thread, box = _run_in_thread("import subprocess, sys, time\n" + _sleeper(marker, new_session=True)
                                 + "time.sleep(60)", 3)
    assert _wait_for(marker, 3), "the grandchild never started: the test would prove nothing"
    thread.join(20)
    assert not thread.is_alive() and "timed out" in box["v"].reason
    assert not _alive(marker)


def test_a_huge_allocation_is_stopped():
    v = run_snippet("block = bytearray(2 * 2**30)\nprint(len(block))")
    assert not v and "MemoryError" in v.reason


def test_a_fork_bomb_is_stopped():
    from lora_helpers.course.sandbox import capabilities

    if not capabilities().processes_limited:
        pytest.xfail(f"the process count is not limited here: {capabilities()}")
    marker = f"lh-bomb-{uuid.uuid4().hex}"
    code = ("import os, sys, time\nn = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n"
            f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(10)', '{marker}'])\n"
            "        n += 1\nexcept OSError as e:\n    sys.exit(f'stopped after {n} processes: {e!r}')\n"
            "sys.exit(f'not stopped: {n} processes')")
    t0 = time.monotonic()
    v = run_snippet(code, timeout=20)
    assert not v and "not stopped" not in v.reason and "processes" in v.reason, v.reason
    assert time.monotonic() - t0 < 15
    assert not _alive(marker)


def test_no_network():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        if not (NAMESPACES or LANDLOCK >= 4):
            pytest.xfail("neither a network namespace nor Landlock ABI >= 4 here: the network stays reachable")
        v = run_snippet(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()")
        assert not v and "Error" in v.reason, v.reason
        with pytest.raises(BlockingIOError):
            server.accept()


def test_capabilities_match_this_machine():
    from lora_helpers.course.sandbox import capabilities

    caps = capabilities()
    assert bool(caps.unshare) == NAMESPACES, caps
    assert caps.landlock_abi == LANDLOCK, caps
    assert caps.processes_limited == (NAMESPACES or os.geteuid() != 0 or caps.user is not None)
    assert caps.network == ("none (network namespace)" if NAMESPACES else
                            "no TCP (Landlock)" if LANDLOCK >= 4 else "open")
    text = str(caps)
    assert "network" in text and "files" in text and "processes" in text


def _no_layers(monkeypatch, user=None):
    """Run the sandbox as on a machine without namespaces (Docker, Colab), as ``user`` when given."""
    from lora_helpers.course import sandbox

    caps = sandbox.Capabilities(None, sandbox.landlock_abi(), user)
    monkeypatch.setattr(sandbox, "capabilities", lambda: caps)
    return caps


def test_without_namespaces_the_group_kill_still_holds(monkeypatch):
    caps = _no_layers(monkeypatch)
    assert caps.network == ("no TCP (Landlock)" if LANDLOCK >= 4 else "open")
    assert run_snippet("assert 2 + 2 == 4")
    v = run_snippet("assert 2 + 2 == 5, 'нет'")
    assert not v and v.reason == "exit code 1: AssertionError: нет"
    marker = f"lh-fallback-{uuid.uuid4().hex}"
    thread, box = _run_in_thread("import subprocess, sys, time\n" + _sleeper(marker) + "time.sleep(60)", 3)
    assert _wait_for(marker, 3), "the grandchild never started: the test would prove nothing"
    thread.join(20)
    assert "timed out" in box["v"].reason and not _alive(marker)
    v = run_snippet("import subprocess, sys\n" + _sleeper(marker + "-bg"), timeout=10)
    assert v and not _alive(marker + "-bg")


def _python_nobody_can_run():
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and subprocess.run(
                [candidate, "-I", "-c", "pass"], user=65534, group=65534, extra_groups=[], cwd="/",
                capture_output=True).returncode == 0:
            return candidate
    return None


def test_root_runs_the_snippet_as_nobody_with_a_process_limit(monkeypatch):
    """The Colab path: root, no namespaces, an interpreter that 'nobody' can start."""
    from lora_helpers.course import sandbox

    if os.geteuid() != 0:
        pytest.xfail("not root here: the snippet already runs as the current user, under RLIMIT_NPROC")
    python = _python_nobody_can_run()
    if python is None:
        pytest.xfail("no interpreter here that 'nobody' can start")
    monkeypatch.setattr(sandbox, "_PYTHON", (python, "-I", "-B", "-X", "utf8"))
    _no_layers(monkeypatch, user=(65534, 65534))
    assert run_snippet("import os\nassert (os.getuid(), os.getgid(), os.getgroups()) == (65534, 65534, []), "
                       "(os.getuid(), os.getgid(), os.getgroups())"), "not dropped to nobody"
    v = run_snippet("import os\nopen('/root/pwned.txt', 'w')")
    assert not v and "PermissionError" in v.reason and not os.path.exists("/root/pwned.txt")
    code = ("import os, sys, time\nn = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n"
            "            time.sleep(10)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
            "    sys.exit(f'stopped after {n} processes: {e.__class__.__name__}')\nsys.exit(f'not stopped: {n}')")
    v = run_snippet(code, timeout=20)
    assert not v and "stopped after" in v.reason and "BlockingIOError" in v.reason, v.reason
    assert int(v.reason.split("stopped after ")[1].split()[0]) <= 32


# ----------------------------------------------------------------------------- lora_helpers.tables
def test_tables_render_the_rows_they_are_given():
    from lora_helpers import tables

    rows = [{"a": 1, "b": None}, {"a": "x|y", "b": 2.5}]
    cols = {"a": "first", "b": "second"}
    assert tables.markdown(rows, cols).splitlines() == ["| first | second |", "|---|---|", "| 1 | — |",
                                                        "| x\\|y | 2.5 |"]
    assert tables.text([{"n": 1, "v": 10}, {"n": 22, "v": 3}]).splitlines() == [
        " n   v", "--  --", " 1  10", "22   3"]
    html = tables.html([{"json": "<b>\n1. да"}], pre=True)
    assert "<th style='text-align:left;vertical-align:top'>json</th>" in html
    assert "<pre style='white-space:pre-wrap'>&lt;b&gt;\n1. да</pre>" in html
    assert tables.markdown([], {"a": "A"}) == "| A |\n|---|"


# ----------------------------------------------------------------------------- what a caller may pass

@pytest.mark.parametrize("code", [None, 123, b"assert True", ["assert True"]])
def test_code_that_is_no_text_is_refused_in_words(code):
    from lora_helpers.errors import AdapterError
    with pytest.raises(AdapterError, match="code must be a str.*got " + type(code).__name__):
        run_snippet(code)
    with pytest.raises(AdapterError, match="reply must be a str"):
        run_reply(code)


@pytest.mark.parametrize("timeout", [0, -1, 0.0, float("nan"), float("inf"), "5", True, None])
def test_a_timeout_that_is_no_positive_number_is_refused(timeout):
    from lora_helpers.errors import AdapterError
    with pytest.raises(AdapterError, match=r"timeout=.* is not a number of seconds.*e\.g\. 5"):
        run_snippet("assert True", timeout)


def test_a_lone_surrogate_is_refused_and_located():
    """Python source cannot hold one (it is no character): said, with where it is, instead of a UnicodeError."""
    from lora_helpers.errors import AdapterError
    with pytest.raises(AdapterError, match=r"U\+D800 at line 2, column 6") as e:
        run_snippet("x = 1\ns = '\ud800'\nassert s")
    assert isinstance(e.value, ValueError) and e.value.__cause__ is None
    assert run_snippet("s = 'ок \U0001F600'\nassert len(s) == 4")  # real characters beyond the BMP still run
