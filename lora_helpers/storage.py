"""Where adapters live: the session folder, Google Drive, the Hugging Face Hub.

``resolve_adapter`` turns a source ("session:name", "drive:path", "hub:owner/repo", a folder) into a
local folder; ``save_adapter`` writes one loaded adapter there atomically (temp folder, then rename);
``inspect_adapter`` reads adapter_config.json and the safetensors header without loading weights.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .base import in_colab
from .errors import AdapterError, AdapterFileError, AdapterNotFoundError, StorageError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
COLAB_DRIVE_MOUNT = "/content/drive"      # where Colab mounts Google Drive
COLAB_SESSION_DIR = "/content/adapters"
WHERE = ("session", "drive", "hub")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_announced: set = set()


@dataclass
class AdapterFiles:
    """What an adapter folder holds, read without loading the weights."""
    folder: Path
    config: dict
    weights: Path
    shapes: dict  # tensor name -> tuple shape


def session_dir() -> Path:
    """``LORA_SESSION_DIR``, else /content/adapters in Colab, else ./adapters_session."""
    env = os.environ.get("LORA_SESSION_DIR")
    return Path(env) if env else Path(COLAB_SESSION_DIR if in_colab() else "adapters_session")


def drive_dir() -> Path:
    """MyDrive/adapters in Colab (mounting Drive once); elsewhere ``LORA_DRIVE_DIR`` or ./drive_standin."""
    if in_colab():
        mount = Path(COLAB_DRIVE_MOUNT)
        if not (mount / "MyDrive").is_dir():
            from google.colab import drive
            drive.mount(str(mount))
        return mount / "MyDrive" / "adapters"
    root = Path(os.environ.get("LORA_DRIVE_DIR") or "drive_standin")
    if str(root) not in _announced:
        _announced.add(str(root))
        print(f"Google Drive is only available in Colab: using the local stand-in folder '{root}' "
              "instead (set LORA_DRIVE_DIR to choose another).")
    return root


def _relative(kind: str, given) -> str:
    rel = str(given).strip().strip("/")
    if not rel or os.path.isabs(str(given).strip()) or ".." in Path(rel).parts:
        raise AdapterError(f"'{kind}:' needs a relative path inside the {kind} folder, got {str(given)!r}. "
                           f"Example: '{kind}:lora_json'.")
    return rel


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


def _parse_hub(spec: str):
    """'owner/repo[/sub][@rev]' -> (repo_id, sub, revision)."""
    rest, _, revision = spec.rpartition("@") if "@" in spec else (spec, "", None)
    parts = [p for p in rest.strip("/").split("/") if p]
    if len(parts) < 2:
        raise AdapterError(f"'hub:{spec}' is not a Hub repository: expected 'hub:owner/repo', optionally "
                           "'/subfolder' and '@revision', e.g. 'hub:me/lora_json@main'.")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


def resolve_adapter(source) -> Path:
    """Map a source to a local folder: a folder, 'session:name', 'drive:rel/path' or
    'hub:owner/repo[/subfolder][@revision]' (downloaded with snapshot_download; the offline cache counts)."""
    if not isinstance(source, (str, os.PathLike)):
        raise AdapterError(f"An adapter source must be a folder or a string like 'session:name', "
                           f"'drive:path' or 'hub:owner/repo', got {type(source).__name__}.")
    if not isinstance(source, str):
        path = Path(source).expanduser()
    elif source.startswith("session:"):
        path = session_dir() / _relative("session", source[len("session:"):])
    elif source.startswith("drive:"):
        path = drive_dir() / _relative("drive", source[len("drive:"):])
    elif source.startswith("hub:"):
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


def _download(spec: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
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
        raise AdapterNotFoundError(f"Could not fetch 'hub:{spec}' and it is not in the local cache "
                                   f"({type(e).__name__}). Connect to the internet (HF_HUB_OFFLINE=0) and "
                                   "try again.") from e
    except HfHubHTTPError as e:  # before OSError: it is one
        raise StorageError(f"The Hub refused 'hub:{spec}': {_scrub(str(e), token)}") from e
    except OSError as e:
        raise StorageError(f"Fetching 'hub:{spec}' failed ({type(e).__name__}: {e}). Check the connection "
                           "and free disk space, then try again.") from e
    return Path(folder) / sub if sub else Path(folder)


def read_safetensors_header(path: Path) -> dict:
    """Tensor name -> (dtype, shape) from a safetensors header; AdapterFileError if truncated or corrupt."""
    size = path.stat().st_size
    fix = "Save or download the adapter again."
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterFileError(f"'{path}' is {size} bytes: too short to be a safetensors file. {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise AdapterFileError(f"'{path}' is truncated or not safetensors: its header claims {n} bytes "
                                   f"but the file has {size}. {fix}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AdapterFileError(f"'{path}' has a corrupt safetensors header ({e}). {fix}") from None
    tensors, end = {}, 0
    for name, info in header.items() if isinstance(header, dict) else [(None, None)]:
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            ok = dtype in _DTYPE_BYTES and 0 <= b <= e and e - b == math.prod(shape) * _DTYPE_BYTES[dtype]
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise AdapterFileError(f"'{path}' has a corrupt entry for tensor {name!r} in its header. {fix}")
        tensors[name], end = (dtype, shape), max(end, e)
    if not tensors:
        raise AdapterFileError(f"'{path}' holds no tensors: expected LoRA weights. {fix}")
    if end != size - 8 - n:
        raise AdapterFileError(f"'{path}' is truncated or padded: the header describes {end + 8 + n} bytes, "
                               f"the file has {size}. {fix}")
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
        assert isinstance(config, dict)
    except (ValueError, AssertionError):
        raise AdapterFileError(f"'{cfg_path}' is not valid JSON: the adapter folder is damaged. "
                               "Save or download the adapter again.") from None
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


def _write_local(model, name: str, target: Path, allow_pickle: bool, card: bool = True) -> Path:
    """Save adapter ``name`` to ``target`` through a temp folder beside it, then rename.

    ``card=False`` drops the README.md model card PEFT writes (the shipped demo adapters hold only
    adapter_config.json and the weights).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        # save_embedding_layers=False: LoRA weights only (the "auto" check would query the Hub)
        model.save_pretrained(str(stage), selected_adapters=[name], safe_serialization=not allow_pickle,
                              save_embedding_layers=False)
        out = stage if name == "default" else stage / name
        inspect_adapter(out, allow_pickle=allow_pickle)
        if not card:
            (out / "README.md").unlink(missing_ok=True)
        out.chmod(0o755)  # temp dirs/files are private (0700/0600); a saved adapter should not be
        for f in out.iterdir():
            f.chmod(0o755 if f.is_dir() else 0o644)
        if not allow_pickle and any(p.suffix in PICKLE_SUFFIXES for p in out.rglob("*")):
            raise AdapterFileError(f"Saving '{name}' produced pickle files; expected safetensors only.")
        if target.exists():
            old = stage / ".previous"
            os.rename(target, old)
            try:
                os.rename(out, target)
            except BaseException:
                os.rename(old, target)
                raise
        else:
            os.rename(out, target)
    except AdapterError:
        raise
    except Exception as e:
        raise StorageError(f"Saving adapter '{name}' to '{target}' failed ({type(e).__name__}: {e}); any "
                           "previous copy there is untouched. Check free space and permissions, then retry.") from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def save_adapter(model, name: str, where: str = "session", path_or_repo=None, private: bool = True,
                 token=None, allow_pickle: bool = False) -> str:
    """Save one loaded adapter; returns the folder (session, drive) or the repo id (hub).

    session/drive: ``path_or_repo`` is a folder name relative to that place (default: ``name``); an older copy
    is replaced only once the new one is complete. hub: ``path_or_repo`` is 'owner/repo[/subfolder]' or
    'repo' (your namespace), default ``name``; the token comes from ``token``, HF_TOKEN or the Colab secret.
    Weights are safetensors; ``allow_pickle=True`` writes the legacy adapter_model.bin instead.
    """
    loaded = list(getattr(model, "peft_config", {}) or {})
    if name not in loaded:
        raise AdapterNotFoundError(f"No adapter named {name!r} is loaded (loaded: {loaded or 'none'}). "
                                   "Load it with lh.load_adapters(model, {name: source}) first.")
    if where not in WHERE:
        raise AdapterError(f"where={where!r} is not a storage place; expected one of {', '.join(WHERE)}.")
    if where == "hub":
        return _push(model, name, path_or_repo or name, private, token, allow_pickle)
    root = session_dir() if where == "session" else drive_dir()
    return str(_write_local(model, name, root / _relative(where, path_or_repo or name), allow_pickle))


def _push(model, name, spec, private, token, allow_pickle) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    token = find_token(token)
    if not token:
        raise StorageError("No Hugging Face token found: pass token=..., set the HF_TOKEN environment variable, "
                           "or in Colab add a secret named HF_TOKEN (key icon on the left) with a write token "
                           "from https://huggingface.co/settings/tokens.")
    parts = [p for p in str(spec).strip("/").split("/") if p]
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:]) or None
    api = HfApi(endpoint=_endpoint(), token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory(prefix="lora_push_") as tmp:
            folder = _write_local(model, name, Path(tmp) / name, allow_pickle)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=sub,
                              commit_message=f"Upload LoRA adapter '{name}' (lora_helpers)")
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        why = getattr(e, "server_message", None) or str(e).splitlines()[0]
        hint = " The token was refused: use a token with write access." if status in (401, 403) else ""
        raise StorageError(f"Uploading '{name}' to the Hub repo '{repo_id}' failed (HTTP {status}: "
                           f"{_scrub(why, token)}).{hint}") from None
    except AdapterError:
        raise
    except Exception as e:  # connection errors, bad repo ids
        raise StorageError(f"Uploading '{name}' to the Hub repo '{repo_id}' failed: "
                           f"{_scrub(str(e), token)}. Check your connection and try again.") from None
    return f"{repo_id}/{sub}" if sub else repo_id
