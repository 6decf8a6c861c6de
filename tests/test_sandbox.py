"""The sandbox's file-metadata, UNIX-socket and disk layers (course/sandbox.py).

A snippet that tries fails and the caller's file or socket is untouched. Each layer this machine lacks is an
xfail with the reason; and for each, a machine without it (the capabilities faked down) is reported as
"NOT blocked" by ``capabilities()`` — checked to be the truth by doing the thing there.
"""
import os
import platform
import shutil
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from lora_helpers.course import sandbox
from lora_helpers.course.evaluate import run_snippet

CAPS = sandbox.capabilities()


def _without(monkeypatch, **off) -> sandbox.Capabilities:
    """Run the sandbox as on a machine without some layers: ``mounts=False``, ``seccomp=False``."""
    caps = replace(CAPS, **off)
    monkeypatch.setattr(sandbox, "capabilities", lambda: caps)
    return caps


# ----------------------------------------------------------------------------- metadata outside its folder
@pytest.fixture
def outside():
    """A file outside the snippet's folder, in a folder anyone may write, with a known mtime and an xattr."""
    folder = Path(tempfile.mkdtemp(prefix="lh-outside-"))
    folder.chmod(0o777)
    f = folder / "keep.txt"
    f.write_text("mine")
    f.chmod(0o644)
    os.utime(f, (1_000_000, 1_000_000))
    try:
        os.setxattr(f, "user.lh", b"before")
    except OSError:
        pass                                # a filesystem without user xattrs: the other attempts still count
    yield f
    shutil.rmtree(folder)


def _state(f: Path):
    st = f.stat()      # ctime moves on every change of the inode's metadata, whatever changed it
    xattrs = {k: os.getxattr(f, k) for k in os.listxattr(f)}
    return st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, xattrs, f.read_text()


ATTEMPTS = {
    "chmod": "os.chmod(P, 0o777)",
    "fchmod": "os.chmod(os.open(P, os.O_RDONLY), 0o777)",
    "utime": "os.utime(P, (0, 0))",
    "touch": "os.utime(P)",
    "setxattr": "os.setxattr(P, 'user.lh', b'pwned')",
    "new xattr": "os.setxattr(P, 'user.other', b'pwned')",
    "removexattr": "os.removexattr(P, 'user.lh')",
    "chown": "os.chown(P, os.getuid(), 0 if os.getgid() else 1)",
}


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_metadata_outside_its_folder_cannot_change(outside, attempt):
    if not CAPS.metadata_outside_blocked:
        pytest.xfail(f"no mount namespace here: {CAPS}")
    before = _state(outside)
    v = run_snippet(f"import os\nP = {str(outside)!r}\n{ATTEMPTS[attempt]}")
    assert not v and ("Read-only file system" in v.reason or "PermissionError" in v.reason), v.reason
    assert _state(outside) == before


def test_the_snippet_cannot_make_the_mounts_writable_again(outside):
    """The namespace's root would be allowed to clear the read-only flag: it has no capabilities left."""
    if not CAPS.metadata_outside_blocked:
        pytest.xfail(f"no mount namespace here: {CAPS}")
    before = _state(outside)
    code = f"""import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("set", "clr", "propagation", "userns_fd")]
done = []
for flags in (0, 0x8000):                    # "/" alone, then every mount (AT_RECURSIVE)
    if libc.syscall(442, -100, b"/", flags, ctypes.byref(Attr(0, 1, 0, 0)), 32) == 0:
        done.append(f"mount_setattr {{flags}}")
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
if libc.mount(None, b"/", None, 32 | 4096, None) == 0:   # MS_REMOUNT | MS_BIND, without MS_RDONLY
    done.append("remount")
os.chmod({str(outside)!r}, 0o777)
sys.exit(f"writable again through {{done}}")
"""
    v = run_snippet(code)
    assert not v and "Read-only file system" in v.reason and "writable again" not in v.reason, v.reason
    assert _state(outside) == before


def test_metadata_inside_its_folder_still_works():
    assert run_snippet("import os, shutil\nopen('a.txt', 'w').write('x')\nos.chmod('a.txt', 0o600)\n"
                       "os.utime('a.txt', (0, 0))\nshutil.copy2('a.txt', 'b.txt')\n"
                       "assert os.stat('b.txt').st_mtime == 0 and os.stat('b.txt').st_mode & 0o777 == 0o600")


def test_without_a_mount_namespace_metadata_is_reported_not_blocked(outside, monkeypatch):
    caps = _without(monkeypatch, mounts=False)
    assert not caps.metadata_outside_blocked
    assert "chmod/utime/xattr outside its folder NOT blocked" in str(caps)
    v = run_snippet(f"import os\nos.chmod({str(outside)!r}, 0o604)")   # and so it is: the report is the truth
    assert v, v.reason
    assert outside.stat().st_mode & 0o777 == 0o604


# ----------------------------------------------------------------------------- UNIX socket files
@pytest.fixture
def unix_server():
    """A stream and a datagram UNIX socket anyone may connect to, in a folder outside the snippet's."""
    folder = Path(tempfile.mkdtemp(prefix="lh-sock-"))
    stream, dgram = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stream.bind(str(folder / "stream"))
    stream.listen()
    dgram.bind(str(folder / "dgram"))
    for s in (stream, dgram):
        s.setblocking(False)
        os.chmod(s.getsockname(), 0o777)
    folder.chmod(0o755)
    yield stream, dgram
    stream.close()
    dgram.close()
    shutil.rmtree(folder)


def _nothing_arrived(stream, dgram) -> bool:
    for call in (stream.accept, lambda: dgram.recv(100)):
        try:
            call()
            return False
        except BlockingIOError:
            pass
    return True


SOCKET_ATTEMPTS = {
    "connect": "socket.socket(socket.AF_UNIX).connect(STREAM)",
    "sendto": "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'x', DGRAM)",
    "socketpair sendto": "socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].sendto(b'x', DGRAM)",
    "io_uring": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nparams = ctypes.create_string_buffer(120)\n"
                 "if libc.syscall(425, 8, params) < 0:\n    raise OSError(ctypes.get_errno(), 'io_uring_setup')"),
}


@pytest.mark.parametrize("attempt", list(SOCKET_ATTEMPTS))
def test_unix_socket_files_cannot_be_reached(unix_server, attempt):
    if not CAPS.unix_sockets_blocked:
        pytest.xfail(f"no seccomp filter here: {CAPS}")
    stream, dgram = unix_server
    v = run_snippet(f"import socket\nSTREAM, DGRAM = {stream.getsockname()!r}, {dgram.getsockname()!r}\n"
                    + SOCKET_ATTEMPTS[attempt])
    assert not v and "PermissionError" in v.reason, v.reason
    assert _nothing_arrived(stream, dgram)


def test_socketpairs_and_asyncio_still_work():
    assert run_snippet("import asyncio, socket\na, b = socket.socketpair()\na.sendall(b'x')\n"
                       "assert b.recv(1) == b'x'\nasync def f() -> int:\n    return 3\n\nassert asyncio.run(f()) == 3")


def test_without_seccomp_unix_sockets_are_reported_not_blocked(unix_server, monkeypatch):
    caps = _without(monkeypatch, seccomp=False)
    assert not caps.unix_sockets_blocked and "UNIX socket files NOT blocked" in str(caps)
    stream, dgram = unix_server
    v = run_snippet(f"import socket\nsocket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'hi', "
                    f"{dgram.getsockname()!r})")
    assert v, v.reason
    assert dgram.recv(100) == b"hi"


def test_seccomp_is_used_where_the_machine_has_it():
    """An independent probe: a Linux x86-64 / arm64 kernel built with seccomp filters (all mainstream ones)."""
    status = Path("/proc/self/status").read_text() if os.path.exists("/proc/self/status") else ""
    expected = "Seccomp_filters:" in status and platform.machine() in ("x86_64", "aarch64")
    assert CAPS.seccomp == expected, CAPS


# ----------------------------------------------------------------------------- the disk
FILES = "import os\nfor i in range({n}):\n    open(f'f{{i}}', 'wb').write(b'x' * {size})\n"


def test_many_files_cannot_fill_the_disk():
    if not CAPS.disk_limited:
        pytest.xfail(f"no mount namespace here: {CAPS}")
    r = sandbox.run_python(FILES.format(n=300, size=16384), disk_mb=1, max_files=1000)   # 4.7 MiB asked
    assert r.returncode and "No space left on device" in r.stderr, r
    r = sandbox.run_python(FILES.format(n=200, size=0), disk_mb=1, max_files=64)       # only inodes
    assert r.returncode and "No space left on device" in r.stderr, r
    r = sandbox.run_python("import os\nos.makedirs('/'.join(['d'] * 100))", disk_mb=1, max_files=64)
    assert r.returncode and "No space left on device" in r.stderr, r
    assert sandbox.run_python(FILES.format(n=40, size=16384), disk_mb=1, max_files=64).returncode == 0


def test_without_a_mount_namespace_the_disk_is_reported_not_limited(monkeypatch):
    caps = _without(monkeypatch, mounts=False)
    assert not caps.disk_limited and "disk use NOT limited" in str(caps)
    assert sandbox.run_python(FILES.format(n=300, size=16384), disk_mb=1, max_files=64).returncode == 0


def test_mounts_are_used_where_namespaces_are():
    """mount_setattr (Linux >= 5.12) and a tmpfs in a user namespace: wherever ``unshare`` works here."""
    release = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    if CAPS.unshare and release >= (5, 12):
        assert CAPS.mounts, CAPS
    assert CAPS.metadata_outside_blocked == CAPS.disk_limited == bool(CAPS.unshare and CAPS.mounts)


def test_the_report_names_every_layer():
    text = str(CAPS)
    for part in ("network", "chmod/utime/xattr outside its folder", "disk use", "UNIX socket files",
                 "child processes", "process count", "without capabilities"):
        assert part in text, (part, text)


def test_capabilities_are_dropped():
    """Even root (or the namespace's root) keeps none: no remount, no chown, no bypassing file modes."""
    v = run_snippet("caps = dict(l.split(':') for l in open('/proc/self/status') if l.startswith('Cap'))\n"
                    "assert int(caps['CapEff'], 16) == int(caps['CapPrm'], 16) == 0, caps")
    assert v, v.reason
