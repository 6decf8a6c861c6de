"""The package's one atomic folder write, and what a failed write says.

:func:`staging_folder` gives a new folder beside the target; :func:`replace_folder` swaps a complete folder
into place so that the old copy survives an interrupt at any instant (:func:`recover_folder` finishes a swap
a killed process left half done); :func:`check_ours` refuses to replace a folder this package did not write;
:func:`check_path` refuses, before anything is written, a target whose name is too long or that leads through
a symbolic-link loop. Storage, merge and train write through here. A leaf: it imports nothing from the package
but its errors.
"""
from __future__ import annotations

import errno
import os
import re
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
OS_LITTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # what file browsers add to a synced Drive folder
NAME_MAX = 255  # bytes in one file or folder name on Linux, macOS and Windows file systems
# the longest name a save puts beside its target: the staging ".<name>.tmp-<pid>-XXXXXXXX" (a pid has at most 7
# digits on Linux; the old copy ".<name>.lora_helpers-old" is shorter), so a target name may use only what is left
_BESIDE = len("..tmp-1234567-XXXXXXXX")
_IN_USE: set[str] = set()  # this process's staging folders while their save runs (real paths)


def _old_copy(target: Path) -> Path:
    return target.with_name(f".{target.name}.lora_helpers-old")


def recover_folder(target) -> None:
    """Finish a :func:`replace_folder` that was cut short (a killed process, a second Ctrl-C).

    With ``target`` missing, its moved-aside old copy goes back; with ``target`` present (the swap happened),
    a leftover old copy is removed.
    """
    target = Path(target)
    _remove_stale_stages(target)
    old = _old_copy(target)
    if not os.path.lexists(old):
        return
    if not os.path.lexists(target):
        os.rename(old, target)
    elif old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: count every other process as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _remove_stale_stages(target: Path) -> None:
    """Remove staging folders of ``target`` that no save uses any more (a Ctrl-C while one was being removed):
    this process's that are not in use, and those of processes that have ended."""
    prefix = f".{target.name}.tmp-"
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:  # no parent folder yet, or not readable
        return
    for entry in entries:
        pid = entry.name[len(prefix):].split("-")[0]
        if not pid.isdigit() or os.path.realpath(entry.path) in _IN_USE:
            continue  # an older release's name (its owner unknown), or a save running now
        if int(pid) == os.getpid() or not _alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


@contextmanager
def staging_folder(target):
    """A new empty folder beside ``target`` (same file system, so :func:`replace_folder` is a rename),
    removed on exit whatever happens (what a Ctrl-C keeps, :func:`recover_folder` removes later)."""
    target = Path(target)
    check_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    _IN_USE.add(os.path.realpath(stage))
    try:
        yield stage
    finally:
        _IN_USE.discard(os.path.realpath(stage))
        try:
            shutil.rmtree(stage, ignore_errors=True)
        except BaseException:  # a Ctrl-C while removing it: finish, then let the interrupt through
            shutil.rmtree(stage, ignore_errors=True)
            raise


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
    other = sorted(names - WRITTEN - OS_LITTER)
    if names and (other or CONFIG_NAME not in names or not names & {WEIGHTS_NAME, PICKLE_NAME}):
        shown = ", ".join(other[:5]) or "no adapter weights"
        raise StorageError(f"'{folder}' exists and is not an adapter folder saved by lora_helpers (it holds: "
                           f"{shown}); expected only {CONFIG_NAME} and {WEIGHTS_NAME}. {fix}")


# ----------------------------------------------------------------------------- paths
def _short(text: str, keep: int = 60) -> str:
    return text if len(text) <= keep else f"{text[:keep // 2]}…{text[-keep // 2:]} ({len(text)} characters)"


def loop_error(path) -> StorageError:
    return StorageError(f"'{_short(str(path), 200)}' leads through a symbolic link that points back into itself "
                        "(a link loop), so nothing can be saved or read there. Remove or fix that link "
                        "(ls -l shows where it points), or choose another folder.")


def user_path(given) -> Path:
    """``Path(given).expanduser()``, or a StorageError for a path no file system can hold: a NUL character, a
    "~user" whose home folder is unknown, a name over ``NAME_MAX`` bytes."""
    if not isinstance(given, (str, os.PathLike)):
        raise StorageError(f"Expected a folder path (a str or a Path), got {type(given).__name__}: {given!r:.60}.")
    text = os.fspath(given)
    if "\0" in str(text):
        raise StorageError(f"The path {_short(str(text), 120)!r} contains a NUL character ('\\x00'), which no file "
                           "system allows in a name. Remove it from the path; nothing was read or written.")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "Could not determine home directory."
        user = Path(text).parts[0][1:]
        raise StorageError(f"The path {_short(str(text), 120)!r} starts with '~{user}', but the home folder of "
                           f"{user!r} is unknown (no such user here). Write the full path, or '~/...' for your own "
                           "home folder; nothing was read or written.") from None
    for part in path.parts:
        n = len(os.fsencode(part))
        if n > NAME_MAX:
            raise StorageError(f"The name '{_short(part)}' in '{_short(str(path), 120)}' is too long: {n} bytes, where "
                               f"the file system allows at most {NAME_MAX} per name. Choose a shorter name; nothing "
                               "was read or written.")
    return path


def check_path(target) -> Path:
    """Refuse (StorageError) a ``target`` the file system cannot hold: what :func:`user_path` refuses, a saved
    folder's name too long to leave room for the temp and old-copy names a save puts beside it, or a path
    through a symbolic-link loop. Nothing is written; returns ``target.resolve()``."""
    target = user_path(target)
    for part in target.parts:
        n = len(os.fsencode(part))
        limit = NAME_MAX - _BESIDE if part == target.name else NAME_MAX
        if n > limit:
            raise StorageError(f"The name '{_short(part)}' in '{_short(str(target), 120)}' is too long: {n} bytes, "
                               f"where a {'saved folder' if part == target.name else 'folder'} name may have at most "
                               f"{limit} (the file system allows {NAME_MAX} per name, and a save adds up to {_BESIDE} "
                               "for its temporary copy). Choose a shorter name; nothing was written.")
    return resolved(target)


def resolved(path) -> Path:
    """``Path(path).resolve()``; a symbolic-link loop on the way, or a path too long, is a StorageError.

    (Python 3.11-3.12 raise RuntimeError for a loop; 3.13 returns a path whose ``stat`` fails with ELOOP.)"""
    path = Path(path)
    try:
        real = path.resolve()
        os.stat(real)
    except RuntimeError as e:  # "Symlink loop from ..."
        raise loop_error(path) from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise loop_error(path) from e
        if e.errno == errno.ENAMETOOLONG:
            raise path_too_long(path) from e
        return real  # missing: it is about to be written
    return real


def path_too_long(path) -> StorageError:
    return StorageError(f"The path '{_short(str(path), 120)}' is too long for the file system: a whole path may "
                        "have at most 4096 bytes on Linux (less on other systems). Choose a shorter folder or name; "
                        "nothing was written.")


# ----------------------------------------------------------------------------- disk errors
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # a full disk, or a full quota


def size_text(n: int) -> str:
    """``n`` bytes in a unit that shows its size: "900 bytes", "12 KiB", "3.4 MiB", "1.25 GiB"."""
    if n < 2**10:
        return f"{n} bytes"
    if n < 2**20:
        return f"{n / 2**10:.0f} KiB"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


_WRITE_ERRNOS = (*NO_SPACE, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP, errno.EIO,
                 errno.EFBIG)


def as_os_error(e: BaseException) -> OSError | None:
    """``e`` when it is an OSError; an OSError for a plain exception whose text names a failed write (tokenizers
    and safetensors raise e.g. ``Exception("No space left on device (os error 28)")``); else None."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    m = re.search(r"os error (\d+)", text)  # Rust's io::Error text (tokenizers, safetensors)
    if m and int(m.group(1)) in _WRITE_ERRNOS:
        n = int(m.group(1))
        return OSError(n, os.strerror(n))
    n = next((n for n in _WRITE_ERRNOS if os.strerror(n) in text), None)
    return None if n is None else OSError(n, os.strerror(n))


def _existing(where: Path) -> Path:
    for p in [Path(where), *Path(where).parents]:
        try:
            if p.is_dir():
                return p
        except OSError:  # a name too long: try the parent
            pass
    return Path(".")


def disk_error(e: OSError, what: str, where: Path, needed: int | None = None, *,
               elsewhere: str = "path_or_repo=..., LORA_SESSION_DIR or LORA_DRIVE_DIR",
               error=StorageError) -> StorageError:
    """A StorageError (or ``error``, a subclass) for a failed write: full disk (with the numbers), read-only,
    a name too long, a link loop, or anything else; ``elsewhere`` says how to save somewhere else."""
    place = _existing(where)
    if e.errno in NO_SPACE:
        need = f"about {size_text(needed)}" if needed else "more space"
        try:
            free = f", {size_text(shutil.disk_usage(place).free)} are free"
        except OSError:
            free = ""
        return error(f"Not enough disk space to {what}: it needs {need} in '{place}'{free}. Free some space or "
                     f"save elsewhere ({elsewhere}), then retry; any previous copy there is untouched. ({e.strerror})")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return error(f"Cannot {what}: '{place}' is read-only or not writable for you ({e.strerror}). "
                     f"Save somewhere writable ({elsewhere}); any previous copy there is untouched.")
    if e.errno == errno.ENAMETOOLONG:
        return error(f"Cannot {what}: a file or folder name there is too long for the file system (at most "
                     f"{NAME_MAX} bytes per name). Choose a shorter name ({elsewhere}); nothing was written.")
    if e.errno == errno.EFBIG:
        return error(f"Cannot {what}: a file is too large for the file system at '{place}' (FAT32 drives take at most "
                     "4 GiB per file, and 'ulimit -f' can set a lower limit). Write smaller files (merge_and_save: "
                     f"max_shard_size='1GB') or save elsewhere ({elsewhere}); any previous copy there is untouched.")
    if e.errno == errno.ELOOP:
        return error(f"Cannot {what}: the path leads through a symbolic link that points back into itself (a link "
                     f"loop). Fix or remove that link, or save elsewhere ({elsewhere}); nothing was written.")
    return write_error(e, what, error)


def write_error(e: BaseException, what: str, error=StorageError) -> StorageError:
    """A StorageError for a write that failed some other way."""
    return error(f"Could not {what} ({type(e).__name__}: {_short(str(e), 300)}); any previous copy there is "
                 "untouched. Check free space and permissions, then retry.")
