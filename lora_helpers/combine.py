"""Combine loaded LoRA adapters into a new one, on PEFT's ``add_weighted_adapter``."""
from __future__ import annotations

from .errors import AdapterError, AdapterNotFoundError, MergeError
from .names import loaded_names, require_loaded, require_new

METHODS = ("linear", "ties", "dare_ties", "cat")


def _is_lora(cfg) -> bool:
    return str(getattr(cfg, "peft_type", "")).split(".")[-1] == "LORA"


def combine_adapters(model, weights: dict, new_name: str, method: str = "linear", density: float | None = None):
    """Add adapter ``new_name`` = a weighted mix of loaded adapters ({name: weight}); returns ``model``.

    On PEFT's ``add_weighted_adapter``. "cat" is exact (Σ weight·ΔW, rank = sum of ranks); "linear" mixes the
    A and B matrices (same rank needed; an approximation); "ties"/"dare_ties" prune to ``density`` (0..1]
    and resolve sign conflicts ("dare_ties" is random: seed first). The active adapter does not change:
    ``lh.switch(model, new_name)`` to use it.
    """
    if not hasattr(model, "add_weighted_adapter") or not loaded_names(model):
        raise AdapterNotFoundError("combine_adapters needs a PeftModel with LoRA adapters loaded, and this model has "
                                   "no adapters loaded: model = lh.load_adapters(model, {name: source}).")
    if not isinstance(weights, dict) or not weights:
        raise AdapterError(f"weights must be a non-empty dict {{adapter name: weight}}, got {weights!r}.")
    require_loaded(model, list(weights))
    if not all(_is_lora(model.peft_config[n]) for n in weights):
        raise AdapterError("combine_adapters combines LoRA adapters only; "
                           f"got {[str(model.peft_config[n].peft_type) for n in weights]}.")
    require_new(model, new_name, "the combined adapter", fix="Choose another new_name.")
    if method not in METHODS:
        raise AdapterError(f"method={method!r} is not supported; choose one of {', '.join(METHODS)}.")
    bad = {n: w for n, w in weights.items() if isinstance(w, bool) or not isinstance(w, (int, float))}
    if bad:
        raise AdapterError(f"Weights must be numbers, got {bad}.")
    if method in ("ties", "dare_ties"):
        if density is None or not 0 < density <= 1:
            raise AdapterError(f"method={method!r} needs density in (0, 1], the share of each adapter's weights "
                               f"to keep, got {density!r}. Try density=0.5.")
    elif density is not None:
        raise AdapterError(f"density applies only to 'ties' and 'dare_ties', not to {method!r}.")
    ranks = {n: max([c.r, *(c.rank_pattern or {}).values()]) for n, c in model.peft_config.items() if n in weights}
    if method != "cat" and len(set(ranks.values())) > 1:
        raise MergeError(f"method={method!r} needs adapters of the same rank, got {ranks}. "
                         "Use method='cat' (rank = sum of ranks), or retrain with one r.")
    try:
        model.add_weighted_adapter(list(weights), [float(w) for w in weights.values()], new_name,
                                   combination_type=method, density=density)
    except (ValueError, TypeError, RuntimeError) as e:
        if new_name in model.peft_config:
            model.delete_adapter(new_name)
        raise MergeError(f"PEFT could not combine {list(weights)} with method={method!r}: {e}") from e
    return model
