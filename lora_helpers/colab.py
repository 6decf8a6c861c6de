"""The runtime a notebook runs in: mounting Google Drive on request, and checking memory and disk first.

Nothing here blocks "Run all": Drive is mounted only when a notebook asks for it, and a declined or failed
mount is a message and ``False``, never an exception. Heavy steps call :func:`require` before they start,
so a shortage is an error with the numbers instead of a dead session.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .notebook_setup import in_colab
from .errors import AdapterError

COLAB_DRIVE_MOUNT = "/content/drive"  # where Colab mounts Google Drive
GIB = 2**30


def mount_drive(mountpoint: str = COLAB_DRIVE_MOUNT) -> bool:
    """Mount Google Drive (Colab asks for permission) and return True when it is there; never raises.

    Outside Colab, True only when ``LORA_DRIVE_DIR`` names a stand-in folder. A declined or failed mount
    prints what happened and returns False: the notebook then keeps adapters in the session folder.
    """
    if not in_colab():
        if os.environ.get("LORA_DRIVE_DIR"):
            return True
        print("Google Drive доступен только в Colab: адаптеры останутся в папке сессии "
              "(или задайте LORA_DRIVE_DIR — локальную папку вместо Drive).")
        return False
    if (Path(mountpoint) / "MyDrive").is_dir():
        return True
    try:
        from google.colab import drive
        drive.mount(mountpoint)
    except Exception as e:  # declined dialog, timeout, no credentials: Colab raises several kinds
        print(f"Google Drive не подключён ({type(e).__name__}: {e}). Адаптеры сохраняются в папку сессии — "
              "после перезапуска среды их придётся обучить или загрузить заново.")
        return False
    return (Path(mountpoint) / "MyDrive").is_dir()


def free_ram() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_gpu(device: str | int = 0) -> int | None:
    """Free bytes on a CUDA device, None without one."""
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device) if isinstance(device, str) else device)
    return free


def free_disk(path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _size(n: int) -> str:
    """Bytes for a message: GiB with one decimal, MiB below 1 GiB (a small adapter is not "~0.0 GiB")."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def require(what: str, *, ram: int = 0, gpu: int = 0, disk: int = 0, path=".", error=AdapterError) -> None:
    """Raise ``error`` naming the numbers when RAM, GPU memory or disk at ``path`` is short for ``what``."""
    short = []
    have = free_ram()
    if ram and have is not None and have < ram:
        short.append(f"RAM: needs ~{_size(ram)}, {_size(have)} available")
    have = free_gpu()
    if gpu and (have is None or have < gpu):
        short.append(f"GPU memory: needs ~{_size(gpu)}, " + ("no CUDA GPU" if have is None else f"{_size(have)} free"))
    if disk:
        have = free_disk(path)
        if have < disk:
            short.append(f"disk at {path}: needs ~{_size(disk)}, {_size(have)} free")
    if short:
        raise error(f"Not enough resources to {what}: " + "; ".join(short) + ". Nothing was started. "
                    "Free memory (del unused models, restart the runtime) or disk, or pick a smaller base.")
