"""Adapters on one base: load by name (checked against the base first), list them, switch fast.

``"base"`` is the name of "no adapter": ``switch(model, "base")`` runs the plain base model.
"""
from __future__ import annotations

import hashlib
import re
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path

from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features
from peft.utils.other import AuxiliaryTrainingWrapper

from .errors import AdapterError, AdapterExistsError, AdapterFileError, AdapterNotFoundError, BaseMismatchError
from .names import BASE, check_name
from .storage import AdapterFiles, inspect_adapter, resolve_adapter

_LORA_KEY = re.compile(r"^(.+?)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")
_QUANT_TAGS = ("-bnb-4bit", "-bnb-8bit", "-4bit", "-8bit", "-gguf", "-awq", "-gptq", "-fp16", "-bf16")
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()    # model -> (configs, layers, aux)
_SOURCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {name: folder}


def _state(model):
    """(configs, tuner layers, auxiliary wrappers) of a PeftModel, cached until an adapter is added or removed."""
    cfgs = model.peft_config
    c = _CACHE.get(model)
    if c is None or len(c[0]) != len(cfgs) or any(c[0].get(k) is not v for k, v in cfgs.items()):
        mods = list(model.modules())
        c = _CACHE[model] = (dict(cfgs), [m for m in mods if isinstance(m, BaseTunerLayer)],
                             [m for m in mods if isinstance(m, AuxiliaryTrainingWrapper)])
    return c


def _apply(model, name) -> None:
    """Make ``name`` (or "base", or a list of names) run, writing straight into each cached LoRA layer."""
    _, layers, aux = _state(model)
    if name == BASE:
        for m in layers:
            m.__dict__["_disable_adapters"] = True
        for m in aux:
            m.enable_adapters(False)
        model.__dict__["_adapters_disabled"] = True
        return
    names = [name] if isinstance(name, str) else list(name)
    if len(names) > 1 or any(m.__dict__.get("merged_adapters") for m in layers):
        model.base_model.set_adapter(name, inference_mode=True)  # PEFT's path: several, or unmerge first
    for m in layers:
        d = m.__dict__
        d["_active_adapter"] = list(names)
        d["_disable_adapters"] = False
    for m in aux:
        chosen = m.check_set_adapter(name)
        m.set_adapter(chosen if chosen in m._adapters else [], inference_mode=True)
        m.enable_adapters(True)
    if isinstance(name, str):
        model.__dict__["active_adapter"] = model.base_model.__dict__["active_adapter"] = name
    model.__dict__["_adapters_disabled"] = False


def switch(model, name) -> None:
    """Run adapter ``name`` from now on; ``"base"`` runs the base without adapters.

    Same active adapter, layer state and logits as PEFT's ``set_adapter(name)``, without walking every
    module. Adapter weights stay frozen (like ``set_adapter(name, inference_mode=True)``): to train, use
    PEFT's ``set_adapter``. A list of names (as ``active_adapter`` may return) activates them together.
    """
    if not isinstance(model, PeftModel):
        if name == BASE:
            return
        raise AdapterNotFoundError(f"Cannot switch to {name!r}: the model has no adapters loaded. "
                                   "Load them first: model = lh.load_adapters(model, {name: source}).")
    names = [name] if isinstance(name, str) else list(name) if isinstance(name, (list, tuple)) else [None]
    unknown = [n for n in names if n != BASE and (not isinstance(n, str) or n not in model.peft_config)]
    if unknown or not names or (BASE in names and len(names) > 1):
        raise AdapterNotFoundError(f"No adapter named {name!r} is loaded; loaded: {', '.join(model.peft_config)} "
                                   "(or 'base' for none). Check the spelling or load it with lh.load_adapters.")
    _apply(model, name)
    if isinstance(name, str) and name != BASE and _loaded_zero(model, name):
        _warn_zero(name, stacklevel=3)


def active_adapter(model) -> str:
    """The adapter that runs now, or "base" when none does (a list if PEFT activated several)."""
    if not isinstance(model, PeftModel) or _disabled(model):
        return BASE
    active = model.base_model.active_adapter  # PEFT's own active_adapters reads it there too
    active = [a for a in ([active] if isinstance(active, str) else active) if a in model.peft_config]
    return BASE if not active else active[0] if len(active) == 1 else active


def _disabled(model) -> bool:
    """True when the adapter layers are switched off (switch "base", PEFT's disable_adapter...)."""
    layers = _state(model)[1]
    return bool(model.__dict__.get("_adapters_disabled") or (layers and layers[0].disable_adapters))


def _base_name(model) -> str | None:
    return getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)


def _base_key(name: str) -> str:
    key = str(name).rstrip("/").split("/")[-1].lower()
    for tag in _QUANT_TAGS:
        key = key.removesuffix(tag)
    return key


def _in_out(module):
    try:
        in_f, out_f = _get_in_out_features(module)
    except Exception:  # layer types PEFT does not know
        in_f = out_f = None
    return (in_f or getattr(module, "in_features", None), out_f or getattr(module, "out_features", None))


def _expected(module, kind, key, shape):
    """The shape ``key`` must have to fit ``module``, or None when it cannot be told."""
    inner = module.get_base_layer() if hasattr(module, "get_base_layer") else getattr(module, "original_module", module)
    if kind is None:
        param = getattr(inner, key.rsplit(".", 1)[-1], None)
        return tuple(param.shape) if param is not None and hasattr(param, "shape") else None
    in_f, out_f = _in_out(inner)
    if in_f is None or (kind.endswith(("A", "B")) and len(shape) != 2):
        return None
    if kind in ("lora_A", "lora_embedding_A"):
        return (shape[0], in_f)
    if kind == "lora_magnitude_vector" or key.endswith(".bias"):
        return (out_f,)
    return (out_f, shape[1])


def check_compatible(model, files: AdapterFiles, name: str = "adapter", check_base: bool = True) -> None:
    """Raise BaseMismatchError unless the adapter in ``files`` fits ``model`` (names, modules, shapes)."""
    base = model.base_model.model if isinstance(model, PeftModel) else model
    modules = dict(base.named_modules())
    theirs, ours = files.config.get("base_model_name_or_path"), _base_name(base)
    bases = f"adapter {name!r} was trained on {theirs or 'an unnamed base'!r}, this model is {ours or 'unnamed'!r}"
    fix = f"Load it on its own base, or retrain it on this one (folder: '{files.folder}')."
    targets = files.config.get("target_modules")
    if isinstance(targets, list):
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
        if missing:
            raise BaseMismatchError(f"{bases}: its target module(s) {missing} do not exist in this model. {fix}")
    for key, shape in files.shapes.items():
        bare = key.removeprefix("base_model.model.")
        m = _LORA_KEY.match(bare)
        path, kind = (m.group(1), m.group(2)) if m else (bare.rsplit(".", 1)[0], None)
        if path not in modules:
            raise BaseMismatchError(f"{bases}: tensor '{key}' targets module '{path}', which this model does "
                                    f"not have. {fix}")
        want = _expected(modules[path], kind, key, shape)
        if want is not None and tuple(want) != tuple(shape):
            raise BaseMismatchError(f"{bases}: tensor '{key}' has shape {list(shape)} but module '{path}' needs "
                                    f"{list(want)}. {fix}")
    if check_base and theirs and ours and _base_key(theirs) != _base_key(ours):
        raise BaseMismatchError(f"{bases}. The shapes fit, but weights tuned for another base make "
                                f"set_adapter change nothing useful. {fix} If both names are the same weights "
                                "(e.g. a quantized copy), pass check_base=False.")


def _warn_zero(name: str, stacklevel: int) -> None:
    warnings.warn(f"Adapter {name!r} has all lora_B weights equal to zero, so it will not change the "
                  "model: switching to it gives the same answers as the base. It was never trained (or "
                  "was created with add_adapter); train it, or load the trained folder.", stacklevel=stacklevel)


def _loaded_zero(model, name: str) -> bool:
    """True when every lora_B (and lora_embedding_B) of a loaded adapter is zero; usually the first decides (µs)."""
    def weights():
        for m in _state(model)[1]:
            if name in getattr(m, "lora_B", {}):
                yield m.lora_B[name].weight
            if name in getattr(m, "lora_embedding_B", {}):
                yield m.lora_embedding_B[name]
    ws = weights()
    first = next(ws, None)
    return first is not None and not first.any() and not any(w.any() for w in ws)


def _memory_bytes(model, name: str) -> int:
    """Bytes of an adapter's LoRA tensors in memory (for adapters not loaded from a file we know)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n)


class _Snapshot:
    """Enough of a model's state to undo a failed load exactly."""

    def __init__(self, model, replaced):
        self.peft = model if isinstance(model, PeftModel) else None
        self.base = model.base_model.model if self.peft else model
        self.modules = list(self.base.modules())  # strong references keep the ids unique
        self.ids = {id(m) for m in self.modules}
        self.grads = {n: p.requires_grad for n, p in self.base.named_parameters()}
        self.training = {n: m.training for n, m in self.base.named_modules()}
        self.had_cfg = "peft_config" in self.base.__dict__
        self.tp = getattr(getattr(self.base, "config", None), "pretraining_tp", None)
        self.active = active_adapter(model)
        self.off = self.peft is not None and _disabled(self.peft)
        if self.peft is not None:
            self.cfgs = dict(model.peft_config)
            self.top = (model.active_adapter, model.base_model.active_adapter, model._adapters_disabled)
            self.layers = [(m, m._active_adapter if isinstance(m._active_adapter, str) else list(m._active_adapter),
                            m._disable_adapters) for m in model.modules() if isinstance(m, BaseTunerLayer)]
            self.backups = {n: (self.cfgs[n], get_peft_model_state_dict(model, adapter_name=n)) for n in replaced}

    def _drop(self, name):
        p = self.peft
        try:
            p.delete_adapter(name)
        except Exception:
            pass
        p.peft_config.pop(name, None)
        for m in p.modules():
            if isinstance(m, BaseTunerLayer):
                for attr in (*m.adapter_layer_names, *m.other_param_names):
                    d = getattr(m, attr, None)
                    if hasattr(d, "keys") and name in d:
                        del d[name]

    def restore(self):
        p, base = self.peft, self.base
        if p is not None:
            for n, c in list(p.peft_config.items()):
                if self.cfgs.get(n) is not c:
                    self._drop(n)
        for parent in list(base.modules()):  # unwrap layers injected since the snapshot
            for cname, child in list(parent._modules.items()):
                if isinstance(child, BaseTunerLayer) and id(child) not in self.ids:
                    parent._modules[cname] = child.get_base_layer()
        if p is None:
            if not self.had_cfg:
                base.__dict__.pop("peft_config", None)
        else:
            for n, (cfg, sd) in self.backups.items():
                if n not in p.peft_config:
                    p.add_adapter(n, cfg)
                    set_peft_model_state_dict(p, sd, adapter_name=n)
            order = {k: p.peft_config[k] for k in self.cfgs}
            p.peft_config.clear()
            p.peft_config.update(order)
            for m, a, d in self.layers:
                m.__dict__["_active_adapter"], m.__dict__["_disable_adapters"] = a, d
            p.__dict__["active_adapter"], p.base_model.__dict__["active_adapter"] = self.top[:2]
            p.__dict__["_adapters_disabled"] = self.top[2]
        for n, prm in base.named_parameters():
            prm.requires_grad_(self.grads.get(n, prm.requires_grad))
        for n, m in base.named_modules():
            m.training = self.training.get(n, m.training)
        if self.tp is not None:
            base.config.pretraining_tp = self.tp


def load_adapters(model_or_base, adapters: Mapping, replace: bool = False, *, check_base: bool = True,
                  allow_pickle: bool = False):
    """Load ``{name: source}`` into the model and return the PeftModel.

    A plain base gets the first adapter with ``PeftModel.from_pretrained`` and the rest with ``load_adapter``.
    Sources: a folder, "hub:owner/repo[/sub][@rev]", "drive:path", "session:name". Every adapter is checked
    against the base before any weights load; if anything fails, the model is left exactly as it was.
    """
    if not isinstance(adapters, Mapping) or not adapters:
        raise AdapterError(f"load_adapters needs a dict {{name: source}}, got {type(adapters).__name__}. "
                           "Example: lh.load_adapters(model, {'json': 'session:lora_json'}) or lh.DEMO_ADAPTERS.")
    model = model_or_base
    loaded = list(model.peft_config) if isinstance(model, PeftModel) else []
    plans = []
    for name, source in adapters.items():
        check_name(name)
        if name in loaded and not replace:
            raise AdapterExistsError(f"An adapter named {name!r} is already loaded (loaded: {', '.join(loaded)}). "
                                     "Pick another name, or pass replace=True to load the new one over it.")
        files = inspect_adapter(resolve_adapter(source), allow_pickle=allow_pickle)
        check_compatible(model, files, name, check_base)
        plans.append((name, files))
    snap = _Snapshot(model, [n for n, _ in plans if n in loaded])
    try:
        for name, files in plans:
            if not isinstance(model, PeftModel):
                model = PeftModel.from_pretrained(model, str(files.folder), adapter_name=name, is_trainable=False)
            else:
                if name in model.peft_config:
                    model.delete_adapter(name)
                model.load_adapter(str(files.folder), adapter_name=name, is_trainable=False)
    except BaseException as e:  # Ctrl-C included: never leave a half-loaded adapter behind
        snap.restore()
        _CACHE.pop(model, None)
        if isinstance(e, AdapterError) or not isinstance(e, Exception):
            raise
        raise AdapterFileError(f"Loading adapter {name!r} from '{files.folder}' failed inside PEFT "
                               f"({type(e).__name__}: {e}). The model was left as it was; check that the folder "
                               "holds a complete adapter saved by PEFT.") from e
    if isinstance(snap.active, list):  # several active (PEFT's base_model.set_adapter([...])): keep them
        model.base_model.set_adapter(snap.active, inference_mode=True)
    else:  # keep what ran before; the first new adapter runs when none did
        _apply(model, snap.active if snap.off or snap.active in model.peft_config else plans[0][0])
    _SOURCES.setdefault(model, {}).update({n: f.weights for n, f in plans})
    for name, _ in plans:
        if _loaded_zero(model, name):
            _warn_zero(name, stacklevel=3)
    return model


_SHA: dict = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA[key] = h.hexdigest()
    return _SHA[key]


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


class AdapterTable(list):
    """One dict per loaded adapter; prints as a table (text or HTML in a notebook)."""
    columns = ("name", "active", "base", "rank", "alpha", "target_modules", "size_bytes", "sha256", "note")
    headers = ("name", "active", "base", "rank", "alpha", "target modules", "size on disk", "sha256", "note")
    running = BASE

    def _cells(self):
        fmt = {"active": lambda v: "yes" if v else "", "size_bytes": _size, "sha256": lambda v: v or "-"}
        return [[fmt.get(c, str)(r[c]) for c in self.columns] for r in self]

    def __repr__(self):
        if not self:
            return "No adapters loaded: the base model runs alone."
        rows = [list(self.headers)] + self._cells()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines + [f"running: {self.running}"])

    def _repr_html_(self):
        import html
        if not self:
            return f"<p>{html.escape(repr(self))}</p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self._cells())
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<p>running: <b>{html.escape(str(self.running))}</b></p>")


def list_adapters(model) -> AdapterTable:
    """Describe every loaded adapter: name, base, rank, alpha, target modules, size, sha256, active."""
    table = AdapterTable()
    if not isinstance(model, PeftModel):
        return table
    table.running = active_adapter(model)
    cfgs, _, _ = _state(model)
    sources = _SOURCES.get(model, {})
    for name, cfg in cfgs.items():
        weights = sources.get(name)
        weights = weights if weights is not None and weights.is_file() else None
        targets = cfg.target_modules
        table.append(dict(
            name=name, active=table.running == name, base=cfg.base_model_name_or_path or "-",
            rank=cfg.r, alpha=cfg.lora_alpha,
            target_modules=",".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else str(targets),
            size_bytes=weights.stat().st_size if weights else _memory_bytes(model, name),
            sha256=_sha256(weights)[:12] if weights else None,
            note="lora_B = 0: no effect" if _loaded_zero(model, name) else ""))
    return table
