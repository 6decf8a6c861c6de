"""Where adapters live: the session folder, Google Drive, the Hugging Face Hub.

``resolve_adapter`` turns a source ("session:name", "drive:path", "hub:owner/repo", a folder) into a
local folder; ``save_adapter`` writes one loaded adapter there; ``inspect_adapter`` reads
adapter_config.json and the safetensors header without loading weights. :func:`replace_folder` is the
package's one atomic folder write (merge and train use it too).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .base import in_colab
from .errors import AdapterError, AdapterFileError, AdapterNotFoundError, StorageError
from .names import check_name

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
WRITTEN = {CONFIG_NAME, WEIGHTS_NAME, PICKLE_NAME, "README.md"}  # what save_adapter puts in a folder
_OS_LITTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # what file browsers add to a synced Drive folder
COLAB_SESSION_DIR = "/content/adapters"
WHERE = ("session", "drive", "hub")
_ROOT_VARS = {"session": "LORA_SESSION_DIR", "drive": "LORA_DRIVE_DIR"}
_announced: set = set()


@dataclass
class AdapterFiles:
    """What an adapter folder holds, read without loading the weights."""
    folder: Path
    config: dict
    weights: Path
    shapes: dict  # tensor name -> tuple shape


# ----------------------------------------------------------------------------- places
def session_dir() -> Path:
    """``LORA_SESSION_DIR``, else /content/adapters in Colab, else ./adapters_session."""
    env = os.environ.get("LORA_SESSION_DIR")
    return Path(env) if env else Path(COLAB_SESSION_DIR if in_colab() else "adapters_session")


def drive_dir() -> Path:
    """MyDrive/adapters in Colab (mounting Drive once); elsewhere ``LORA_DRIVE_DIR`` or ./drive_standin."""
    if in_colab():
        from . import colab
        if not colab.mount_drive(colab.COLAB_DRIVE_MOUNT):
            raise StorageError("Google Drive is not mounted (see the message above), so where='drive' has "
                               "nowhere to go. Run lh.mount_drive() and allow access, or use where='session'.")
        return Path(colab.COLAB_DRIVE_MOUNT) / "MyDrive" / "adapters"
    root = Path(os.environ.get("LORA_DRIVE_DIR") or "drive_standin")
    if str(root) not in _announced:
        _announced.add(str(root))
        print(f"Google Drive is only available in Colab: using the local stand-in folder '{root}' "
              "instead (set LORA_DRIVE_DIR to choose another).")
    return root


def _root(where: str) -> Path:
    """The session or Drive folder; StorageError when that path (or a parent of it) is a file."""
    root = session_dir() if where == "session" else drive_dir()
    p = root
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    if not p.is_dir():
        var = _ROOT_VARS[where]
        origin = f" (from {var})" if os.environ.get(var) else ""
        raise StorageError(f"The {where} folder '{root}'{origin} cannot be a folder: '{p}' is a file. Point {var} "
                           "at a folder (it is created when missing), or unset it.")
    return root


def _relative(kind: str, given) -> str:
    text = str(given).strip()
    parts = Path(text).parts
    if not parts or os.path.isabs(text) or ".." in parts:
        raise AdapterError(f"'{kind}:' needs a relative path to a subfolder inside the {kind} folder, got "
                           f"{str(given)!r}. Example: '{kind}:lora_json'.")
    return str(Path(*parts))


def _inside(where: str, given) -> tuple[Path, Path]:
    """(the path as the user wrote it, the real path) of a folder strictly inside the session/Drive folder."""
    root = _root(where)
    shown = root / _relative(where, given)
    real_root, real = root.resolve(), shown.resolve()
    if os.path.islink(shown) or real == real_root or not real.is_relative_to(real_root):
        raise StorageError(f"'{where}:{given}' leads to '{real}', which is not a folder inside the {where} folder "
                           f"'{real_root}' (a symbolic link, or the folder itself); nothing was changed. Name a "
                           f"subfolder, e.g. '{where}:lora_json'.")
    return shown, real


# ----------------------------------------------------------------------------- the atomic folder write
def _old_copy(target: Path) -> Path:
    return target.with_name(f".{target.name}.lora_helpers-old")


def recover_folder(target) -> None:
    """Finish a :func:`replace_folder` that was cut short (a killed process, a second Ctrl-C).

    With ``target`` missing, its moved-aside old copy goes back; with ``target`` present (the swap happened),
    a leftover old copy is removed.
    """
    target = Path(target)
    old = _old_copy(target)
    if not os.path.lexists(old):
        return
    if not os.path.lexists(target):
        os.rename(old, target)
    elif old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


@contextmanager
def staging_folder(target):
    """A new empty folder beside ``target`` (same file system, so :func:`replace_folder` is a rename),
    removed on exit whatever happens."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def replace_folder(src, target, *, check_old=None) -> Path:
    """Move the complete folder ``src`` to ``target`` (same file system), replacing an older ``target``.

    The old copy is renamed aside (``.<name>.lora_helpers-old``), ``src`` renamed into place, then the old
    copy removed: at every instant the old or the new complete copy is at ``target``, or the old one is
    beside it and is put back here (on any exception, KeyboardInterrupt included) or by the next call
    (:func:`recover_folder`). ``check_old(target)`` runs just before an existing ``target`` is moved aside
    and raises to refuse replacing it. ``src`` gets the mode of a normal folder (0755; ``mkdtemp``
    makes it private). Returns ``target``.
    """
    src, target = Path(src), Path(target)
    recover_folder(target)
    old = _old_copy(target)
    src.chmod(0o755)
    try:
        if os.path.lexists(target):
            if check_old is not None:
                check_old(target)
            os.rename(target, old)
        os.rename(src, target)
    except BaseException:
        if not os.path.lexists(target) and os.path.lexists(old):
            os.rename(old, target)
        raise
    try:
        recover_folder(target)  # drops the old copy
    except OSError:  # the new copy is in place; the next call removes the old one
        pass
    return target


def check_ours(folder: Path) -> None:
    """Refuse (StorageError) to replace ``folder`` unless it is empty or holds only what save_adapter writes."""
    fix = "Nothing was changed. Choose another name (path_or_repo=...), or move that away yourself first."
    if folder.is_symlink() or not folder.is_dir():
        raise StorageError(f"'{folder}' exists and is {'a link' if folder.is_symlink() else 'a file'}, not an "
                           f"adapter folder saved by lora_helpers. {fix}")
    names = {p.name for p in folder.iterdir()}
    other = sorted(names - WRITTEN - _OS_LITTER)
    if names and (other or CONFIG_NAME not in names or not names & {WEIGHTS_NAME, PICKLE_NAME}):
        shown = ", ".join(other[:5]) or "no adapter weights"
        raise StorageError(f"'{folder}' exists and is not an adapter folder saved by lora_helpers (it holds: "
                           f"{shown}); expected only {CONFIG_NAME} and {WEIGHTS_NAME}. {fix}")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _disk_error(e: OSError, what: str, where: Path, needed: int | None = None) -> StorageError:
    """A StorageError for a failed write: full disk (with the numbers), read-only, or anything else."""
    place = next((p for p in [Path(where), *Path(where).parents] if p.exists()), Path("."))
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        need = f"about {_size(needed)}" if needed else "more space"
        return StorageError(f"Not enough disk space to {what}: it needs {need} in '{place}', "
                            f"{_size(shutil.disk_usage(place).free)} are free. Free some space or save elsewhere, "
                            f"then retry; any previous copy there is untouched. ({e.strerror})")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"Cannot {what}: '{place}' is read-only or not writable for you ({e.strerror}). "
                            "Save somewhere writable (path_or_repo=..., LORA_SESSION_DIR or LORA_DRIVE_DIR); "
                            "any previous copy there is untouched.")
    return StorageError(f"Could not {what} ({type(e).__name__}: {e}); any previous copy there is untouched. "
                        "Check free space and permissions, then retry.")


# ----------------------------------------------------------------------------- the Hub
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
    kinds = {c.__name__ for x in _chain(e) for c in type(x).__mro__}
    status = next((getattr(getattr(x, "response", None), "status_code", None) for x in _chain(e)
                   if getattr(getattr(x, "response", None), "status_code", None)), None)
    hub = _endpoint() or "huggingface.co"
    if kinds & {"TimeoutException", "TimeoutError"}:
        why = f"the Hub at {hub} did not answer in time. Check your connection and try again"
    elif kinds & {"TransportError", "ConnectionError"} and "OfflineModeIsEnabled" not in kinds:
        why = (f"the connection to the Hub at {hub} failed or was cut ({type(_chain(e)[-1]).__name__}). Check "
               "your connection and try again")
    elif isinstance(status, int) and status >= 500:
        why = f"the Hub server failed (HTTP {status}); that is on its side: try again in a few minutes"
    elif isinstance(status, int):
        said = next((getattr(x, "server_message", None) for x in _chain(e) if getattr(x, "server_message", None)),
                    None) or str(e).splitlines()[0]
        why = f"the Hub refused it (HTTP {status}: {said}). Check the name, and HF_TOKEN for a private repository"
    elif isinstance(e, OSError) and e.errno is not None:
        return _disk_error(e, action, Path(os.environ.get("HF_HUB_CACHE") or tempfile.gettempdir()))
    else:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Check your connection and try again"
    return StorageError(_scrub(f"Could not {action}: {why}.", token))


def _download(spec: str) -> Path:
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


def _push(model, name, spec, private, token, allow_pickle) -> str:
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
            folder = _write_local(model, name, Path(tmp) / name, allow_pickle)
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


# ----------------------------------------------------------------------------- reading
def resolve_adapter(source) -> Path:
    """Map a source to a local folder: a folder, 'session:name', 'drive:rel/path' or
    'hub:owner/repo[/subfolder][@revision]' (downloaded with snapshot_download; the offline cache counts)."""
    if not isinstance(source, (str, os.PathLike)):
        raise AdapterError(f"An adapter source must be a folder or a string like 'session:name', "
                           f"'drive:path' or 'hub:owner/repo', got {type(source).__name__}.")
    if isinstance(source, str) and source.startswith(("session:", "drive:")):
        where, _, rel = source.partition(":")
        path = _root(where) / _relative(where, rel)  # reading through a link the user made is fine
        try:
            recover_folder(path)  # a save cut short by a kill: put the old copy back
        except OSError:
            pass
    elif isinstance(source, str) and source.startswith("hub:"):
        path = _download(source[len("hub:"):])
    else:
        path = Path(source).expanduser()
    if not path.is_dir():
        hint = (f" If you meant the Hub repository, write 'hub:{source}'." if isinstance(source, str)
                and source.count("/") == 1 and ":" not in source else "")
        raise AdapterNotFoundError(f"No adapter folder at '{path}' (from {str(source)!r}). Expected a folder "
                                   f"with {CONFIG_NAME} and {WEIGHTS_NAME}; check the name or save the adapter "
                                   f"there first.{hint}")
    return path


def read_safetensors_header(path: Path) -> dict:
    """Tensor name -> (dtype, shape) from a safetensors header (read by ``safe_open``; no tensor is loaded).

    AdapterFileError when the file is truncated, padded, corrupt or holds no tensors.
    """
    from safetensors import SafetensorError, safe_open
    fix = "Save or download the adapter again."
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except SafetensorError as e:
        size, why = Path(path).stat().st_size, str(e)
        if "too small" in why:
            raise AdapterFileError(f"'{path}' is {size} bytes: too short to be a safetensors file. {fix}") from None
        if "too large" in why:
            raise AdapterFileError(f"'{path}' is truncated or not safetensors: its header claims more bytes "
                                   f"than the file's {size}. {fix}") from None
        if "not fully covered" in why:
            raise AdapterFileError(f"'{path}' is truncated or padded: its header does not describe the file's "
                                   f"{size} bytes. {fix}") from None
        raise AdapterFileError(f"'{path}' has a corrupt safetensors header ({why}). {fix}") from None
    except OSError as e:
        raise AdapterFileError(f"'{path}' cannot be read ({e.strerror or e}). {fix}") from None
    if not tensors:
        raise AdapterFileError(f"'{path}' holds no tensors: expected LoRA weights. {fix}")
    return tensors


def inspect_adapter(folder: Path, allow_pickle: bool = False) -> AdapterFiles:
    """Read a PEFT adapter folder's config and tensor shapes without loading weights."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise AdapterNotFoundError(f"'{folder}' has no {CONFIG_NAME}, so it is not a PEFT adapter folder. "
                                   "Point at the folder written by save_adapter / save_pretrained.")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, OSError):  # RecursionError: absurdly nested JSON
        config = None
    if not isinstance(config, dict):
        raise AdapterFileError(f"'{cfg_path}' is not valid JSON (an object): the adapter folder is damaged. "
                               "Save or download the adapter again.")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"'{folder}' holds a {config.get('peft_type')} adapter; this course handles LoRA "
                           "adapters only (peft_type 'LORA').")
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        shapes = {k: s for k, (_, s) in read_safetensors_header(weights).items()}
        return AdapterFiles(folder, config, weights, shapes)
    pickled = folder / PICKLE_NAME
    if pickled.is_file():
        if not allow_pickle:
            raise AdapterFileError(f"'{folder}' has weights only as {PICKLE_NAME} (pickle, which can run code "
                                   f"when loaded); expected {WEIGHTS_NAME}. Convert it, or pass "
                                   "allow_pickle=True if you trust its author.")
        import torch
        try:
            state = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as e:
            raise AdapterFileError(f"'{pickled}' cannot be read ({type(e).__name__}). "
                                   "Save or download the adapter again.") from e
        return AdapterFiles(folder, config, pickled, {k: tuple(v.shape) for k, v in state.items()})
    raise AdapterNotFoundError(f"'{folder}' has {CONFIG_NAME} but no {WEIGHTS_NAME}: the weights are missing. "
                               "Copy the whole adapter folder, or save it again.")


# ----------------------------------------------------------------------------- writing
def _adapter_bytes(model, name: str) -> int | None:
    try:
        from peft import get_peft_model_state_dict
        return sum(t.numel() * t.element_size() for t in get_peft_model_state_dict(model, adapter_name=name).values())
    except Exception:  # only for a message
        return None


def _write_local(model, name: str, target: Path, allow_pickle: bool, card: bool = True) -> Path:
    """Save adapter ``name`` as a plain PEFT folder at ``target`` (a staging folder, then replace_folder).

    An existing ``target`` is replaced only when :func:`check_ours` accepts it. ``card=False`` drops the
    README.md model card PEFT writes (the shipped demo adapters hold only adapter_config.json and the weights).
    """
    check_name(name, "a saved adapter")  # a name with '/' would make PEFT write outside the staging folder
    target = Path(target)
    what = f"save adapter '{name}' to '{target}'"
    try:
        with staging_folder(target) as stage:
            # save_embedding_layers=False: LoRA weights only (the "auto" check would query the Hub)
            model.save_pretrained(str(stage), selected_adapters=[name], safe_serialization=not allow_pickle,
                                  save_embedding_layers=False)
            out = stage if name == "default" else stage / name  # PEFT's layout: other names in a subfolder
            inspect_adapter(out, allow_pickle=allow_pickle)
            if not card:
                (out / "README.md").unlink(missing_ok=True)
            for f in out.iterdir():
                f.chmod(0o755 if f.is_dir() else 0o644)  # files in a private temp folder may be private too
            if not allow_pickle and any(p.suffix in PICKLE_SUFFIXES for p in out.rglob("*")):
                raise AdapterFileError(f"Saving '{name}' produced pickle files; expected safetensors only.")
            replace_folder(out, target, check_old=check_ours)
    except AdapterError:
        raise
    except OSError as e:
        needed = _adapter_bytes(model, name) if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", 0)) else None
        raise _disk_error(e, what, target.parent, needed) from e
    except Exception as e:
        raise StorageError(f"Could not {what} ({type(e).__name__}: {e}); any previous copy there is untouched. "
                           "Check free space and permissions, then retry.") from e
    return target


def save_adapter(model, name: str, where: str = "session", path_or_repo=None, private: bool = True,
                 token=None, allow_pickle: bool = False) -> str:
    """Save one loaded adapter; returns the folder (session, drive) or the repo id (hub).

    session/drive: ``path_or_repo`` is a subfolder of that place (default: ``name``); it must stay inside
    it (no links out), and an existing folder there is replaced, once the new copy is complete, only when
    it holds an adapter saved by this package. hub: ``path_or_repo`` is 'owner/repo[/subfolder]' or 'repo'
    (your namespace), default ``name``; the token comes from ``token``, HF_TOKEN or the Colab secret.
    Weights are safetensors; ``allow_pickle=True`` writes the legacy adapter_model.bin instead.
    """
    loaded = list(getattr(model, "peft_config", {}) or {})
    if name not in loaded:
        raise AdapterNotFoundError(f"No adapter named {name!r} is loaded (loaded: {loaded or 'none'}). "
                                   "Load it with lh.load_adapters(model, {name: source}) first.")
    check_name(name, "a saved adapter")
    if where not in WHERE:
        raise AdapterError(f"where={where!r} is not a storage place; expected one of {', '.join(WHERE)}.")
    if where == "hub":
        return _push(model, name, path_or_repo or name, private, token, allow_pickle)
    shown, real = _inside(where, path_or_repo or name)
    _write_local(model, name, real, allow_pickle)
    return str(shown)
