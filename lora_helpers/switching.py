"""Which adapter runs: ``switch`` for good, ``temporary_switch`` for a ``with`` block, ``active_adapter`` to ask.

The PeftModel is the only record: everything here reads PEFT's public state and changes it through PEFT's
public methods (``set_adapter``, ``enable_adapter_layers``/``disable_adapter_layers``, the layers' own
``set_adapter``/``enable_adapters``); nothing is cached between calls. ``"base"`` means "no adapter": the
adapter layers are switched off, as ``disable_adapter_layers`` does, and the active adapter is kept.

``switch`` is for inference. ``switch(model, name)`` leaves the model exactly as PEFT's
``enable_adapter_layers()`` followed by ``set_adapter(name, inference_mode=True)`` would: ``name`` runs and
no adapter weight is trainable (PEFT's plain ``set_adapter(name)`` would also make it trainable; to train,
call that). ``switch(model, "base")`` is ``disable_adapter_layers()``, which freezes them too.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

import peft
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from .errors import AdapterError, AdapterNotFoundError, UntrainedAdapterWarning
from .modes import recorded
from .names import BASE, require_loaded

_ADAPTER_MODULES = (BaseTunerLayer, AuxiliaryTrainingWrapper)  # what PEFT's own enable/disable walk reaches


def _minor(version: str):
    m = re.fullmatch(r"(\d+)\.(\d+)\.\d+(\.post\d+)?", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def peft_tested(version: str) -> bool:
    """True for the PEFT releases CI runs the switching property test on (0.20 to 0.22): there ``switch`` and
    ``temporary_switch`` are proven to leave exactly PEFT's own state. Later releases are allowed; ``switch`` then
    makes only PEFT's model-level calls (``shortcuts_proven``)."""
    minor = _minor(version)
    return minor is not None and (0, 20) <= minor <= (0, 22)


def shortcuts_proven(version: str) -> bool:
    """True where ``switch``'s layer-level shortcuts are proven exact: PEFT 0.20 and 0.21. From 0.22 on, a layer's
    ``set_adapter`` and ``enable_adapters`` also set the train/eval mode of its adapters' modules, which the
    shortcuts (skipping calls that would change nothing) would leave behind."""
    minor = _minor(version)
    return minor is not None and (0, 20) <= minor <= (0, 21)


# The shortcuts rely on how PEFT 0.20-0.21 implement their public methods (not on what they document):
# enable_adapter_layers() and set_adapter() made of the layers' own calls in one walk, skipped where they would
# change nothing. Elsewhere switch makes PEFT's model-level calls (exact by construction); on a tested release
# it leaves out enable_adapter_layers() where that provably changes nothing (``_enable_is_moot``).
SHORTCUTS = shortcuts_proven(peft.__version__)
TESTED = peft_tested(peft.__version__)


def _adapter_modules(model):
    return (m for m in model.modules() if isinstance(m, _ADAPTER_MODULES))


def adapters_disabled(model) -> bool:
    """True when any adapter layer is switched off ("base", ``disable_adapter_layers``, ``disable_adapter()``)."""
    return any(m.disable_adapters for m in _adapter_modules(model))


def _no_adapters(name) -> AdapterNotFoundError:
    return AdapterNotFoundError(f"Cannot switch to {name!r}: the model has no adapters loaded. "
                                "Load them first: model = lh.load_adapters(model, {name: source}).")


def _targets(model, name) -> list[str]:
    """The adapter names ``name`` asks for ([] for "base"); a list may hold one name or several."""
    names = [name] if isinstance(name, str) else list(name) if isinstance(name, (list, tuple)) else [None]
    names = list(dict.fromkeys(names)) if all(isinstance(n, str) for n in names) else names  # drop repeats
    if names == [BASE]:
        return []
    return require_loaded(model, names or [name], allow_base=len(names) == 1)


def _enable(model) -> None:
    if not SHORTCUTS or adapters_disabled(model):
        model.base_model.enable_adapter_layers()


def switch(model, name) -> None:
    """Run adapter ``name`` from now on; ``"base"`` runs the base without adapters.

    ``"base"`` is PEFT's ``disable_adapter_layers()``, which PEFT's own ``set_adapter`` does not undo: come
    back with ``switch`` (or call ``enable_adapter_layers()`` before ``set_adapter``).

    ``name`` may also be a list (one name, or several to run together, as ``base_model.set_adapter`` allows).
    The result equals PEFT's ``enable_adapter_layers()`` + ``set_adapter(name, inference_mode=True)``: every
    adapter weight is frozen afterwards (use PEFT's ``set_adapter`` to train). Unknown names, and sets of
    adapters PEFT cannot run together, raise an AdapterError and change nothing. Switching to an adapter whose
    lora_B weights are all zero warns that it changes nothing.
    """
    if not isinstance(model, PeftModel):
        if name == BASE or name == [BASE]:
            return
        raise _no_adapters(name)
    names = _targets(model, name)
    if not names:
        model.base_model.disable_adapter_layers()
        return
    if len(names) == 1:
        if _switch_one(model, names[0]):
            warn_zero(names[0], stacklevel=3)
        return
    saved = SwitchState(model)
    try:
        _enable(model)
        model.base_model.set_adapter(names, inference_mode=True)
    except Exception as e:
        saved.restore(model)
        raise AdapterError(f"Adapters {names} cannot run together: PEFT refused ({type(e).__name__}: {e}). "
                           "Each may replace a whole module (modules_to_save, trainable tokens) only alone: "
                           "pick one of them, or a set without such overlaps.") from e


def _switch_one(model, name: str) -> bool:
    """``enable_adapter_layers()`` + ``set_adapter(name, inference_mode=True)``; True when this changed what runs
    and ``name`` is untrained (lora_B all zero).

    Without the shortcuts: a read-only walk, then PEFT's two calls (on a tested release the first only where it
    is not moot, see ``_read``). With them (``SHORTCUTS``), one walk over the modules: each layer gets the
    same layer-level calls PEFT's two methods make, in the same order, and a layer that already runs only ``name``
    with every adapter weight frozen is left alone (the call would change nothing there). Wrappers
    (modules_to_save, trainable tokens), merged layers and prompt learning take PEFT's model-level calls: which
    adapters a wrapper holds has no public reader.
    """
    tuner = model.base_model
    if not SHORTCUTS:
        layers, moot = _read(model)  # one read-only walk
        changed = model.active_adapter != name or tuner.active_adapter != name or _runs_other(layers, name)
        if not (TESTED and moot):
            tuner.enable_adapter_layers()
        model.set_adapter(name, inference_mode=True)
        return changed and untrained(model, name, layers)
    layers = list(_adapter_modules(model))  # the one walk
    disabled = any(m.disable_adapters for m in layers)
    changed = model.active_adapter != name or tuner.active_adapter != name or _runs_other(layers, name)
    if disabled:
        for m in layers:  # what enable_adapter_layers() does, on the modules at hand
            m.enable_adapters(True)
    if model.peft_config[name].is_prompt_learning or any(not isinstance(m, BaseTunerLayer) or m.merged for m in layers):
        model.set_adapter(name, inference_mode=True)
    else:
        for m in layers:
            if isinstance(m, tuner.tuner_layer_cls) and not _settled(m, name):
                m.set_adapter(name, inference_mode=True)
        # what PEFT's set_adapter records beside the layers: the same public attributes, set as it sets them
        model.active_adapter = name
        tuner.active_adapter = name
    return changed and untrained(model, name, layers)


def _read(model):
    """(the adapter modules, whether ``enable_adapter_layers()`` is moot before ``set_adapter(name,
    inference_mode=True)``). It is when no adapter layer is off, no wrapper (modules_to_save, trainable tokens) is
    there, every module is in eval mode and each layer has BaseTunerLayer's own calls: on the tested releases its
    ``enable_adapters(True)`` then only re-sets its active adapters' requires_grad (set_adapter sets them all
    again) and their train mode (PEFT 0.22: to the layer's, which is eval already)."""
    layers, moot = [], True
    for m in model.modules():
        moot = moot and not m.training
        if isinstance(m, _ADAPTER_MODULES):
            layers.append(m)
            moot = moot and isinstance(m, BaseTunerLayer) and not m.disable_adapters and _own_calls(type(m))
    return layers, moot


def _own_calls(cls) -> bool:
    """True when the layer class keeps BaseTunerLayer's own ``enable_adapters`` and ``set_adapter``."""
    return cls.enable_adapters is BaseTunerLayer.enable_adapters and cls.set_adapter is BaseTunerLayer.set_adapter


def _runs_other(layers, name: str) -> bool:
    """True when a layer is switched off or runs other adapters than ``name`` alone."""
    return any(m.disable_adapters or (isinstance(m, BaseTunerLayer) and m.active_adapters != [name]) for m in layers)


def _settled(layer, name: str) -> bool:
    """True when ``layer`` runs only ``name`` and no adapter weight in it trains: ``set_adapter(name,
    inference_mode=True)`` would change nothing in it."""
    if layer.active_adapter != [name]:
        return False
    for attr in layer.adapter_layer_names:
        for part in getattr(layer, attr).values():
            weights = (part,) if isinstance(part, torch.Tensor) else part.parameters()
            if any(w.requires_grad for w in weights):
                return False
    return True


def active_adapter(model):
    """The adapter that runs now: a name, a list when several run together, or "base" when none does.

    "base" also when the adapter layers are switched off, even partly (``switch(model, "base")``, PEFT's
    ``disable_adapter()`` or ``disable_adapter_layers()``).
    """
    if not isinstance(model, PeftModel) or adapters_disabled(model):
        return BASE
    active = [a for a in model.active_adapters if a in model.peft_config]
    return BASE if not active else active[0] if len(active) == 1 else active


class SwitchState:
    """What decides which adapter runs and what trains, read through PEFT's and torch's public attributes.

    ``SwitchState(model)`` records it; ``.restore(model)`` puts it back with PEFT's public methods (each layer's
    own where layers disagree, as after a partial disable or a deletion), then each parameter's ``requires_grad``
    and each module's train/eval mode (PEFT 0.22's ``set_adapter`` also sets the adapters' modules' mode).
    """

    def __init__(self, model):
        self.top = model.active_adapter  # PeftModel's own name (its set_adapter sets it)
        self.tuner = _copy(model.base_model.active_adapter)  # the tuner's (a list after set_adapter([...]))
        self.modules = [(m, _copy(m.active_adapter), m.disable_adapters) for m in _adapter_modules(model)]
        self.off = any(off for _, _, off in self.modules)
        self.put_back = recorded(model, grads=True)  # each parameter's requires_grad, each module's mode

    def restore(self, model) -> None:
        loaded = model.peft_config
        if isinstance(self.top, str) and self.top in loaded and model.active_adapter != self.top:
            model.set_adapter(self.top, inference_mode=True)
        tuner = [self.tuner] if isinstance(self.tuner, str) else self.tuner
        if tuner and all(n in loaded for n in tuner) and model.base_model.active_adapter != self.tuner:
            model.base_model.set_adapter(_copy(self.tuner), inference_mode=True)
        for m, active, off in self.modules:  # each layer as it was, even a partly disabled model
            names = [active] if isinstance(active, str) else active
            if m.active_adapter != active and all(n in loaded for n in names):
                m.set_adapter(_copy(active), inference_mode=True)
            if m.disable_adapters != off:
                m.enable_adapters(not off)
        self.put_back()


def _copy(active):
    return active if isinstance(active, str) else list(active)


@contextmanager
def temporary_switch(model, name):
    """``with temporary_switch(model, name):`` runs ``name`` (as ``switch`` does) inside the block only.

    On leaving (also on an error) the model is put back exactly as it was: the active adapter(s), switched-off
    layers (``"base"``, ``disable_adapter()``) and which weights are trainable. ``name=None`` changes nothing.
    A merged adapter is unmerged by PEFT on the way in (with its warning) and stays unmerged.
    """
    if name is None:
        yield
        return
    if not isinstance(model, PeftModel):
        if name == BASE or name == [BASE]:
            yield
            return
        raise _no_adapters(name)
    _targets(model, name)  # refuse bad names before anything changes
    saved = SwitchState(model)
    try:
        switch(model, name)
        yield
    finally:
        with warnings.catch_warnings():  # going back is not a new choice: no "untrained adapter" warning again
            warnings.simplefilter("ignore")
            saved.restore(model)


def warn_zero(name: str, stacklevel: int) -> None:
    warnings.warn(f"Adapter {name!r} has all lora_B weights equal to zero, so it will not change the "
                  "model: switching to it gives the same answers as the base. It was never trained (or "
                  "was created with add_adapter); train it, or load the trained folder.", UntrainedAdapterWarning,
                  stacklevel=stacklevel)


def untrained(model, name: str, layers=None) -> bool:
    """True when LoRA adapter ``name`` changes nothing: it has lora_B weights (or lora_embedding_B) and every one
    of them, biases included, is zero. Stops at the first non-zero tensor (for a trained adapter, the first).

    ``layers``: the model's adapter layers when the caller has them already (saves a walk).
    """
    found = False
    for m in (_adapter_modules(model) if layers is None else layers):
        b, emb = getattr(m, "lora_B", None), getattr(m, "lora_embedding_B", None)
        tensors = [*(b[name].parameters() if b is not None and name in b else ()),
                   *((emb[name],) if emb is not None and name in emb else ())]
        for t in tensors:
            if t.any():
                return False
            found = True
    return found
