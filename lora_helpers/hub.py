"""All Hugging Face Hub traffic: fetch an adapter ('hub:owner/repo[/sub][@rev]'), upload one, download a base model.

:func:`find_token` is huggingface_hub's own ``get_token()`` (plus the Colab secret in a Colab runtime it does
not recognise) unless a token is given. Repository ids and revisions are checked before any request. Every Hub
call ends: an adapter's call runs under a total deadline (``LORA_HUB_TIMEOUT`` seconds, default 60; a large
upload on a slow line may need more), and each of its requests waits at most a third of that for any one step;
a base model's multi-GB download runs under a stall limit instead: it ends when ``LORA_HUB_TIMEOUT`` seconds
pass without a byte. Timeouts, cut connections and server failures become a :class:`StorageError` that says
what happened; no error shows the token, in its text or in a chained error.
``HF_ENDPOINT`` is read at call time (tests point it at a local stand-in Hub).

How the limits reach huggingface_hub without replacing a client factory you set: its shared HTTP client
(``huggingface_hub.get_session()``, from its default factory or yours) gets a request and a response event
hook, which act only on this package's requests (marked by a header they remove before sending): they set
the requests' timeouts and count the bytes that come. The call runs in a daemon thread that the caller waits
for (:func:`lora_helpers.remote.within`), so retries, back-off sleeps and transfers outside that client (Xet)
are bounded too. Once the caller gives up, the thread starts no request, reads no further byte and retries
no failed step, so it ends within moments and keeps no cache lock that a retry would wait for.
"""
from __future__ import annotations

import functools
import math
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from .errors import AdapterError, AdapterNotFoundError, BaseModelError, StorageError
from .folders import disk_error
from .remote import scrub, within

DEFAULT_TIMEOUT_S = 60.0
_MARK = "X-Lora-Helpers-Call"  # marks this package's requests for the hook; never sent
_CALLS: dict = {}  # mark -> _Call, while its thread runs
_HOOK_LOCK = threading.Lock()
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*(?:/[A-Za-z0-9_][A-Za-z0-9._+-]*)*")


def _endpoint():
    """The Hub address, read at call time so HF_ENDPOINT set after import still counts."""
    return os.environ.get("HF_ENDPOINT") or None


def find_token(token=None):
    """``token`` if given, else huggingface_hub's ``get_token()``: ``HF_TOKEN``, the ``hf auth login`` token file
    (under ``HF_HOME``), the Colab secret ``HF_TOKEN``. None if there is none.

    get_token() reads the Colab secret only where it recognises Colab's own notebook shell; in a Colab runtime
    it does not recognise (a kernel started otherwise), the secret is read here, once per call.
    """
    if token:
        return token
    from huggingface_hub import get_token
    from huggingface_hub.utils import is_google_colab
    found = get_token()
    if found or is_google_colab():
        return found
    try:
        from google.colab import userdata  # importable in a Colab runtime only
        return userdata.get("HF_TOKEN") or None
    except Exception:  # not Colab; or the secret is missing, or notebook access not granted
        return None


def timeout_s() -> float:
    """The total seconds one Hub call may take: ``LORA_HUB_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get("LORA_HUB_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise AdapterError(f"LORA_HUB_TIMEOUT={raw!r} is not a number of seconds: expected a positive number "
                           f"such as {DEFAULT_TIMEOUT_S:g} (the default), or unset it.")
    return value


# ----------------------------------------------------------------------------- names
def _repo_id(repo_id: str, given: str) -> str:
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(repo_id)
    except ValueError:  # HFValidationError
        raise AdapterError(f"{given!r} is not a valid Hub repository: expected 'owner/repo' made of letters, "
                           "digits, '-', '_' and '.' (at most 96 characters), e.g. 'hub:me/lora_json'.") from None
    return repo_id


def _subfolder(parts: list, given: str) -> str:
    if any(p in (".", "..") for p in parts):
        raise AdapterError(f"{given!r}: a subfolder in a Hub repository is a relative path without '.' or '..' "
                           "parts, e.g. 'hub:me/zoo/lora_json'.")
    return "/".join(parts)


def _revision(revision: str | None, given: str) -> str | None:
    """A branch, tag or commit; huggingface_hub writes it as a file path in its cache, so no '..' in it."""
    if not revision:
        return None
    if len(revision) > 255 or ".." in revision or revision.endswith((".lock", ".")) \
            or not _REVISION.fullmatch(revision):
        raise AdapterError(f"{given!r}: {revision!r} is not a revision: expected a branch, tag or commit made of "
                           "letters, digits, '.', '_', '-', '+' and '/' (no '..', no leading '.' or '/'), "
                           "e.g. '@main' or '@v1.0'.")
    return revision


def _split(spec: str, given: str) -> tuple[str, str]:
    """'owner/repo[/sub]' (or 'repo') -> (repo_id, sub), both checked."""
    parts = [p for p in spec.strip("/").split("/") if p]
    return _repo_id("/".join(parts[:2]), given), _subfolder(parts[2:], given)


def _parse_hub(spec: str):
    """'owner/repo[/sub][@rev]' -> (repo_id, sub, revision)."""
    rest, _, revision = spec.rpartition("@") if "@" in spec else (spec, "", None)
    given = f"hub:{spec}"
    if len([p for p in rest.split("/") if p]) < 2:
        raise AdapterError(f"'{given}' is not a Hub repository: expected 'hub:owner/repo', optionally "
                           "'/subfolder' and '@revision', e.g. 'hub:me/lora_json@main'.")
    repo_id, sub = _split(rest, given)
    return repo_id, sub, _revision(revision, given)


# ----------------------------------------------------------------------------- every call ends
class _Late(TimeoutError):
    """A Hub call passed its deadline."""


class _Call:
    """One Hub call: its mark, its limit (a total, or with ``stall`` the time allowed without a byte), its bytes."""

    def __init__(self, limit: float, stall: bool = False):
        self.mark, self.limit, self.stall = uuid.uuid4().hex, limit, stall
        self.deadline = math.inf if stall else time.monotonic() + limit
        self.received = 0

    def check(self) -> None:
        if time.monotonic() >= self.deadline:
            raise _Late(f"the call passed its {self.limit:g} s limit")

    def give_up(self) -> None:
        self.deadline = -math.inf  # the thread starts no request, reads no byte, retries nothing more


def _call_of(request):
    return _CALLS.get(request.extensions.get(_MARK))


def _limit_request(request) -> None:
    """Request event hook: this package's requests wait at most what is left of their call's time, and one that
    fails after its call gave up ends the call (no library retries it, nor sleeps before a retry)."""
    mark = request.headers.get(_MARK)
    if mark is not None:
        del request.headers[_MARK]
        request.extensions[_MARK] = mark  # redirects copy the extensions, not a removed header
    call = _call_of(request)
    if call is None:
        return
    call.check()
    wait = call.limit if call.stall else min(call.deadline - time.monotonic(), call.limit / 3)
    old = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {k: min(old.get(k) or wait, wait) for k in ("connect", "read", "write", "pool")}
    trace = request.extensions.get("trace")
    if getattr(trace, "call", None) is not call:
        request.extensions["trace"] = _Trace(call, trace)


class _Trace:
    """httpcore's ``trace`` extension: a step of the request that failed after its call gave up raises _Late."""

    def __init__(self, call: _Call, inner):
        self.call, self.inner = call, inner

    def __call__(self, event: str, info: dict):
        if self.inner is not None:
            self.inner(event, info)
        if event.endswith(".failed") and isinstance(info.get("exception"), Exception):  # not a closed generator
            self.call.check()


def _watch_response(response) -> None:
    """Response event hook: the body of this package's responses is read through :func:`_watched`."""
    call = _call_of(response.request)
    if call is not None:
        call.received += 1  # the head came: progress
        response.stream = _watched(response, call)


def _watched(response, call):
    """``response.stream`` counting its bytes for ``call``; a byte that comes after the call gave up ends it."""
    httpx = sys.modules[type(response).__module__.partition(".")[0]]  # httpx, or httpx2 (huggingface_hub 2.x)
    return _watched_class(httpx.SyncByteStream)(response.stream, call)


@functools.cache
def _watched_class(base: type) -> type:
    class Watched(base):
        def __init__(self, inner, call):
            self.inner, self.call = inner, call

        def __iter__(self):
            for chunk in self.inner:
                self.call.received += len(chunk)
                self.call.check()
                yield chunk

        def close(self):
            self.inner.close()

    return Watched


def _hook_into_session() -> None:
    """Add the hooks to huggingface_hub's current shared client (a new one after a reset)."""
    from huggingface_hub import get_session
    with _HOOK_LOCK:
        client = get_session()
        hooks = client.event_hooks
        if _limit_request not in hooks["request"] or _watch_response not in hooks["response"]:
            client.event_hooks = {
                "request": [*(h for h in hooks["request"] if h is not _limit_request), _limit_request],
                "response": [*(h for h in hooks["response"] if h is not _watch_response), _watch_response]}


def _bounded(fn, limit: float, stall_in=None):
    """``fn(headers)`` (headers marking its requests) under ``limit`` s in all; with ``stall_in`` (a folder the
    download writes into) under ``limit`` s without progress. :class:`_Late` when it passes."""
    call = _Call(limit, stall=stall_in is not None)
    _hook_into_session()
    progress = None if stall_in is None else (lambda: (call.received, _bytes_in(stall_in)))

    def work():
        try:
            return fn({_MARK: call.mark})
        finally:
            _CALLS.pop(call.mark, None)

    _CALLS[call.mark] = call
    # The grace lets the thread see that the call gave up (its reads end by the deadline), so it leaves no file
    # lock behind that a retry would wait for.
    return within(work, limit, name="lora_helpers Hub call", progress=progress, on_late=call.give_up,
                  grace=min(limit / 3, 5.0))


def _bytes_in(folder: Path) -> int:
    """Bytes under ``folder`` (a transfer outside the HTTP client, Xet, shows as growing files there)."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # renamed or removed meanwhile
                pass
    return total


# ----------------------------------------------------------------------------- failures in words
def _chain(e):
    seen = []
    while e is not None and len(seen) < 20:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _hub_failure(e: BaseException, action: str, token, writing: bool = False, stall: bool = False) -> AdapterError:
    """What went wrong talking to the Hub, in words: a timeout, a cut connection, a refusal, a server error."""
    chain = _chain(e)
    kinds = {c.__name__ for x in chain for c in type(x).__mro__}
    status = next((getattr(getattr(x, "response", None), "status_code", None) for x in chain
                   if getattr(getattr(x, "response", None), "status_code", None)), None)
    hub = _endpoint() or "huggingface.co"
    if kinds & {"TimeoutException", "TimeoutError"} and stall:
        why = (f"the Hub at {hub} sent nothing for {timeout_s():g} s (LORA_HUB_TIMEOUT sets that; a download "
               "that keeps receiving goes on). Check your connection and try again")
    elif kinds & {"TimeoutException", "TimeoutError"}:
        why = (f"the Hub at {hub} did not answer in time (a call may take {timeout_s():g} s in all; "
               "LORA_HUB_TIMEOUT sets that). Check your connection and try again"
               + ("; an upload cut off this way may still have reached the Hub, so look at the repository "
                  "before uploading again" if writing else ""))
    elif kinds & {"TransportError", "ConnectionError"} and "OfflineModeIsEnabled" not in kinds:
        why = (f"the connection to the Hub at {hub} failed or was cut ({type(chain[-1]).__name__}). Check "
               "your connection and try again")
    elif isinstance(status, int) and status >= 500:
        why = f"the Hub server failed (HTTP {status}); that is on its side: try again in a few minutes"
    elif isinstance(status, int):
        said = next((getattr(x, "server_message", None) for x in chain if getattr(x, "server_message", None)),
                    None) or str(e).splitlines()[0]
        if writing and status in (401, 403):
            fix = "The token was refused: use a token with write access"
        elif writing:
            fix = "Check the repository name and try again"
        else:
            fix = "Check the name, and HF_TOKEN for a private repository"
        why = f"the Hub refused it (HTTP {status}: {said.splitlines()[0] if said else ''}). {fix}"
    elif isinstance(e, OSError) and e.errno is not None:
        return disk_error(e, action, Path(os.environ.get("HF_HUB_CACHE") or tempfile.gettempdir()))
    else:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Check your connection and try again"
    return StorageError(scrub(f"Could not {action}: {why}.", [token] if isinstance(token, str) else []))


def _download_failure(e: BaseException, action: str, repo_id: str, revision, token, missing=AdapterNotFoundError,
                      stall: bool = False) -> AdapterError:
    """A failed download in words; ``missing``: the error for a repository or revision that is not there."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
        RevisionNotFoundError)
    gated = next((x for x in _chain(e) if isinstance(x, GatedRepoError)), None)
    if gated is not None:
        return missing(f"Hub repository '{repo_id}' is gated: accept its terms on its page "
                       f"(https://huggingface.co/{repo_id}) while logged in, then give a token of that account "
                       "(token=..., HF_TOKEN, `hf auth login`, or in Colab the secret HF_TOKEN).")
    if isinstance(e, RepositoryNotFoundError):
        return missing(f"Hub repository '{repo_id}' was not found (or it is private and no valid token was "
                       "given). Check the name; for a private repo set HF_TOKEN.")
    if isinstance(e, RevisionNotFoundError):
        return missing(f"Hub repository '{repo_id}' has no revision '{revision}'. Use a branch, tag or commit "
                       "that exists, or drop '@...' for main.")
    if isinstance(e, LocalEntryNotFoundError):
        causes = _chain(e)[1:]
        if not causes or any(isinstance(x, OfflineModeIsEnabled) for x in causes) or constants.HF_HUB_OFFLINE:
            return missing(f"Could not {action} and it is not in the local cache ({type(e).__name__}). Connect "
                           "to the internet (HF_HUB_OFFLINE=0) and try again.")
        return _hub_failure(e, f"{action} (and it is not in the local cache)", token, stall=stall)
    return _hub_failure(e, action, token, stall=stall)  # timeouts, cut connections: the HTTP library's errors


# ----------------------------------------------------------------------------- the calls
def download(spec: str) -> Path:
    """The local folder of 'owner/repo[/sub][@rev]' (``snapshot_download``; the offline cache counts)."""
    from huggingface_hub import snapshot_download
    repo_id, sub, revision = _parse_hub(spec)
    limit, token = timeout_s(), find_token()
    try:
        folder = _bounded(lambda headers: snapshot_download(
            repo_id, revision=revision, token=token, endpoint=_endpoint(), headers=headers,
            allow_patterns=[f"{sub}/*"] if sub else None), limit)
    except Exception as e:
        failure = _download_failure(e, f"fetch 'hub:{spec}'", repo_id, revision, token)
    else:
        return Path(folder) / sub if sub else Path(folder)
    raise failure  # outside the except block: no chained error, which may quote the token


def download_base(repo_id: str, token=None) -> Path:
    """The local folder of Hub model ``repo_id``: its config, tokenizer and safetensors weights
    (``model.safetensors`` or its shards; not a second copy such as Mistral's ``consolidated.safetensors``).

    ``token``: a token; None: :func:`find_token`; False: none sent or looked up (so Colab asks nothing). Runs
    under the stall limit: it ends when ``LORA_HUB_TIMEOUT`` seconds pass without a byte coming (a multi-GB
    download may take longer in all). Failures are :class:`BaseModelError` (no such repository, gated) or
    :class:`StorageError` (timeouts, refusals, cut connections), without the token and without a chained error.
    """
    from huggingface_hub import constants, snapshot_download
    if token is not False:
        token = find_token(token)
    limit = timeout_s()
    cache = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"  # where the files grow
    try:
        folder = _bounded(lambda headers: snapshot_download(
            repo_id, token=token, endpoint=_endpoint(), headers=headers,
            allow_patterns=["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "model*.safetensors"]),
            limit, stall_in=cache)
    except Exception as e:
        failure = _download_failure(e, f"download the base model '{repo_id}'", repo_id, None, token,
                                    missing=BaseModelError, stall=True)
    else:
        return Path(folder)
    raise failure  # outside the except block: no chained error, which may quote the token


def upload(write, name: str, spec, private: bool, token) -> str:
    """Upload adapter ``name`` to 'owner/repo[/subfolder]' (or 'repo' in your namespace); returns the repo id.

    ``write(folder)`` saves the adapter into the empty temporary ``folder`` and returns the folder to upload;
    it runs first, so a failed save changes nothing on the Hub.
    """
    from huggingface_hub import HfApi
    token = find_token(token)
    if not token:
        raise StorageError("No Hugging Face token found: pass token=..., set the HF_TOKEN environment variable, "
                           "run `hf auth login`, or in Colab add a secret named HF_TOKEN (key icon on the left) "
                           "with a write token from https://huggingface.co/settings/tokens.")
    repo_id, sub = _split(str(spec), str(spec))
    limit = timeout_s()

    def push(folder, headers):
        api = HfApi(endpoint=_endpoint(), token=token, headers=headers)
        rid = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        api.upload_folder(repo_id=rid, folder_path=str(folder), path_in_repo=sub or None,
                          commit_message=f"Upload LoRA adapter '{name}' (lora_helpers)")
        return rid

    try:
        with tempfile.TemporaryDirectory(prefix="lora_push_") as tmp:
            folder = write(Path(tmp))
            repo_id = _bounded(lambda headers: push(folder, headers), limit)
    except AdapterError:
        raise
    except Exception as e:  # refusals, timeouts, cut connections, a full temp disk
        failure = _hub_failure(e, f"upload '{name}' to the Hub repo '{repo_id}'", token, writing=True)
    else:
        return f"{repo_id}/{sub}" if sub else repo_id
    raise failure  # outside the except block: no chained error, which may quote the token
