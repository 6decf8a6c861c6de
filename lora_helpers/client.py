"""A client for a multi-LoRA server: route each prompt, ask the adapter by name.

:class:`RoutedClient` routes a prompt with a project router and sends it to an OpenAI-compatible server
(vLLM started with :func:`lora_helpers.serve.vllm_command`) with ``model=<adapter name>``. ``openai`` is
imported when a client is made, not with this module.

Credentials never show: a ``user:password@`` in the URL is sent as an ``Authorization: Basic`` header (the URL
the HTTP library logs has none), query values (``?key=...``) are sent but taken out of the HTTP libraries' log
lines, and messages carry ``***`` for both and for the API key. Every call ends within ``timeout`` seconds.
"""
from __future__ import annotations

import base64
import logging
import math
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from .errors import AdapterError, AdapterNotServedError, ServeError
from .names import BASE
from .remote import scrub, within

DEFAULT_TIMEOUT_S = 60.0
_LOGGERS = ("httpx", "httpx2", "openai", "openai._base_client")  # where the HTTP libraries log requests
_CLIENTS: weakref.WeakSet = weakref.WeakSet()  # live clients, whose secrets the log filter takes out


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
    """``url`` as messages may show it: ``***@`` for ``user:password@``, ``***`` for every query value."""
    parts = urlsplit(url)
    netloc = "***@" + parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _url_parts(base_url):
    """``base_url`` split, or an AdapterError that shows it without credentials."""
    text = str(base_url).strip()
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # an unclosed '[' or a port that is no number or over 65535
        ok = False
    if ok:
        return parts
    shown = scrub(text)
    shown = "***@" + shown.rpartition("@")[2] if "@" in shown else shown  # credentials without a scheme too
    raise AdapterError(f"base_url={shown!r} is not an http(s) URL with a host: expected the server's address, "
                       "e.g. 'http://127.0.0.1:8000/v1' (an IPv6 host in brackets: 'http://[::1]:8000/v1').")


def _split_url(base_url):
    """``base_url`` (``/v1`` added when missing) as (the URL to send to, the URL to show, headers, query, the
    secrets in it): ``user:password@`` becomes a Basic header, as httpx would send it, and leaves the URL."""
    parts = _url_parts(base_url)
    path = parts.path.rstrip("/")
    parts = parts._replace(path=path if path.endswith("/v1") else path + "/v1", fragment="")
    url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    headers = {}
    if user or password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    secrets = (parts.netloc.rpartition("@")[0], parts.password, password, headers.get("Authorization"),
               *query.values())
    return url, _without_credentials(urlunsplit(parts)), headers, query, secrets


class _Redact(logging.Filter):
    """Takes live clients' secrets out of the HTTP libraries' log records (the request line shows the query)."""

    def filter(self, record):
        secrets = [s for client in list(_CLIENTS) for s in client._secrets]
        if secrets:
            text = record.getMessage()
            clean = scrub(text, secrets)
            if clean != text:
                record.msg, record.args = clean, None
        return True


_REDACT = _Redact()


class RoutedClient:
    """Route each prompt with ``router`` and ask an OpenAI-compatible server with ``model=<adapter name>``.

    ``base_url``: e.g. "http://127.0.0.1:8000/v1" (``/v1`` is added when missing; a ``user:password@`` or a
    query in it is used but never shown: ``self.base_url``, messages and the HTTP libraries' log lines carry
    ``***`` instead). ``router``: anything with ``.route(text) -> name`` (``lh.make_router("keyword")``) or a
    plain ``str -> str`` function. The route "base" goes to the base model's served name (``base_model_name``,
    else asked from the server's ``/v1/models`` once). Replies are greedy (temperature 0) unless told otherwise.
    ``timeout``: the seconds one call (a chat, the model list) may take in all, retries included (default 60;
    raise it for long generations on a slow server). Server errors, timeouts and replies that are not OpenAI's
    format become :class:`ServeError` (:class:`AdapterNotServedError` when the server does not serve that adapter).
    """

    def __init__(self, base_url: str, router, api_key: str | None = None, base_model_name: str | None = None,
                 *, timeout: float = DEFAULT_TIMEOUT_S, max_retries: int = 1, max_workers: int = 8):
        try:
            import openai
        except ImportError:
            raise ServeError("RoutedClient needs the `openai` package, which lora_helpers installs only on request: "
                             'pip install "lora-helpers[client]" (or pip install openai).') from None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise AdapterError(f"timeout={timeout!r} is not a number of seconds: expected a positive number such "
                               f"as {DEFAULT_TIMEOUT_S:g} (the default).")
        self._openai = openai
        url, self.base_url, headers, query, secrets = _split_url(base_url)
        from .router import as_router  # a router object or a plain str -> str function, as route_and_generate
        self.router = as_router(router)
        self.base_model_name = base_model_name
        self.max_workers = max_workers
        self.timeout = float(timeout)
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._secrets = sorted({s for s in (*secrets, api_key) if s and len(s) >= 4 and s != "EMPTY"}, key=len,
                               reverse=True)
        self.client = openai.OpenAI(base_url=url, api_key=api_key, timeout=self.timeout, max_retries=max_retries,
                                    default_headers=headers or None, default_query=query or None)
        _CLIENTS.add(self)
        for name in _LOGGERS:
            if _REDACT not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_REDACT)

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
        return scrub(str(text), self._secrets)

    def _not_openai(self, reply: str) -> ServeError:
        return ServeError(f"The server at {self.base_url} answered, but its reply is not a {reply} in OpenAI's "
                          "format. Is that URL an OpenAI-compatible server (vLLM: `vllm serve`, see "
                          "lh.serve.vllm_command), not a proxy login page or another service?")

    def _ask(self, fn, model: str | None = None):
        """``fn()`` within ``self.timeout`` s; its failures as ServeError, with no chained error (a server may
        quote credentials back in one)."""
        openai = self._openai
        try:
            return within(fn, self.timeout, name="lora_helpers client call")
        except (TimeoutError, openai.APITimeoutError):
            failure = ServeError(f"The server at {self.base_url} did not answer within {self.timeout:g} s. Is it "
                                 "overloaded or stuck? For long generations pass a larger timeout= (seconds).")
        except openai.NotFoundError as e:
            what = f"model {model!r}" if model else "that path"
            failure = AdapterNotServedError(self._clean(
                f"The server at {self.base_url} does not serve {what}: {_server_message(e)} Served: "
                f"{self._served_or_unknown()}. Start vLLM with --lora-modules {model or 'name'}=<adapter folder>, "
                "or load it at run time (POST /v1/load_lora_adapter)."))
        except openai.APIConnectionError as e:
            failure = ServeError(self._clean(
                f"Cannot reach the server at {self.base_url}: {_server_message(e)}. Is `vllm serve` running "
                "there (see lh.serve.vllm_command), and is the URL right?"))
        except openai.APIStatusError as e:
            failure = ServeError(self._clean(
                f"The server at {self.base_url} answered {e.status_code}: {_server_message(e)}"))
        raise failure

    @contextmanager
    def _parsing(self, reply: str):
        """Read a 200 reply; anything that is not OpenAI's format becomes a ServeError."""
        try:
            yield
        except (self._openai.APIResponseValidationError, AttributeError, TypeError, KeyError, IndexError,
                ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python reads
            raise self._not_openai(reply) from None

    def _served_or_unknown(self) -> str:
        try:
            return ", ".join(sorted(m["id"] for m in self.models())) or "nothing"
        except Exception:  # noqa: BLE001 - only a hint inside another error message
            return "unknown"

    def models(self) -> list[dict]:
        """What the server serves: dicts with ``id`` and ``parent`` (None for the base, the base for adapters)."""
        raw = self._ask(self.client.models.with_raw_response.list)
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
        raw = self._ask(lambda: self.client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, **kw), model)
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
