"""Adapters on one base: load by name (checked against the base first) and list them.

Switching lives in :mod:`lora_helpers.switching` (``switch`` and ``active_adapter`` are re-exported here).
``"base"`` is the name of "no adapter": ``switch(model, "base")`` runs the plain base model.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping

import torch
from peft import LoraConfig, PeftModel
from peft.functional import delete_adapter
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils.other import AuxiliaryTrainingWrapper, get_pattern_key

from . import tables
from .errors import AdapterError, AdapterFileError, BaseMismatchError
from .names import BASE, check_name, require_new
from .storage import AdapterFiles, inspect_adapter, resolve_adapter
from .switching import SwitchState, active_adapter, switch, untrained, warn_zero

__all__ = ["active_adapter", "check_compatible", "list_adapters", "load_adapters", "switch"]

_LORA_KEY = re.compile(r"^(.+?)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")
_TOKENS_KEY = ".token_adapter.trainable_tokens_delta"  # trainable_token_indices: the new rows, not the base's
_QUANT_TAGS = ("-bnb-4bit", "-bnb-8bit", "-4bit", "-8bit", "-gguf", "-awq", "-gptq", "-fp16", "-bf16")
_PREFIX = "base_model.model."


def _base_name(model) -> str | None:
    return getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)


def _base_key(name: str) -> str:
    key = str(name).rstrip("/").split("/")[-1].lower()
    for tag in _QUANT_TAGS:
        key = key.removesuffix(tag)
    return key


def _in_out(module):
    """(in, out) features of a layer LoRA can wrap, from torch's own attributes; (None, None) when unknown."""
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        return module.in_channels, module.out_channels
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:  # GPT-2's: (in, out)
        return tuple(module.weight.shape)
    return getattr(module, "in_features", None), getattr(module, "out_features", None)  # Linear, bnb, GPTQ...


def _expected(module, kind, key, shape):
    """The shape ``key`` must have to fit ``module``, or None when it cannot be told."""
    inner = module.get_base_layer() if hasattr(module, "get_base_layer") else getattr(module, "original_module", module)
    if kind is None:
        param = getattr(inner, key.rsplit(".", 1)[-1], None)
        return tuple(param.shape) if param is not None and hasattr(param, "shape") else None
    if kind == "tokens":  # one new row per trainable token index
        weight = getattr(inner, "weight", None)
        return (shape[0], weight.shape[1]) if weight is not None and weight.dim() == 2 else None
    in_f, out_f = _in_out(inner)
    if in_f is None or (kind.endswith(("A", "B")) and len(shape) != 2):
        return None
    if kind in ("lora_A", "lora_embedding_A"):
        return (shape[0], in_f)
    if kind == "lora_magnitude_vector" or key.endswith(".bias"):
        return (out_f,)
    return (out_f, shape[1])


def _split_key(key: str) -> tuple[str, str | None]:
    """(module path, LoRA part / "tokens" / None for a plain module weight) of a tensor name in an adapter file."""
    bare = key.removeprefix(_PREFIX)
    m = _LORA_KEY.match(bare)
    if m:
        return m.group(1), m.group(2)
    if bare.endswith(_TOKENS_KEY):
        return bare[: -len(_TOKENS_KEY)], "tokens"
    return bare.rsplit(".", 1)[0], None


def check_compatible(model, files: AdapterFiles, name: str = "adapter", check_base: bool = True) -> None:
    """Raise BaseMismatchError unless the adapter in ``files`` fits ``model`` (names, modules, shapes)."""
    base = model.base_model.model if isinstance(model, PeftModel) else model
    modules = _plain_modules(base)
    theirs, ours = files.config.get("base_model_name_or_path"), _base_name(base)
    bases = f"adapter {name!r} was trained on {theirs or 'an unnamed base'!r}, this model is {ours or 'unnamed'!r}"
    fix = f"Load it on its own base, or retrain it on this one (folder: '{files.folder}')."
    targets = files.config.get("target_modules")
    if isinstance(targets, list):
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
        if missing:
            raise BaseMismatchError(f"{bases}: its target module(s) {missing} do not exist in this model. {fix}")
    for key, shape in files.shapes.items():
        path, kind = _split_key(key)
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


def _plain_modules(base) -> dict:
    """{name: module} as the base model names them: a PEFT layer or wrapper stands for the module it wraps, and
    what PEFT keeps inside it (base_layer, lora_A.<adapter>, modules_to_save.<adapter>...) is left out."""
    found, inside = {}, None
    for path, m in base.named_modules():
        if inside is not None and path.startswith(inside):
            continue
        found[path] = m
        inside = f"{path}." if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)) else None
    return found


_TAILS = {"lora_A": ("weight",), "lora_B": ("weight", "bias"), "lora_embedding_A": ("",),
          "lora_embedding_B": ("",), "lora_magnitude_vector": ("",)}  # what follows each LoRA part in a saved key
_INTERNAL = ("base_layer", "modules_to_save", "original_module", "token_adapter")  # PEFT's in-memory containers


def _shown(keys, n: int = 5) -> str:
    return ", ".join(f"'{k}'" for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_keys(files: AdapterFiles, name: str, loaded=()) -> None:
    """Refuse tensor names that carry an adapter name or one of PEFT's in-memory containers.

    PEFT puts the adapter name into saved keys on loading; a key that already holds one ('...lora_A.coding.weight')
    or a container ('lm_head.modules_to_save.coding.weight') is loaded as it is named: into another adapter.
    """
    bad, named = [], set()
    for key in files.shapes:
        bare = key.removeprefix(_PREFIX)
        path, kind = _split_key(key)
        tail = bare[len(path) + len(kind) + 2:] if kind in _TAILS else ""
        if kind in _TAILS and tail not in _TAILS[kind]:
            named.add(tail.split(".")[0])
        elif not any(p in _INTERNAL or p.startswith("lora_") for p in path.split(".")):
            continue
        named.update(p for p in bare.split(".") if p in loaded)
        bad.append(key)
    if not bad:
        return
    what = ("adapter(s) " + ", ".join(f"{n!r}" + (" (loaded on this model)" if n in loaded else "")
                                      for n in sorted(named))) if named else "PEFT's in-memory containers"
    raise AdapterFileError(
        f"Adapter {name!r} ('{files.weights}'): tensor(s) {_shown(bad)} name {what}. PEFT loads such a tensor "
        f"as it is named, so it would overwrite what that name holds in the model instead of loading into "
        f"{name!r}. Adapter files name no adapter (keys like '...q_proj.lora_A.weight'); save the adapter "
        "again with save_pretrained or lh.save_adapter.")


def _peft_config(files: AdapterFiles, name: str) -> LoraConfig:
    try:
        return LoraConfig.from_pretrained(str(files.folder))
    except (TypeError, ValueError) as e:
        raise AdapterFileError(f"Adapter {name!r}: '{files.folder}/adapter_config.json' is not a LoRA config PEFT "
                               f"accepts ({type(e).__name__}: {e}). Save the adapter again.") from e


def check_agrees(model, files: AdapterFiles, name: str) -> None:
    """Raise AdapterFileError unless the tensors are the ones adapter_config.json asks PEFT to create: one
    lora_A/lora_B pair (DoRA magnitudes, LoRA biases) for each module it targets in ``model``, of its rank, and
    none for modules it does not target. Otherwise PEFT loads it partly, with at most a warning.
    """
    cfg = _peft_config(files, name)
    base = model.base_model.model if isinstance(model, PeftModel) else model
    modules = _plain_modules(base)
    have = {key.removeprefix(_PREFIX): shape for key, shape in files.shapes.items()
            if _split_key(key)[1] not in (None, "tokens")}
    where = f"Adapter {name!r} ('{files.folder}')"
    fix = "Save the adapter again with save_pretrained (or lh.save_adapter), or fix adapter_config.json to match."
    if isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == "all-linear" or (
            cfg.target_modules is None or cfg.target_parameters or cfg.layer_replication):
        return  # PEFT expands these itself from the model; no key-by-key expectation to compare with
    want = {}
    for path, m in modules.items():
        if not path or not check_target_module_exists(cfg, path):
            continue
        inner = m.get_base_layer() if isinstance(m, BaseTunerLayer) else m
        r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), path), cfg.r)
        if isinstance(inner, torch.nn.Embedding):
            want.update({f"{path}.lora_embedding_A": (r, 0), f"{path}.lora_embedding_B": (r, 1)})
        else:
            want.update({f"{path}.lora_A.weight": (r, 0), f"{path}.lora_B.weight": (r, 1)})
            if cfg.lora_bias:
                want[f"{path}.lora_B.bias"] = None
        if cfg.use_dora:
            want[f"{path}.lora_magnitude_vector"] = None
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    dora = " (use_dora is true: each targeted module also needs its lora_magnitude_vector)" if any(
        k.endswith("lora_magnitude_vector") for k in missing) else ""
    if missing:
        raise AdapterFileError(f"{where}: adapter_config.json targets modules the weights file has no tensors for: "
                               f"{_shown(missing)} missing{dora}. PEFT would leave them as freshly initialised "
                               f"LoRA weights. {fix}")
    if extra:
        why = ("DoRA magnitudes, but adapter_config.json has use_dora false" if all(
            k.endswith("lora_magnitude_vector") for k in extra) else
            "modules adapter_config.json does not target (target_modules, exclude_modules, layers_to_transform)")
        raise AdapterFileError(f"{where}: the weights file has tensor(s) {_shown(extra)} for {why}; PEFT would "
                               f"ignore them. {fix}")
    for key, rank in want.items():
        if rank is not None and len(have[key]) > rank[1] and have[key][rank[1]] != rank[0]:
            raise AdapterFileError(
                f"{where}: tensor '{key}' has rank {have[key][rank[1]]}, but adapter_config.json gives its module "
                f"rank {rank[0]} (r={cfg.r}{f', rank_pattern={cfg.rank_pattern}' if cfg.rank_pattern else ''}). "
                f"{fix}")


def base_weight_keys(files: AdapterFiles) -> list[str]:
    """Tensors in the adapter file that are not adapter weights: loading them would overwrite the shared base.

    Adapter weights are LoRA's own (lora_A/B, embeddings, DoRA magnitudes), copies of the modules that
    adapter_config.json lists in ``modules_to_save`` (matched as PEFT matches them: a module name ending with
    the entry) and, with ``trainable_token_indices``, the new token rows.
    """
    keep = files.config.get("modules_to_save") or []
    tokens = bool(files.config.get("trainable_token_indices"))
    found = []
    for key in files.shapes:
        path, kind = _split_key(key)
        if kind == "tokens" and tokens or kind not in (None, "tokens"):
            continue
        parts = path.split(".")
        if kind is None and any(".".join(parts[:i]).endswith(t) for t in keep for i in range(1, len(parts) + 1)):
            continue
        found.append(key)
    return found


def _refuse_base_weights(name: str, files: AdapterFiles, keys: list[str]) -> None:
    shown = ", ".join(f"'{k}'" for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    raise AdapterFileError(
        f"Adapter {name!r} ('{files.weights}') also carries tensor(s) that are not adapter weights: {shown}. "
        "Loaded, they would overwrite the shared base model for every adapter. Expected only LoRA weights and "
        "the modules its adapter_config.json lists in modules_to_save. Save the adapter again without them, "
        "or pass allow_base_weights=True if you mean to change the base model itself.")


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
            self.backups = {n: (self.cfgs[n], _weights(model, n)) for n in replaced}  # PEFT drops, we keep
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
                    fresh = _weights(p, n)
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
        foreign = base_weight_keys(files)
        if foreign and not allow_base_weights:
            _refuse_base_weights(name, files, foreign)
        overwritten += [k.removeprefix(_PREFIX) for k in foreign]
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


def _weights(model, name: str | None = None) -> dict:
    """{adapter: {tensor name: tensor}} as the model holds them (or one adapter's dict when ``name`` is given).

    Read from each PEFT layer's ``adapter_layer_names``, in one walk. Not ``get_peft_model_state_dict``: in PEFT
    0.21 the trainable-tokens wrapper breaks it for every adapter without trainable tokens beside one with them.
    """
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
    held = _weights(model)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for name, cfg in model.peft_config.items():
        weights = held.get(name, {})
        targets = getattr(cfg, "target_modules", None)
        table.append(dict(
            name=name, active=name in running, type=_kind(cfg),
            base=getattr(cfg, "base_model_name_or_path", None), rank=getattr(cfg, "r", None),
            alpha=getattr(cfg, "lora_alpha", getattr(cfg, "alpha", None)),
            target_modules=",".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else targets,
            size_bytes=sum(t.numel() * t.element_size() for t in weights.values()),
            sha256=_fingerprint(weights),
            note="lora_B = 0: адаптер ничего не меняет" if untrained(model, name, layers) else ""))
    return table
