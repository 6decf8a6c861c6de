"""Calls to other machines (the Hub, a model server) under one policy: every call ends, no message shows a secret.

:func:`within` runs a call in a daemon thread and gives up after a limit: a total, or, for long transfers, a
time without progress. :func:`scrub` takes secrets out of a text a server may have quoted them back into.
"""
from __future__ import annotations

import re
import threading
import time

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_AUTH_VALUE = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}")
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:[a-z_-]*key|[a-z_-]*token|auth|password|pass|secret|sig|signature)=)"
                           r"[^&;#\s'\"]+")


def scrub(text: str, secrets=()) -> str:
    """``text`` with ``***`` for each of ``secrets`` and for what looks like one: URL credentials, Basic/Bearer
    values, Hugging Face tokens, key/token query values."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _HF_TOKEN.sub("hf_***", _AUTH_VALUE.sub(r"\1 ***", text))
    return _SECRET_PARAM.sub(r"\1***", text)


def within(fn, limit: float, *, name: str, progress=None, on_late=None, grace: float = 0.0):
    """``fn()`` in a daemon thread named ``name``; TimeoutError once ``limit`` s pass, whatever the other side does.

    ``progress``: a function whose value changes while the work goes on; then ``limit`` is the time allowed
    without a change, not in all. ``on_late()`` runs when the caller stops waiting (also on Ctrl-C), so the work
    can stop; the caller then waits up to ``grace`` s more for the thread to end.
    """
    box: dict = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        if progress is None:
            worker.join(limit)
        else:
            seen, since = progress(), time.monotonic()
            while worker.is_alive():
                worker.join(min(1.0, limit / 4))
                now, value = time.monotonic(), progress()
                if value != seen:
                    seen, since = value, now
                elif now - since >= limit:
                    break
    finally:
        if worker.is_alive() and on_late is not None:
            on_late()
    if worker.is_alive():
        worker.join(grace)
        raise TimeoutError(f"no answer in {limit:g} s" if progress is None else f"no progress in {limit:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
