"""Run untrusted Python (a model-written snippet) in a throw-away sandbox: :func:`run_python`.

The layers, each used where this machine allows it (:func:`capabilities` says which hold here):

* a fresh interpreter in isolated mode (``python -I -B -X utf8``): no ``PYTHON*`` variables, no user
  site-packages, no script folder on ``sys.path``, no ``.pyc`` writes;
* a minimal environment — ``PATH``, ``LANG``/``LC_ALL``, ``HOME`` and ``TMPDIR`` (its own folder), one
  thread for BLAS/OpenMP — and nothing else, so no ``HF_TOKEN`` or other secret;
* its own temporary working folder, deleted afterwards whatever the snippet left in it;
* its own session: when the run ends (timeout or not) the whole process group is killed, so no child or
  grandchild outlives it;
* resource limits, set by ``resource.setrlimit`` in ``preexec_fn``: address space (``memory_mb``), CPU
  seconds (the timeout + 1), processes (what the user already runs + ``max_processes``; the kernel exempts
  root), file size (``file_mb``), open files, no core files;
* namespaces, when ``unshare`` may make them (``--user --map-root-user --net --mount --mount-proc --pid
  --fork --kill-child``): no network (only a loopback that is down); a process tree that dies as a whole
  with the snippet, even a grandchild that started its own session; a supervisor (pid 1 of the tree)
  that stops the run once it holds more than ``max_processes`` processes — which also holds for root; and
  a private view of the files: every mount read-only (so no chmod, chown, utime, xattr or write outside
  its folder, whoever owns the file) and the working folder a fresh tmpfs of ``disk_mb`` MiB and
  ``max_files`` files, gone with the namespace;
* no capabilities: the snippet drops them all (``capset``) with ``no_new_privs`` set, so neither root nor
  the namespace's root can remount, chown or bypass file permissions, nor regain them by ``exec``;
* Landlock (Linux >= 5.13, no privileges needed): writes only inside the working folder and to
  ``/dev/null``; from Landlock ABI 4 no TCP connect or bind; from ABI 6 no signals to processes outside;
* seccomp (x86-64 and arm64): no UNIX sockets other than ``socketpair(AF_UNIX, SOCK_STREAM)`` (which
  ``asyncio`` uses and which reaches nothing), so no connection to a socket file (Docker, D-Bus, X11), and
  no ``io_uring``, which could open one around the filter;
* run as root: the snippet runs as ``nobody`` when that user can start this interpreter.

Fallbacks are silent at run time and visible in :func:`capabilities`: without user namespaces (Docker's
default seccomp profile forbids them; Ubuntu >= 23.10 may, through AppArmor) the network stays reachable
unless Landlock ABI >= 4 blocks TCP, a grandchild that calls ``setsid`` survives the group kill (its CPU
limit still stops it), the snippet may chmod/utime/set xattrs on files outside its folder that its user
owns, and its folder is on the real disk, where only each file's size is limited (``file_mb``), not their
number or total; without Landlock the snippet may write wherever the user it runs as may write; without
seccomp it may connect to UNIX socket files; as root with neither namespaces nor a usable ``nobody`` the
process count is not limited (the timeout still kills the group). Reads are never restricted, and
``/dev/shm`` is not writable (so ``multiprocessing`` locks fail). This keeps a model's code from reading
tokens, touching the caller's files, calling out, filling the disk or outliving its run; it is not a
boundary against a determined attacker.

The child side: ``python -I sandbox.py SNIPPET MAX_PROCESSES DISK_MB MAX_FILES LAYERS`` confines itself
(the LAYERS it is asked for: ``mounts``, ``seccomp``; Landlock wherever the kernel has it; capabilities
always), supervises when it is pid 1 of a new namespace, and runs SNIPPET as ``__main__``. This file imports
only the standard library, so it runs as a plain script.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import math
import os
import platform
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

UNSHARE_FLAGS = ("--user", "--map-root-user", "--net", "--mount", "--mount-proc", "--pid", "--fork",
                 "--kill-child")
SNIPPET = "snippet.py"
_SELF = str(Path(__file__).resolve())
_PYTHON = (sys.executable, "-I", "-B", "-X", "utf8")


@dataclass(frozen=True)
class Result:
    """What a run left: ``returncode`` (None when it timed out) and the end of its stderr."""
    returncode: int | None
    stderr: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


@dataclass(frozen=True)
class Capabilities:
    """The sandbox's layers on this machine (see the module docstring)."""
    unshare: str | None             # the ``unshare`` program, when namespaces work here
    landlock_abi: int               # 0: no Landlock
    user: tuple[int, int] | None    # (uid, gid) the snippet runs as instead of root
    mounts: bool = False            # in the namespaces: every mount read-only, the folder a private tmpfs
    seccomp: bool = False           # no UNIX sockets but stream socketpairs, no io_uring

    @property
    def network(self) -> str:
        return ("none (network namespace)" if self.unshare else
                "no TCP (Landlock)" if self.landlock_abi >= 4 else "open")

    @property
    def processes_limited(self) -> bool:
        return bool(self.unshare) or os.geteuid() != 0 or self.user is not None

    @property
    def metadata_outside_blocked(self) -> bool:
        """chmod, chown, utime and xattrs on files outside its folder (not only writes) are refused."""
        return bool(self.unshare) and self.mounts

    @property
    def disk_limited(self) -> bool:
        """The folder's total size and file count are capped (else only each file's size is)."""
        return bool(self.unshare) and self.mounts

    @property
    def unix_sockets_blocked(self) -> bool:
        return self.seccomp

    def __str__(self) -> str:
        files = ("writes only in its folder (Landlock)" if self.landlock_abi else
                 "writes wherever its user may (no Landlock)")
        meta = ("blocked (read-only mounts)" if self.metadata_outside_blocked else
                "NOT blocked on files its user owns (no mount namespace)")
        disk = ("its folder is a private tmpfs of limited size and file count" if self.disk_limited else
                "NOT limited beyond the size of each file (no mount namespace)")
        unix = "blocked (seccomp)" if self.seccomp else "NOT blocked (no seccomp filter here)"
        tree = ("die with it (pid namespace)" if self.unshare else
                "killed with its process group (a child that calls setsid survives)")
        procs = (f"limited (supervisor in the pid namespace{', RLIMIT_NPROC' if os.geteuid() or self.user else ''})"
                 if self.unshare else "limited (RLIMIT_NPROC)" if self.processes_limited else
                 "not limited (root, and 'nobody' cannot start this interpreter)")
        user = "nobody" if self.user else "the current user"
        return (f"sandbox: network {self.network}; files {files}; chmod/utime/xattr outside its folder {meta}; "
                f"disk use {disk}; UNIX socket files {unix}; child processes {tree}; process count {procs}; "
                f"runs as {user}{', without capabilities' if _LIBC is not None else ''}")


# ----------------------------------------------------------------------------- the kernel's layers (child side)
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _check(r: int, what: str) -> int:
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return r


def _syscall(nr: int, *args) -> int:
    _LIBC.syscall.restype = ctypes.c_long
    return _check(_LIBC.syscall(ctypes.c_long(nr), *args), f"syscall {nr}")


def _no_new_privs() -> None:
    """Nothing this process execs may gain privileges (setuid, file capabilities); Landlock and seccomp need it."""
    _check(_LIBC.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl(PR_SET_NO_NEW_PRIVS)")


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """Give up every capability (after ``_no_new_privs``, an exec cannot bring them back): the namespace's root
    could otherwise make its mounts writable again."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)          # _LINUX_CAPABILITY_VERSION_3, this process
    _check(_LIBC.capset(header, (_CapData * 2)()), "capset")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _private_mounts(snippet: str, disk_mb: int, max_files: int) -> None:
    """In a new mount namespace: make every mount read-only and mount a fresh tmpfs of ``disk_mb`` MiB and
    ``max_files`` inodes on the working folder, holding only a copy of the snippet."""
    folder = os.getcwd()
    code = Path(snippet).read_bytes()
    read_only = _MountAttr(1, 0, 0, 0)                      # MOUNT_ATTR_RDONLY, on "/" and every mount below
    _syscall(442, ctypes.c_int(-100), b"/", ctypes.c_uint(0x8000), ctypes.byref(read_only),
             ctypes.c_size_t(ctypes.sizeof(read_only)))     # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, ...)
    options = f"size={disk_mb}m,nr_inodes={max_files},mode=0700".encode()
    _LIBC.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    _check(_LIBC.mount(b"tmpfs", folder.encode(), b"tmpfs", 2 | 4, options), "mount tmpfs")  # nosuid, nodev
    os.chdir(folder)                                        # the tmpfs, not the read-only folder beneath it
    Path(snippet).write_bytes(code)


# Landlock
_WRITE_FILE, _REFER, _TRUNCATE = 1 << 1, 1 << 13, 1 << 14
_FS_WRITES = _WRITE_FILE | sum(1 << b for b in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
_NET_TCP = 0b11   # bind, connect
_SCOPED = 0b11    # abstract unix sockets, signals


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or this is not Linux)."""
    if _LIBC is None:
        return 0
    try:
        return _syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except OSError:
        return 0


def confine(folder) -> int:
    """Landlock this process and its children: writes only beneath ``folder`` and to /dev/null (plus no TCP
    from ABI 4, no signals out from ABI 6). Irreversible. Returns the ABI used; 0 when there is none."""
    abi = landlock_abi()
    if not abi:
        return 0
    fs = _FS_WRITES | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPED if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24       # the struct as this ABI knows it
    ruleset = _syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path, access in ((folder, fs), ("/dev/null", _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(access, fd)
                _syscall(445, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
            finally:
                os.close(fd)
        _no_new_privs()
        _syscall(446, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return abi


# seccomp: per machine, the audit arch and the numbers of socket, socketpair, io_uring_setup
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 53, 425), "aarch64": (0xC00000B7, 198, 199, 425)}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_supported() -> bool:
    return _LIBC is not None and platform.machine() in _SECCOMP_ARCH


def _no_unix_sockets() -> None:
    """A seccomp filter: socket(AF_UNIX, ...), socketpair of any type but SOCK_STREAM, io_uring_setup and any
    syscall of another ABI (i386, x32) fail with EACCES; everything else is allowed."""
    arch, socket_nr, socketpair_nr, io_uring_nr = _SECCOMP_ARCH[platform.machine()]
    ld, jeq, jge, and_, ret = 0x20, 0x15, 0x35, 0x54, 0x06       # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, ALU|AND|K, RET|K
    allow, deny = 12, 13                                        # the two last instructions
    program = [                  # (code, jump-if-true to, jump-if-false to, k); jumps are absolute here
        (ld, 0, 0, 4),                                          # 0: seccomp_data.arch
        (jeq, 2, deny, arch),
        (ld, 0, 0, 0),                                          # 2: seccomp_data.nr
        (jge, deny, 4, 0x40000000),                             # x32 syscalls on x86-64
        (jeq, deny, 5, io_uring_nr),
        (jeq, 6, 8, socket_nr),
        (ld, 0, 0, 16),                                         # 6: args[0], the domain
        (jeq, deny, allow, 1),                                  # AF_UNIX
        (jeq, 9, allow, socketpair_nr),
        (ld, 0, 0, 24),                                         # 9: args[1], the type
        (and_, 0, 0, 0xF),                                      # without SOCK_NONBLOCK / SOCK_CLOEXEC
        (jeq, allow, deny, 1),                                  # SOCK_STREAM
        (ret, 0, 0, 0x7FFF0000),                                # 12: SECCOMP_RET_ALLOW
        (ret, 0, 0, 0x00050000 | errno.EACCES),                 # 13: SECCOMP_RET_ERRNO
    ]
    rel = [(c, t - i - 1 if c in (jeq, jge) else 0, f - i - 1 if c in (jeq, jge) else 0, k)
           for i, (c, t, f, k) in enumerate(program)]
    filters = (_SockFilter * len(rel))(*(_SockFilter(*x) for x in rel))
    prog = _SockFprog(len(rel), filters)
    _no_new_privs()
    _check(_LIBC.prctl(22, ctypes.c_ulong(2), ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl(PR_SET_SECCOMP)")


# ----------------------------------------------------------------------------- the child
def _supervise(child: int, max_processes: int) -> int:
    """As pid 1 of the namespace: reap orphans; return the snippet's exit code, or 1 once the namespace holds
    more than ``max_processes`` processes. Whatever is left dies with pid 1."""
    while True:
        try:
            while (done := os.waitpid(-1, os.WNOHANG))[0]:
                if done[0] == child:
                    code = os.waitstatus_to_exitcode(done[1])
                    return code if code >= 0 else 128 - code
        except ChildProcessError:
            return 1
        if sum(name.isdigit() for name in os.listdir("/proc")) > max_processes + 1:
            print(f"sandbox: the snippet started more than {max_processes} processes and was stopped",
                  file=sys.stderr, flush=True)
            return 1
        time.sleep(0.01)


def _child(argv: list[str]) -> None:
    snippet, max_processes, disk_mb, max_files = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    layers = set(argv[5].split(",")) - {""}
    try:
        if "mounts" in layers:
            _private_mounts(snippet, disk_mb, max_files)
        if _LIBC is not None:             # Linux
            _no_new_privs()
            _drop_capabilities()
        confine(os.getcwd())
        if "seccomp" in layers:
            _no_unix_sockets()
    except OSError as e:
        sys.exit(f"sandbox: confining the snippet failed ({e}); it was not run")
    if os.getpid() == 1:                  # a new pid namespace (--mount-proc: /proc shows only it)
        pid = os.fork()
        if pid:
            sys.stdout.flush()
            os._exit(_supervise(pid, max_processes))
    sys.argv = [snippet]
    runpy.run_path(snippet, run_name="__main__")


# ----------------------------------------------------------------------------- the parent
def _nobody() -> tuple[int, int] | None:
    try:
        import pwd
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return None


def _as_user(user) -> dict:
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def _works(caps: Capabilities) -> bool:
    """Whether the real child runs an empty snippet under ``caps``."""
    try:
        return _run("", caps, 30.0, memory_mb=1024, file_mb=1, disk_mb=1, max_files=16, max_processes=8,
                    tail_bytes=0).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=None)
def capabilities() -> Capabilities:
    """Which layers work on this machine (probed once per process: a few short interpreter starts)."""
    caps = Capabilities(None, landlock_abi(), None)
    if os.geteuid() == 0 and (user := _nobody()) and _works(replace(caps, user=user)):
        caps = replace(caps, user=user)     # else e.g. the interpreter or this file lives under /root
    unshare = shutil.which("unshare") if _LIBC is not None else None
    if unshare:
        for trial in (replace(caps, unshare=unshare, mounts=True), replace(caps, unshare=unshare)):
            if _works(trial):
                caps = trial
                break
    if seccomp_supported() and _works(replace(caps, seccomp=True)):
        caps = replace(caps, seccomp=True)
    return caps


def _environment(folder) -> dict:
    folder = str(folder)
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": folder,
            "TMPDIR": folder, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _tasks_of(uid: int) -> int | None:
    """How many tasks (threads count: RLIMIT_NPROC counts them) run under real uid ``uid``; None without /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


def _limits(memory_mb: int, cpu_s: int, processes: int | None, file_mb: int):
    import resource     # POSIX only: importing this module elsewhere still works

    wanted = [(resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, cpu_s),
              (resource.RLIMIT_FSIZE, file_mb << 20), (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)]
    if processes is not None:
        wanted.append((resource.RLIMIT_NPROC, processes))

    def apply():          # in the child between fork and exec: setrlimit calls only
        for kind, value in wanted:
            hard = resource.getrlimit(kind)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            try:
                resource.setrlimit(kind, (value, value))
            except (ValueError, OSError):   # e.g. macOS refuses some RLIMIT_AS values: run without that one
                pass
    return apply


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies aside); False without /proc."""
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc/self") else ()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            return True
    return False


def _kill_group(proc: subprocess.Popen, wait_s: float = 5.0) -> None:
    """SIGKILL the snippet's process group and wait until it is gone: its pid 1, when there is a namespace,
    exits only after every process of the namespace has, so nothing it started is left running."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # its own session: the snippet and every process it started
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    end = time.monotonic() + wait_s
    while _group_alive(proc.pid) and time.monotonic() < end:
        time.sleep(0.01)


def run_python(code: str, timeout: float = 5.0, *, memory_mb: int = 1024, file_mb: int = 16, disk_mb: int = 64,
               max_files: int = 4096, max_processes: int = 32, tail_bytes: int = 65536) -> Result:
    """Run ``code`` as ``__main__`` in the sandbox for at most ``timeout`` seconds (see the module docstring).

    ``memory_mb``: address-space limit; ``file_mb``: largest file it may write (its stderr included);
    ``disk_mb`` / ``max_files``: size and file count of its folder where it is a private tmpfs (see
    :func:`capabilities`); ``max_processes``: processes it may start. Returns its exit code (None after a
    timeout) and the last ``tail_bytes`` of its stderr; stdout is discarded.
    """
    return _run(code, capabilities(), timeout, memory_mb=memory_mb, file_mb=file_mb, disk_mb=disk_mb,
                max_files=max_files, max_processes=max_processes, tail_bytes=tail_bytes)


def _run(code: str, caps: Capabilities, timeout: float, *, memory_mb, file_mb, disk_mb, max_files, max_processes,
         tail_bytes) -> Result:
    uid = caps.user[0] if caps.user else os.getuid()
    started = _tasks_of(uid)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lh-snippet-", ignore_cleanup_errors=True) as folder, \
            tempfile.TemporaryFile() as stderr:
        Path(folder, SNIPPET).write_text(code, encoding="utf-8")
        if caps.user:
            os.chown(folder, *caps.user)
        layers = ",".join(name for name, on in (("mounts", caps.unshare and caps.mounts), ("seccomp", caps.seccomp))
                          if on)
        cmd = [*_PYTHON, _SELF, SNIPPET, str(max_processes), str(disk_mb), str(max_files), layers]
        if caps.unshare:
            cmd = [caps.unshare, *UNSHARE_FLAGS, "--", *cmd]
        limits = _limits(memory_mb, math.ceil(timeout) + 1, None if started is None else started + max_processes,
                         file_mb)
        proc = subprocess.Popen(cmd, cwd=folder, env=_environment(folder), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                preexec_fn=limits, **_as_user(caps.user))
        returncode = None
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill_group(proc)
        size = stderr.seek(0, os.SEEK_END)
        stderr.seek(max(0, size - tail_bytes))
        text = stderr.read().decode("utf-8", "replace")
    return Result(returncode, text, time.perf_counter() - t0)


if __name__ == "__main__":
    _child(sys.argv)
