"""Adapters on one base: load by name (each file checked first, :mod:`lora_helpers.checks`) and list them.

Switching lives in :mod:`lora_helpers.switching` (``switch`` and ``active_adapter`` are re-exported here).
``"base"`` is the name of "no adapter": ``switch(model, "base")`` runs the plain base model.
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping

import torch
from peft import PeftModel
from peft.functional import delete_adapter
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from . import tables
from .checks import (PREFIX, base_weight_keys, check_agrees, check_compatible, check_finite, check_keys,
                     refuse_base_weights)
from .errors import AdapterError, AdapterFileError
from .names import BASE, check_name, require_new
from .storage import adapter_weights, inspect_adapter, resolve_adapter, tensor_bytes
from .switching import SwitchState, active_adapter, switch, untrained, warn_zero

__all__ = ["active_adapter", "check_compatible", "list_adapters", "load_adapters", "switch"]

def _layer_names(model) -> set[str]:
    """The adapter names PEFT's layers hold entries for (read from their public containers' keys)."""
    found = set()
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            for attr in (*m.adapter_layer_names, *m.other_param_names):
                held = getattr(m, attr, None)
                found.update(held.keys() if hasattr(held, "keys") else ())
    return found


class _Snapshot:
    """Enough of a model's state to undo a failed load exactly (PEFT's public methods and plain torch calls)."""

    def __init__(self, model, replaced, overwritten):
        self.peft = model if isinstance(model, PeftModel) else None
        self.base = model.base_model.model if self.peft else model
        self.modules = list(self.base.modules())  # strong references keep the ids unique
        self.ids = {id(m) for m in self.modules}
        params = dict(self.base.named_parameters())
        self.grads = {n: p.requires_grad for n, p in params.items()}
        self.training = {n: m.training for n, m in self.base.named_modules()}
        self.had_cfg = hasattr(self.base, "peft_config")
        self.tp = getattr(getattr(self.base, "config", None), "pretraining_tp", None)
        # base tensors an opted-in file will overwrite
        self.tensors = {k: params[k].detach().clone() for k in overwritten if k in params}
        if self.peft is not None:
            self.cfgs = dict(model.peft_config)
            self.switch = SwitchState(model)
            self.backups = {n: (self.cfgs[n], adapter_weights(model, n)) for n in replaced}  # PEFT drops, we keep
            self.orphans = _layer_names(model) - set(self.cfgs)

    def restore(self):
        p, base = self.peft, self.base
        if p is not None:
            for n, c in list(p.peft_config.items()):
                if self.cfgs.get(n) is not c:
                    p.delete_adapter(n)
            # a failed load_adapter drops its config but keeps what it put into the layers: PEFT's own
            # layer-level deletion removes that (names the layers held without a config before stay)
            for n in _layer_names(p) - set(p.peft_config) - self.orphans:
                delete_adapter(p.base_model.model, n, prefix=p.base_model.prefix,
                               layer_cls=p.base_model.tuner_layer_cls)
        for parent in list(base.modules()):  # unwrap layers and wrappers injected since the snapshot
            for cname, child in list(parent.named_children()):
                if id(child) in self.ids:
                    continue
                if isinstance(child, BaseTunerLayer):
                    setattr(parent, cname, child.get_base_layer())
                elif isinstance(child, AuxiliaryTrainingWrapper):
                    setattr(parent, cname, child.original_module)
        if p is None:
            if not self.had_cfg and hasattr(base, "peft_config"):
                del base.peft_config
        else:
            for n, (cfg, saved) in self.backups.items():
                if n not in p.peft_config:
                    if not p.base_model.active_adapters:
                        # the only adapter was replaced: PEFT cannot add into a model with no active adapter
                        # while modules_to_save / trainable-token wrappers remain, so name it active first
                        p.base_model.set_adapter(n, inference_mode=True)
                    p.add_adapter(n, cfg)
                    fresh = adapter_weights(p, n)
                    with torch.no_grad():
                        for k, t in saved.items():
                            fresh[k].copy_(t)
            # PEFT has no call that orders adapters: re-added ones go last. Same keys and configs, back in their
            # order, in place (the base model holds the same dict as p.peft_config)
            order = {k: p.peft_config[k] for k in self.cfgs}
            p.peft_config.clear()
            p.peft_config.update(order)
            self.switch.restore(p)
        params = dict(base.named_parameters())
        for n, prm in params.items():
            prm.requires_grad_(self.grads.get(n, prm.requires_grad))
        for n, m in base.named_modules():
            m.training = self.training.get(n, m.training)
        with torch.no_grad():
            for k, saved in self.tensors.items():
                params[k].copy_(saved)
        if self.tp is not None:
            base.config.pretraining_tp = self.tp


def _kind(config) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type))


def _resume(model, before: list[str], off: bool, first_new: str) -> None:
    """After a load: what ran before runs again (as ``switch`` runs it), or the first new adapter when none did."""
    with warnings.catch_warnings():  # load_adapters warns about untrained new adapters itself, once
        warnings.simplefilter("ignore")
        switch(model, before if before and all(n in model.peft_config for n in before) else [first_new])
        if off:
            switch(model, BASE)


def load_adapters(model_or_base, adapters: Mapping, replace: bool = False, *, check_base: bool = True,
                  allow_pickle: bool = False, allow_base_weights: bool = False):
    """Load ``{name: source}`` into the model and return the PeftModel.

    A plain base gets the first adapter with ``PeftModel.from_pretrained`` and the rest with ``load_adapter``.
    Sources: a folder, "hub:owner/repo[/sub][@rev]", "drive:path", "session:name". Every adapter is checked
    against the base before any weights load; if anything fails, the model is left exactly as it was.
    Into a PeftModel, the same as PEFT's ``load_adapter`` for each, then what ran before runs again
    (``set_adapter(..., inference_mode=True)``, or "base" stays off); the first new adapter runs when none did.
    A file may carry only adapter weights: tensors of the base model itself are refused unless
    ``allow_base_weights=True`` (then they overwrite the base for every adapter).
    """
    if not isinstance(adapters, Mapping) or not adapters:
        raise AdapterError(f"load_adapters needs a dict {{name: source}}, got {type(adapters).__name__}. "
                           "Example: lh.load_adapters(model, {'json': 'session:lora_json'}) or lh.DEMO_ADAPTERS.")
    model = model_or_base
    loaded = list(model.peft_config) if isinstance(model, PeftModel) else []
    kinds = sorted({_kind(c) for c in model.peft_config.values()}) if loaded else []
    if kinds and kinds != ["LORA"]:
        raise AdapterError(f"This model holds {'/'.join(kinds)} adapters; PEFT cannot put LoRA adapters beside "
                           "them in one model. Load the LoRA adapters into a fresh base (lh.load_base()).")
    plans, overwritten = [], []
    for name, source in adapters.items():
        if replace:
            check_name(name)
        else:
            require_new(model, name, fix="Pick another name, or pass replace=True to load the new one over it.")
        files = inspect_adapter(resolve_adapter(source), allow_pickle=allow_pickle)
        check_keys(files, name, loaded)
        check_compatible(model, files, name, check_base)
        check_agrees(model, files, name)
        check_finite(files, name)
        foreign = base_weight_keys(files)
        if foreign and not allow_base_weights:
            refuse_base_weights(name, files, foreign)
        overwritten += [k.removeprefix(PREFIX) for k in foreign]
        plans.append((name, files))
    snap = _Snapshot(model, [n for n, _ in plans if n in loaded], overwritten)
    was_peft = isinstance(model, PeftModel)  # (PEFT keeps the wrapper when every adapter was deleted)
    before = list(model.base_model.active_adapters) if was_peft else []
    off = was_peft and snap.switch.off  # recorded by the snapshot just now
    try:
        for name, files in plans:
            if not isinstance(model, PeftModel):
                model = PeftModel.from_pretrained(model, str(files.folder), adapter_name=name, is_trainable=False)
            else:
                if name in model.peft_config:
                    model.delete_adapter(name)
                model.load_adapter(str(files.folder), adapter_name=name, is_trainable=False)
        if was_peft:
            _resume(model, before, off, plans[0][0])
    except BaseException as e:  # Ctrl-C included: never leave a half-loaded adapter behind
        snap.restore()
        if isinstance(e, AdapterError) or not isinstance(e, Exception):
            raise
        raise AdapterFileError(f"Loading adapter {name!r} from '{files.folder}' failed inside PEFT "
                               f"({type(e).__name__}: {e}). The model was left as it was; check that the folder "
                               "holds a complete adapter saved by PEFT.") from e
    for name, _ in plans:
        if untrained(model, name):
            warn_zero(name, stacklevel=3)
    return model


# ---------------------------------------------------------------- list_adapters: what the model itself holds

UNKNOWN = "неизвестно"


def _fingerprint(weights: dict) -> str | None:
    """sha256 of an adapter's tensors as the model holds them (names, dtypes, shapes, bytes), or None."""
    h = hashlib.sha256()
    try:
        for key in sorted(weights):
            t = weights[key].detach().to("cpu").contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    except (RuntimeError, TypeError, ValueError, NotImplementedError):  # meta or packed quantized tensors
        return None
    return h.hexdigest()


SHOWN_TYPES = {"LORA": "LoRA", "LOHA": "LoHa", "LOKR": "LoKr"}  # PEFT's enum values as papers write them


class AdapterTable(list):
    """One dict per loaded adapter; prints as a table (text or HTML in a notebook), in Russian."""
    columns = {"name": "имя", "active": "активен", "type": "тип", "base": "база", "rank": "ранг", "alpha": "alpha",
               "target_modules": "целевые модули", "size_bytes": "размер весов", "sha256": "sha256 весов",
               "note": "примечание"}
    running = BASE

    def _shown(self) -> list[dict]:
        """The rows as a reader sees them ("—" where a value does not apply, e.g. an IA3 adapter's rank)."""
        return [{**r, "active": "да" if r["active"] else "", "base": r["base"] or UNKNOWN,
                 "type": SHOWN_TYPES.get(r["type"], r["type"]),
                 "size_bytes": f"{r['size_bytes'] / 2**20:.2f} МиБ", "sha256": (r["sha256"] or UNKNOWN)[:12]}
                for r in self]

    def __repr__(self):
        if not self:
            return "Адаптеры не загружены: работает одна базовая модель."
        return f"{tables.text(self._shown(), self.columns)}\nработает: {self.running}"

    def _repr_html_(self):
        import html
        if not self:
            return f"<p>{html.escape(repr(self))}</p>"
        return (f"{tables.html(self._shown(), self.columns)}"
                f"<p>работает: <b>{html.escape(str(self.running))}</b></p>")


def list_adapters(model) -> AdapterTable:
    """Describe every loaded adapter from what the model holds now: type, base, rank, alpha, targets, weights.

    ``size_bytes`` and ``sha256`` are of the adapter's tensors in memory (as PEFT would save them), so they
    follow any change made through PEFT; where the model cannot tell (no base name recorded), it says so.
    """
    table = AdapterTable()
    if not isinstance(model, PeftModel):
        return table
    table.running = active_adapter(model)
    running = table.running if isinstance(table.running, list) else [table.running]
    held = adapter_weights(model)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for name, cfg in model.peft_config.items():
        weights = held.get(name, {})
        targets = getattr(cfg, "target_modules", None)
        table.append(dict(
            name=name, active=name in running, type=_kind(cfg),
            base=getattr(cfg, "base_model_name_or_path", None), rank=getattr(cfg, "r", None),
            alpha=getattr(cfg, "lora_alpha", getattr(cfg, "alpha", None)),
            target_modules=",".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else targets,
            size_bytes=tensor_bytes(weights),
            sha256=_fingerprint(weights),
            note="lora_B = 0: адаптер ничего не меняет" if untrained(model, name, layers) else ""))
    return table
