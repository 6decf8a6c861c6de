"""The Hugging Face Hub side of storage: fetch an adapter ('hub:owner/repo[/sub][@rev]'), upload one.

:func:`find_token` looks the token up (argument, ``HF_TOKEN``, the Colab secret); no message ever shows it.
Repository ids are checked before any request; timeouts, cut connections and server failures become a
:class:`StorageError` that says what happened. ``HF_ENDPOINT`` is read at call time (tests point it at a
local stand-in Hub).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .base import in_colab
from .errors import AdapterError, AdapterNotFoundError, StorageError
from .folders import disk_error


def _endpoint():
    """The Hub address, read at call time so HF_ENDPOINT set after import still counts."""
    return os.environ.get("HF_ENDPOINT") or None


def _scrub(text: str, token) -> str:
    return text.replace(token, "hf_***") if token else text


def find_token(token=None):
    """The token from the argument, ``HF_TOKEN`` or the Colab secret ``HF_TOKEN`` (None if none)."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    if in_colab():
        try:
            from google.colab import userdata
            return userdata.get("HF_TOKEN") or None
        except Exception:  # secret missing or notebook access not granted
            return None
    return None


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


def _parse_hub(spec: str):
    """'owner/repo[/sub][@rev]' -> (repo_id, sub, revision)."""
    rest, _, revision = spec.rpartition("@") if "@" in spec else (spec, "", None)
    parts = [p for p in rest.strip("/").split("/") if p]
    if len(parts) < 2:
        raise AdapterError(f"'hub:{spec}' is not a Hub repository: expected 'hub:owner/repo', optionally "
                           "'/subfolder' and '@revision', e.g. 'hub:me/lora_json@main'.")
    given = f"hub:{spec}"
    return _repo_id("/".join(parts[:2]), given), _subfolder(parts[2:], given), revision or None


def _chain(e):
    seen = []
    while e is not None and len(seen) < 20:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _hub_failure(e: BaseException, action: str, token) -> AdapterError:
    """What went wrong talking to the Hub, in words: a timeout, a cut connection, a server error."""
    chain = _chain(e)
    kinds = {c.__name__ for x in chain for c in type(x).__mro__}
    status = next((getattr(getattr(x, "response", None), "status_code", None) for x in chain
                   if getattr(getattr(x, "response", None), "status_code", None)), None)
    hub = _endpoint() or "huggingface.co"
    if kinds & {"TimeoutException", "TimeoutError"}:
        why = f"the Hub at {hub} did not answer in time. Check your connection and try again"
    elif kinds & {"TransportError", "ConnectionError"} and "OfflineModeIsEnabled" not in kinds:
        why = (f"the connection to the Hub at {hub} failed or was cut ({type(chain[-1]).__name__}). Check "
               "your connection and try again")
    elif isinstance(status, int) and status >= 500:
        why = f"the Hub server failed (HTTP {status}); that is on its side: try again in a few minutes"
    elif isinstance(status, int):
        said = next((getattr(x, "server_message", None) for x in chain if getattr(x, "server_message", None)),
                    None) or str(e).splitlines()[0]
        why = f"the Hub refused it (HTTP {status}: {said}). Check the name, and HF_TOKEN for a private repository"
    elif isinstance(e, OSError) and e.errno is not None:
        return disk_error(e, action, Path(os.environ.get("HF_HUB_CACHE") or tempfile.gettempdir()))
    else:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Check your connection and try again"
    return StorageError(_scrub(f"Could not {action}: {why}.", token))


def download(spec: str) -> Path:
    """The local folder of 'owner/repo[/sub][@rev]' (``snapshot_download``; the offline cache counts)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)
    repo_id, sub, revision = _parse_hub(spec)
    token = find_token()
    try:
        folder = snapshot_download(repo_id, revision=revision, token=token, endpoint=_endpoint(),
                                   allow_patterns=[f"{sub}/*"] if sub else None)
    except RepositoryNotFoundError as e:
        raise AdapterNotFoundError(f"Hub repository '{repo_id}' was not found (or it is private and no valid "
                                   "token was given). Check the name; for a private repo set HF_TOKEN.") from e
    except RevisionNotFoundError as e:
        raise AdapterNotFoundError(f"Hub repository '{repo_id}' has no revision '{revision}'. Use a branch, "
                                   "tag or commit that exists, or drop '@...' for main.") from e
    except LocalEntryNotFoundError as e:
        causes = _chain(e)[1:]
        if not causes or any(isinstance(x, OfflineModeIsEnabled) for x in causes) or constants.HF_HUB_OFFLINE:
            raise AdapterNotFoundError(f"Could not fetch 'hub:{spec}' and it is not in the local cache "
                                       f"({type(e).__name__}). Connect to the internet (HF_HUB_OFFLINE=0) and "
                                       "try again.") from e
        raise _hub_failure(e, f"fetch 'hub:{spec}' (and it is not in the local cache)", token) from e
    except Exception as e:  # timeouts and cut connections arrive as the HTTP library's own errors
        raise _hub_failure(e, f"fetch 'hub:{spec}'", token) from e
    return Path(folder) / sub if sub else Path(folder)


def upload(write, name: str, spec, private: bool, token) -> str:
    """Upload adapter ``name`` to 'owner/repo[/subfolder]' (or 'repo' in your namespace); returns the repo id.

    ``write(folder)`` saves the adapter into the empty temporary ``folder`` and returns the folder to upload.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    token = find_token(token)
    if not token:
        raise StorageError("No Hugging Face token found: pass token=..., set the HF_TOKEN environment variable, "
                           "or in Colab add a secret named HF_TOKEN (key icon on the left) with a write token "
                           "from https://huggingface.co/settings/tokens.")
    parts = [p for p in str(spec).strip("/").split("/") if p]
    repo_id = _repo_id("/".join(parts[:2]), str(spec))
    sub = _subfolder(parts[2:], str(spec)) or None
    api = HfApi(endpoint=_endpoint(), token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory(prefix="lora_push_") as tmp:
            folder = write(Path(tmp))
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=sub,
                              commit_message=f"Upload LoRA adapter '{name}' (lora_helpers)")
    except AdapterError:
        raise
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        if isinstance(status, int) and status >= 500:
            raise _hub_failure(e, f"upload '{name}' to the Hub repo '{repo_id}'", token) from None
        why = getattr(e, "server_message", None) or str(e).splitlines()[0]
        hint = " The token was refused: use a token with write access." if status in (401, 403) else ""
        raise StorageError(f"Uploading '{name}' to the Hub repo '{repo_id}' failed (HTTP {status}: "
                           f"{_scrub(why, token)}).{hint}") from None
    except Exception as e:  # timeouts, cut connections, a full temp disk
        raise _hub_failure(e, f"upload '{name}' to the Hub repo '{repo_id}'", token) from None
    return f"{repo_id}/{sub}" if sub else repo_id
