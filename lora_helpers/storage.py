"""Where adapters live: the session folder, Google Drive, the Hugging Face Hub.

``resolve_adapter`` turns a source ("session:name", "drive:path", "hub:owner/repo", a folder) into a
local folder; ``save_adapter`` writes one loaded adapter there; ``inspect_adapter`` reads
adapter_config.json and the safetensors header without loading weights. The writes go through the
package's one atomic folder write (:mod:`lora_helpers.folders`), the Hub through :mod:`lora_helpers.hub`;
their names used elsewhere (``replace_folder``, ``staging_folder``, ``find_token``) import from here too.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from . import hub
from .notebook_setup import in_colab
from .errors import AdapterError, AdapterFileError, AdapterNotFoundError, StorageError
from .folders import (  # noqa: F401  (re-exported: merge and train write through storage)
    CONFIG_NAME, NO_SPACE, PICKLE_NAME, WEIGHTS_NAME, WRITTEN, as_os_error, check_ours, check_path, disk_error,
    recover_folder, replace_folder, resolved, staging_folder, user_path, write_error,
)
from .hub import find_token  # noqa: F401  (public: lh.find_token)
from .names import check_name, require_loaded

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
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
        # shown to learners in notebook 01, so in Russian
        print(f"Google Drive есть только в Colab: вместо него используется локальная папка '{root}' "
              "(другую можно задать в LORA_DRIVE_DIR).")
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
        what = ("a symbolic link that leads nowhere (it points back into itself, or at something missing)"
                if os.path.islink(p) else "a file")
        raise StorageError(f"The {where} folder '{root}'{origin} cannot be a folder: '{p}' is {what}. Point {var} "
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
    real_root, real = resolved(root), check_path(shown)
    if os.path.islink(shown) or real == real_root or not real.is_relative_to(real_root):
        raise StorageError(f"'{where}:{given}' leads to '{real}', which is not a folder inside the {where} folder "
                           f"'{real_root}' (a symbolic link, or the folder itself); nothing was changed. Name a "
                           f"subfolder, e.g. '{where}:lora_json'.")
    return shown, real


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
        path = hub.download(source[len("hub:"):])
    else:
        path = user_path(source)
    if os.path.islink(path) and not os.path.exists(path):
        raise AdapterNotFoundError(f"'{path}' (from {str(source)!r}) is a symbolic link that leads nowhere: it points "
                                   "back into itself (a link loop) or at something missing. Fix or remove the link, "
                                   "or point at the adapter folder itself.")
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
def tensor_bytes(weights: dict) -> int:
    """Bytes the tensors of a state dict hold."""
    return sum(t.numel() * t.element_size() for t in weights.values())


def adapter_weights(model, name: str | None = None) -> dict:
    """{adapter: {tensor name: tensor}} as the model holds them (or one adapter's dict when ``name`` is given).

    Read from each PEFT layer's and wrapper's ``adapter_layer_names``, in one walk. Not PEFT's
    ``get_peft_model_state_dict``: beside a trainable-tokens adapter it raises KeyError for every other adapter
    (PEFT 0.20-0.22; see :func:`_saved_state`).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    found, seen = {}, set()
    for path, m in model.named_modules():
        if not isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            continue
        for attr in m.adapter_layer_names:
            if "." in attr:  # a wrapper's view into its inner PEFT layer, which this walk visits anyway
                continue
            store = getattr(m, attr, None)
            for adapter in (store.keys() if hasattr(store, "keys") else ()):
                if name is not None and adapter != name:
                    continue
                item = store[adapter]
                tensors = ([("", item)] if isinstance(item, torch.Tensor)
                           else list(item.named_parameters()) if isinstance(item, torch.nn.Module) else [])
                for sub, t in tensors:
                    if id(t) not in seen:  # tied modules share tensors
                        seen.add(id(t))
                        found.setdefault(adapter, {})[".".join(x for x in (path, attr, sub) if x)] = t
    return found.get(name, {}) if name is not None else found


def adapter_bytes(model, name: str) -> int:
    """Bytes of adapter ``name``'s weights as the model holds them (what ``list_adapters`` shows)."""
    return tensor_bytes(adapter_weights(model, name))


def _saved_state(model, name: str) -> dict:
    """PEFT's own state dict of adapter ``name`` (``get_peft_model_state_dict``), also beside a trainable-tokens
    adapter: there each tokens wrapper looks up its delta under ``name`` too and raises KeyError (PEFT 0.20-0.22).
    A wrapper that holds no ``name`` adds nothing to it, so it gets a placeholder that is dropped again."""
    from peft import get_peft_model_state_dict
    from peft.utils.other import TrainableTokensWrapper

    state, placeholder = model.state_dict(), torch.empty(0)
    for path, m in model.named_modules():
        if isinstance(m, TrainableTokensWrapper) and name not in m.token_adapter.trainable_tokens_delta:
            state[f"{path}.token_adapter.trainable_tokens_delta.{name}"] = placeholder
    saved = get_peft_model_state_dict(model, state_dict=state, adapter_name=name, save_embedding_layers=False)
    return {k: v for k, v in saved.items() if v is not placeholder}


def _save_peft_folder(model, name: str, stage: Path, allow_pickle: bool) -> Path:
    """``model.save_pretrained`` of adapter ``name`` into ``stage``; returns the folder PEFT wrote it to.

    Where PEFT's own call fails beside a trainable-tokens adapter (KeyError), the same files are written from
    :func:`_saved_state`: the weights, and the config as PEFT saves it (inference mode, the base's name)."""
    out = stage if name == "default" else stage / name  # PEFT's layout: other names in a subfolder
    try:
        # save_embedding_layers=False: LoRA weights only (the "auto" check would query the Hub)
        model.save_pretrained(str(stage), selected_adapters=[name], safe_serialization=not allow_pickle,
                              save_embedding_layers=False)
        return out
    except KeyError:
        from peft.utils.other import TrainableTokensWrapper
        if not any(isinstance(m, TrainableTokensWrapper) for m in model.modules()):
            raise
    import copy

    weights = {k: v.detach().clone().contiguous() for k, v in _saved_state(model, name).items()}
    out.mkdir(parents=True, exist_ok=True)
    if allow_pickle:
        torch.save(weights, out / PICKLE_NAME)
    else:
        from safetensors.torch import save_file
        save_file(weights, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    config = copy.deepcopy(model.peft_config[name])
    config.inference_mode = True
    config.base_model_name_or_path = (config.base_model_name_or_path
                                      or getattr(model.get_base_model(), "name_or_path", None) or None)
    config.save_pretrained(str(out))
    return out


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
            out = _save_peft_folder(model, name, stage, allow_pickle)
            inspect_adapter(out, allow_pickle=allow_pickle)
            if not card:
                (out / "README.md").unlink(missing_ok=True)
            for f in out.iterdir():
                f.chmod(0o755 if f.is_dir() else 0o644)  # files in a private temp folder may be private too
            if not allow_pickle and any(p.suffix in PICKLE_SUFFIXES for p in out.rglob("*")):
                raise AdapterFileError(f"Saving '{name}' produced pickle files; expected safetensors only.")
            replace_folder(out, target, check_old=lambda old: _keep_readme(old, out))
    except AdapterError:
        raise
    except Exception as e:  # tokenizers/safetensors-style plain exceptions too: "No space left on device"
        failed = as_os_error(e)
        if failed is None:
            raise write_error(e, what) from e
        raise disk_error(failed, what, target.parent, adapter_bytes(model, name) if failed.errno in NO_SPACE else None) from e
    return target


def _keep_readme(old: Path, new: Path) -> None:
    """Before ``old`` (a folder :func:`check_ours` accepts) is replaced by ``new``: its README.md goes into the new
    copy, since it may be the user's own notes (or the card an earlier save wrote)."""
    check_ours(old)
    readme = old / "README.md"
    if readme.is_file() and not readme.is_symlink():
        shutil.copy2(readme, new / "README.md")


def save_adapter(model, name: str, where: str = "session", path_or_repo=None, private: bool = True,
                 token=None, allow_pickle: bool = False) -> str:
    """Save one loaded adapter; returns the folder (session, drive) or the repo id (hub).

    session/drive: ``path_or_repo`` is a subfolder of that place (default: ``name``); it must stay inside
    it (no links out), and an existing folder there is replaced, once the new copy is complete, only when
    it holds an adapter saved by this package; its README.md is kept. hub: ``path_or_repo`` is 'owner/repo[/subfolder]' or 'repo'
    (your namespace), default ``name``; the token comes from ``token``, HF_TOKEN or the Colab secret.
    Weights are safetensors; ``allow_pickle=True`` writes the legacy adapter_model.bin instead.
    """
    require_loaded(model, name)
    check_name(name, "a saved adapter")
    if where not in WHERE:
        raise AdapterError(f"where={where!r} is not a storage place; expected one of {', '.join(WHERE)}.")
    if where == "hub":
        return hub.upload(lambda tmp: _write_local(model, name, tmp / name, allow_pickle), name,
                          path_or_repo or name, private, token)
    shown, real = _inside(where, path_or_repo or name)
    _write_local(model, name, real, allow_pickle)
    return str(shown)
