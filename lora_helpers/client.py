"""A client for a multi-LoRA server: route each prompt, ask the adapter by name.

:class:`RoutedClient` routes a prompt with a project router and sends it to an OpenAI-compatible server
(vLLM started with :func:`lora_helpers.serve.vllm_command`) with ``model=<adapter name>``. ``openai`` is
imported when a client is made, not with this module.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import AdapterError, AdapterNotServedError, ServeError
from .names import BASE


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
