"""Adapter names: the one spelling of "no adapter", and what a name may look like."""
from __future__ import annotations

import re

from .errors import AdapterError, AdapterExistsError, AdapterNotFoundError

BASE = "base"  # the name of "no adapter": switch(model, BASE) runs the plain base model
PEFT_BASE = "__base__"  # PEFT's own name for it in a mixed batch's ``adapter_names``
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_RESERVED = {BASE, PEFT_BASE}


def check_name(name, what: str = "an adapter") -> str:
    """Return ``name`` when it can name an adapter (letters, digits, ``_`` and ``-``), else raise AdapterError.

    Plain names keep adapters apart from PEFT's weight keys (no dots), from folders (no ``/``, no ``..``)
    and from the names this package and PEFT's mixed batches give a meaning ("base", "__base__"); a part of
    "lora_" would be mixed up with PEFT's weight names.
    """
    if (not isinstance(name, str) or not _PLAIN.fullmatch(name) or name in _RESERVED
            or name in "lora_"):
        raise AdapterError(
            f"{name!r} cannot name {what}: use letters, digits, '_' and '-' only (no '.', '/', spaces), "
            f"not starting with '-', not part of 'lora_', and not {BASE!r} or '__base__' ({BASE!r} means "
            "'no adapter'). Example: 'json'.")
    return name


def loaded_names(model) -> list[str]:
    """The adapters loaded on ``model``, in PEFT's order ([] for a plain transformers model)."""
    return list(getattr(model, "peft_config", None) or {})


def require_loaded(model, names, allow_base: bool = False) -> list[str]:
    """Return ``names`` (one name or a list) as a list when each is loaded on ``model``, else raise
    AdapterNotFoundError naming the missing ones and the loaded ones. ``allow_base`` accepts "base" too."""
    wanted = [names] if isinstance(names, str) else list(names)
    loaded = loaded_names(model)
    missing = [n for n in wanted if not (isinstance(n, str) and (n in loaded or (allow_base and n == BASE)))]
    if missing:
        shown = ", ".join(repr(n) for n in dict.fromkeys(map(str, missing)))
        extra = f" (or {BASE!r} for none)" if allow_base else ""
        raise AdapterNotFoundError(
            f"No adapter named {shown} is loaded; loaded: {', '.join(loaded) or 'none'}{extra}. "
            "Check the spelling or load it first: model = lh.load_adapters(model, {name: source}).")
    return wanted


def require_new(model, name, what: str = "an adapter", fix: str | None = None) -> str:
    """Return ``name`` when it can name a new adapter on ``model`` (:func:`check_name`) and none of that name is
    loaded yet, else raise AdapterError / AdapterExistsError naming the loaded ones and ending with ``fix``."""
    check_name(name, what)
    loaded = loaded_names(model)
    if name in loaded:
        fix = fix or f"Pick a new name, or delete that one first: model.delete_adapter({name!r})."
        raise AdapterExistsError(f"The model already has an adapter named {name!r} (loaded: {', '.join(loaded)}). {fix}")
    return name
