"""The package's one atomic folder write, and what a failed write says.

:func:`staging_folder` gives a new folder beside the target; :func:`replace_folder` swaps a complete folder
into place so that the old copy survives an interrupt at any instant (:func:`recover_folder` finishes a swap
a killed process left half done); :func:`check_ours` refuses to replace a folder this package did not write.
Storage, merge and train write through here. A leaf: it imports nothing from the package but its errors.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import StorageError

# PEFT's names for what an adapter folder holds
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
WRITTEN = {CONFIG_NAME, WEIGHTS_NAME, PICKLE_NAME, "README.md"}  # what save_adapter puts in a folder
_OS_LITTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # what file browsers add to a synced Drive folder


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


# ----------------------------------------------------------------------------- disk errors
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # a full disk, or a full quota


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def disk_error(e: OSError, what: str, where: Path, needed: int | None = None) -> StorageError:
    """A StorageError for a failed write: full disk (with the numbers), read-only, or anything else."""
    place = next((p for p in [Path(where), *Path(where).parents] if p.exists()), Path("."))
    if e.errno in NO_SPACE:
        need = f"about {_size(needed)}" if needed else "more space"
        return StorageError(f"Not enough disk space to {what}: it needs {need} in '{place}', "
                            f"{_size(shutil.disk_usage(place).free)} are free. Free some space or save elsewhere, "
                            f"then retry; any previous copy there is untouched. ({e.strerror})")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"Cannot {what}: '{place}' is read-only or not writable for you ({e.strerror}). "
                            "Save somewhere writable (path_or_repo=..., LORA_SESSION_DIR or LORA_DRIVE_DIR); "
                            "any previous copy there is untouched.")
    return write_error(e, what)


def write_error(e: BaseException, what: str) -> StorageError:
    """A StorageError for a write that failed some other way."""
    return StorageError(f"Could not {what} ({type(e).__name__}: {e}); any previous copy there is untouched. "
                        "Check free space and permissions, then retry.")
