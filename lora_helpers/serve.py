"""Beyond one notebook: serve the base and its adapters with vLLM multi-LoRA, and route requests to it.

- :func:`vllm_command` builds the ``vllm serve`` command line (``--enable-lora``, ``--lora-modules``,
  ``--max-lora-rank`` from the adapters' ranks); :func:`shell_line` prints it for a terminal.
- :class:`RoutedClient` routes each prompt with a project router and sends it to the server's
  OpenAI-compatible API with ``model=<adapter name>``.
- ``python -m lora_helpers.serve`` prints the command for the demo adapters; ``--bench`` compares PEFT's
  mixed batch in-process with vLLM (see :mod:`lora_helpers.course.serve_local`, which also starts servers here).

Neither vLLM nor ``openai`` is needed to import this module: vLLM runs as a separate program (its CPU
build lives in its own environment, see ``make serve-setup``), and ``openai`` is imported by the client.
"""
from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import AdapterError, AdapterNotFoundError, AdapterNotServedError, ServeError
from .names import BASE

# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py); an adapter above it is refused.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


# ----------------------------------------------------------------------------- the command
def adapter_rank(folder) -> int:
    """The LoRA rank of a PEFT adapter folder: ``r`` in adapter_config.json (or the largest ``rank_pattern``)."""
    cfg_file = Path(folder) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterNotFoundError(f"No adapter_config.json in {folder}: expected a PEFT adapter folder "
                                   "(save one with model.save_pretrained(folder) or lh.save_adapter).") from None
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise AdapterError(f"{cfg_file} is not valid JSON ({type(e).__name__}); re-save the adapter.") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfg_file} holds a JSON {type(cfg).__name__}, expected an object with 'r'; "
                           "re-save the adapter.")
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


def _short(text, limit: int = 80) -> str:
    """``text`` for a message: a long name or a model's repr cut to ``limit`` characters."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _is(path: Path, test) -> bool:
    try:
        return test(path)
    except OSError:  # a name too long for the file system names nothing
        return False


_WHAT_TO_PASS = ("vLLM loads a model from a local folder or a Hub repo id (like 'owner/model'), not from a Python "
                 "object: pass the folder the model was saved to (model.save_pretrained(folder), or "
                 "lh.merge_and_save for a merged adapter), its Hub repo id, or a preset ('smollm2-135m', "
                 "'mistral-7b').")


def _model_name(model_or_folder) -> str:
    """A preset, folder or repo id as a string; a loaded model (or PeftModel) by its ``name_or_path``."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        return os.fspath(model_or_folder)
    get_base = getattr(model_or_folder, "get_base_model", None)  # a PeftModel: the base it was built on
    model = get_base() if callable(get_base) else model_or_folder
    name = getattr(model, "name_or_path", None)
    if isinstance(name, str) and name:
        return name
    raise AdapterError(f"Got a {type(model_or_folder).__name__} without a name_or_path, so there is nothing to "
                       f"serve. {_WHAT_TO_PASS}")


def _base_path(model_or_folder) -> tuple[str, str]:
    """(what vLLM loads, the served model name) for a preset, a local folder, a Hub repo id or a loaded model."""
    from huggingface_hub.utils import validate_repo_id

    from . import base as b

    name = _model_name(model_or_folder)
    if name == "auto":
        name = "smollm2-135m" if b.pick_device() == "cpu" else b.MISTRAL_NAME
    if name in ("smollm2-135m", b.EMBEDDED_NAME):
        return str(b.embedded_folder()), b.EMBEDDED_NAME
    if name == "mistral-7b":
        return b.MISTRAL_NAME, b.MISTRAL_NAME
    path = Path(name).expanduser()
    if _is(path, Path.exists):  # a folder, or a GGUF file
        return str(path.resolve()), path.name
    try:
        validate_repo_id(name)
    except ValueError:  # HFValidationError
        raise AdapterError(f"{_short(name)} is neither a local folder nor a Hub repo id. {_WHAT_TO_PASS}") from None
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
    folder of the embedded base; "mistral-7b"; a local transformers folder; a Hub repo id; or a loaded
    model (or PeftModel), served by the folder or repo id it was loaded from (its ``name_or_path``).
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
        if not isinstance(source, (str, os.PathLike)):
            raise AdapterError(f"Adapter {name!r}: got a {type(source).__name__}; expected the adapter's folder "
                               "(lh.save_adapter returns one) or a Hub repo id.")
        source = os.fspath(source)
        path = Path(source).expanduser()
        if _is(path, Path.is_dir):
            ranks.append(adapter_rank(path))
            source = str(path.resolve())
        elif "max_lora_rank" not in opts:
            raise AdapterNotFoundError(
                f"Adapter {name!r}: {_short(source)} is not a local folder, so its rank cannot be read. Give a "
                "folder (lh.resolve_adapter('hub:owner/repo') downloads one), or pass max_lora_rank=<its r> to "
                "serve a Hub repo id that vLLM downloads itself.")
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


def _without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``: what messages may show."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class RoutedClient:
    """Route each prompt with ``router`` and ask an OpenAI-compatible server with ``model=<adapter name>``.

    ``base_url``: e.g. "http://127.0.0.1:8000/v1" (``/v1`` is added when missing; credentials in it are used
    but never shown: ``self.base_url`` and messages carry ``***@`` instead). ``router``: anything with
    ``.route(text) -> name`` (``lh.make_router("keyword")``). The route "base" goes to the base model's
    served name (``base_model_name``, else asked from the server's ``/v1/models`` once). Replies are greedy
    (temperature 0) unless told otherwise. Server errors and replies that are not OpenAI's format become
    :class:`ServeError` (:class:`AdapterNotServedError` when the server does not serve that adapter).
    """

    def __init__(self, base_url: str, router, api_key: str | None = None, base_model_name: str | None = None,
                 *, timeout: float = 120.0, max_retries: int = 1, max_workers: int = 8):
        try:
            import openai
        except ImportError:
            raise ServeError("RoutedClient needs the `openai` package: pip install openai") from None
        self._openai = openai
        url = str(base_url).rstrip("/")
        url = url if url.endswith("/v1") else url + "/v1"
        self.base_url = _without_credentials(url)
        self.router = router
        self.base_model_name = base_model_name
        self.max_workers = max_workers
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        parts = urlsplit(url)
        secrets = (parts.netloc.rpartition("@")[0], parts.password, unquote(parts.password or ""), api_key)
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4 and s != "EMPTY"}, key=len, reverse=True)
        self.client = openai.OpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    def __repr__(self):
        return f"RoutedClient({self.base_url!r}, router={type(self.router).__name__})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.client.close()

    def _clean(self, text) -> str:
        """``text`` without the URL's credentials or the API key (a server may echo them)."""
        text = str(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _not_openai(self, reply: str) -> ServeError:
        return ServeError(f"The server at {self.base_url} answered, but its reply is not a {reply} in OpenAI's "
                          "format. Is that URL an OpenAI-compatible server (vLLM: `vllm serve`, see "
                          "lh.serve.vllm_command), not a proxy login page or another service?")

    @contextmanager
    def _errors(self, model: str | None = None):
        openai = self._openai
        try:
            yield
        except openai.NotFoundError as e:
            what = f"model {model!r}" if model else "that path"
            raise AdapterNotServedError(self._clean(
                f"The server at {self.base_url} does not serve {what}: {_server_message(e)} Served: "
                f"{self._served_or_unknown()}. Start vLLM with --lora-modules {model or 'name'}=<adapter folder>, "
                "or load it at run time (POST /v1/load_lora_adapter).")) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise ServeError(self._clean(
                f"Cannot reach the server at {self.base_url}: {_server_message(e)}. Is `vllm serve` running "
                "there (see lh.serve.vllm_command), and is the URL right?")) from None
        except openai.APIStatusError as e:
            raise ServeError(self._clean(
                f"The server at {self.base_url} answered {e.status_code}: {_server_message(e)}")) from None

    @contextmanager
    def _parsing(self, reply: str):
        """Read a 200 reply; anything that is not OpenAI's format becomes a ServeError."""
        try:
            yield
        except (self._openai.APIResponseValidationError, AttributeError, TypeError, KeyError, IndexError,
                ValueError):
            raise self._not_openai(reply) from None

    def _served_or_unknown(self) -> str:
        try:
            return ", ".join(sorted(m["id"] for m in self.models())) or "nothing"
        except Exception:  # noqa: BLE001 - only a hint inside another error message
            return "unknown"

    def models(self) -> list[dict]:
        """What the server serves: dicts with ``id`` and ``parent`` (None for the base, the base for adapters)."""
        with self._errors():
            raw = self.client.models.with_raw_response.list()
        with self._parsing("model list"):
            out = [{"id": m.id, "parent": getattr(m, "parent", None), "root": getattr(m, "root", None)}
                   for m in raw.parse().data]
        if not all(isinstance(m["id"], str) and m["id"] for m in out):
            raise self._not_openai("model list")
        return out

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
            raw = self.client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, **kw)
        with self._parsing("chat completion"):
            text = raw.parse().choices[0].message.content
        if text is not None and not isinstance(text, str):
            raise self._not_openai("chat completion")
        return name, (text or "").strip()

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


def main(argv=None) -> None:
    import argparse

    from .course.demo_data import demo_sources

    p = argparse.ArgumentParser(description="Print the vLLM command that serves the demo adapters.")
    p.add_argument("--adapters", default=None, help="folder with lora_json/, lora_coding/, lora_support/")
    args = p.parse_args(argv)
    print(shell_line(vllm_command("smollm2-135m", demo_sources(args.adapters), max_model_len=1024)))


if __name__ == "__main__":
    main()
