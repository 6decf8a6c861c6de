"""Merge one adapter into a plain transformers folder (verified), and combine adapters into a new one.

``merge_and_save`` never touches the live model: the merged weights are computed into a copy, so every
adapter stays loaded, unmerged and switchable ("merge is one mode forever: keep the raw adapters").
"""
from __future__ import annotations

import copy
import gc
import json
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import AdapterError, AdapterExistsError, AdapterNotFoundError, MergeError

REPORT_NAME = "merge_report.json"
PROBE = "Return the user as JSON: name Anna, city Kazan. Напиши функцию на Python, которая считает сумму."
# Default max |logits(merged) - logits(base + adapter)| by saved dtype: tight for fp32; for fp16/bf16 it
# allows their rounding (SmolLM2-135M: fp16 ~0.04-0.11, bf16 ~0.3-1.1) yet catches a missing adapter.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 0.25, torch.bfloat16: 2.0}
METHODS = ("linear", "ties", "dare_ties", "cat")


@dataclass
class MergeReport:
    """What ``merge_and_save`` did; saved as merge_report.json in the folder (``MergeReport.read(path)``)."""
    path: str
    adapter: str
    base: str
    dtype: str
    max_abs_diff: float | None  # max |logits(merged) - logits(base + adapter)| on the probe; None: not verified
    tolerance: float
    adapter_bytes: int
    merged_bytes: int
    seconds: float              # merge + save
    verify_seconds: float
    reloaded_from_quantized: bool

    @property
    def ratio(self) -> float:
        """How many times bigger the merged weights are than the adapter's."""
        return self.merged_bytes / max(self.adapter_bytes, 1)

    @classmethod
    def read(cls, folder) -> "MergeReport":
        return cls(**json.loads((Path(folder) / REPORT_NAME).read_text()))

    def summary(self) -> str:
        check = ("not verified" if self.max_abs_diff is None
                 else f"max |Δlogits| {self.max_abs_diff:.1e} (tolerance {self.tolerance:g})")
        return (f"Merged '{self.adapter}' into {self.path} ({self.dtype}): {_mb(self.merged_bytes)} vs adapter "
                f"{_mb(self.adapter_bytes)} (x{self.ratio:.0f}); {check}; {self.seconds:.1f} s")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def merge_and_save(model, name: str, out_dir, tokenizer=None, dtype=None, verify: bool = True,
                   overwrite: bool = False, tolerance: float | None = None, max_shard_size="2GB",
                   token: str | None = None) -> Path:
    """Merge adapter ``name`` into a copy of the base and save a plain transformers folder; return its Path.

    The live ``model`` keeps every adapter, unmerged, with the same active one. ``dtype``: of the saved
    weights (default: the base's; fp16/bf16 when the base is 4-bit). ``verify``: reload the folder with
    ``AutoModelForCausalLM`` (no PEFT) and compare its logits on a probe with the unmerged adapter; raise
    MergeError above ``tolerance``. An existing non-empty ``out_dir`` needs ``overwrite=True`` and is
    replaced only after a complete, verified save. The report is printed and saved in the folder:
    ``MergeReport.read(path)``. A 4-bit base is never merged into: the base is reloaded in fp16/bf16
    (``token`` for gated repos), the adapter copied onto it and merged there.
    """
    _check_adapter(model, name)
    out = Path(out_dir).expanduser()
    _check_target(out, overwrite)
    quantized = _is_quantized(model.get_base_model())
    dtype = _as_dtype(dtype) or (_half_dtype() if quantized else model.get_base_model().dtype)
    tolerance = TOLERANCE.get(dtype, 1e-1) if tolerance is None else float(tolerance)
    probe = _probe_ids(model, tokenizer)

    dest = out.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        start = time.perf_counter()
        if quantized:
            plain, state, ref = _merge_from_reload(model, name, dtype, probe if verify else None, token)
            ref_dtype, device = dtype, "cpu"
        else:
            ref = _adapter_logits(model, name, probe) if verify else None
            plain, state = _merge_live(model, name, dtype)
            ref_dtype, device = model.get_base_model().dtype, model.device
        _save(plain, state, tmp, dtype, max_shard_size)
        del plain, state
        gc.collect()
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        else:
            warnings.warn(f"No tokenizer given: {out} will hold no tokenizer files. Pass tokenizer=tok to save "
                          "one, or load the tokenizer of the base model next to it.", stacklevel=2)
        seconds = time.perf_counter() - start
        diff, vsec = _verify(tmp, probe, ref, device, ref_dtype) if verify else (None, 0.0)
        report = MergeReport(str(out), name, str(model.get_base_model().name_or_path), str(dtype).split(".")[-1],
                             diff, tolerance, _adapter_bytes(model, name),
                             sum(f.stat().st_size for f in tmp.glob("*.safetensors")), round(seconds, 3),
                             round(vsec, 3), quantized)
        if diff is not None and not diff <= tolerance:
            raise MergeError(f"The merged model does not match '{name}': max |Δlogits| = {diff:.3g} > tolerance "
                             f"{tolerance:g}. Nothing was written to {out}. If the dtype ({report.dtype}) explains "
                             "it, pass a larger tolerance=...; otherwise check that the adapter is not merged already.")
        (tmp / REPORT_NAME).write_text(json.dumps(asdict(report), indent=1))
        tmp.chmod(0o755)  # mkdtemp makes it private
        _replace(tmp, dest, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report.summary())
    return out


# ----------------------------------------------------------------------------- checks
def _loaded(model) -> list:
    return sorted(getattr(model, "peft_config", {}) or {})


def _check_adapter(model, name) -> None:
    if not hasattr(model, "get_base_model") or not _loaded(model):
        raise AdapterError(f"The model ({type(model).__name__}) has no adapters loaded, so there is nothing to "
                           "merge. Load them first: model = lh.load_adapters(model, {name: source}).")
    if name == "base":
        raise AdapterError("'base' means no adapter: there is nothing to merge. Give an adapter name "
                           f"({', '.join(_loaded(model))}).")
    if name not in model.peft_config:
        raise AdapterNotFoundError(f"No adapter named {name!r} is loaded; loaded: {', '.join(_loaded(model))}.")
    if not _is_lora(model.peft_config[name]):
        raise AdapterError(f"'{name}' is a {model.peft_config[name].peft_type} adapter; only LoRA adapters merge here.")
    if any(getattr(m, "merged", False) for m in _lora_layers(model.get_base_model()).values()):
        raise MergeError("The model has adapter weights merged in place (merge_adapter); merging another copy "
                         "on top would be wrong. Call model.unmerge_adapter() first.")


def _is_lora(cfg) -> bool:
    return str(getattr(cfg, "peft_type", "")).split(".")[-1] == "LORA"


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.resolve().name or out.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise AdapterError(f"out_dir={str(out)!r} is the current folder or above it; name a new folder, e.g. "
                           "'merged/json'.")
    if out.exists() and not out.is_dir():
        raise AdapterExistsError(f"{out} exists and is a file, not a folder. Choose another out_dir.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AdapterExistsError(f"{out} exists and is not empty. Pass overwrite=True to replace it (the old "
                                 "folder is kept until the new one is complete), or choose another out_dir.")


def _as_dtype(dtype):
    if isinstance(dtype, str):  # "float16", "torch.bfloat16"
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in TOLERANCE:
        return dtype
    raise AdapterError(f"dtype={dtype!r} is not supported; use torch.float32, torch.float16 or torch.bfloat16 "
                       "(or None for the base model's dtype).")


def _is_quantized(base) -> bool:
    """A bitsandbytes 4/8-bit base (merging into it would round the adapter away)."""
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
                or getattr(base, "quantization_method", None) is not None)


def _half_dtype():
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16


def _lora_layers(base) -> dict:
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer)}


# ----------------------------------------------------------------------------- merging
def _merge_live(model, name, dtype):
    """(model to save, its state dict): base + delta for each LoRA layer, computed into new tensors."""
    base, cfg = model.get_base_model(), model.peft_config[name]
    layers = {n: m for n, m in _lora_layers(base).items() if name in m.lora_A or name in m.lora_embedding_A}
    plain = all(name not in m.lora_variant and not m.lora_bias.get(name) for m in layers.values())
    if not plain or getattr(cfg, "modules_to_save", None) or getattr(cfg, "trainable_token_indices", None):
        merged = copy.deepcopy(model).merge_and_unload(adapter_names=[name])  # DoRA & co: let PEFT do it
        return merged.to(dtype), None
    prefixes = tuple(n + "." for n in _lora_layers(base))
    cast, state = {}, {}
    for key, t in base.state_dict().items():
        if key.startswith(prefixes):
            if ".base_layer." not in key:
                continue  # lora_A/lora_B/... of every adapter
            key = key.replace(".base_layer.", ".")
        if t.is_floating_point() and t.dtype != dtype:  # cast once per storage: tied weights stay tied
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            t = cast[ptr] if ptr in cast else cast.setdefault(ptr, t.to(dtype))
        state[key] = t
    with torch.no_grad():
        for n, layer in layers.items():
            w = layer.get_base_layer().weight
            state[f"{n}.weight"] = (w.float() + layer.get_delta_weight(name).float()).to(dtype)
    return base, state


def _merge_from_reload(model, name, dtype, probe, token):
    """4-bit base: reload it in ``dtype``, copy the adapter onto it, merge there. Returns (model, None, ref)."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    source = model.get_base_model().name_or_path
    print(f"The base is quantized (4/8-bit): merging into it would round the adapter away. Reloading {source} "
          f"in {str(dtype).split('.')[-1]} on the CPU (needs ~2 bytes per parameter of RAM), merging there.")
    float_base = _load_float_base(source, dtype, token)
    cfg = copy.deepcopy(model.peft_config[name])
    cfg.inference_mode = True
    twin = get_peft_model(float_base, cfg, adapter_name=name)
    weights = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    result = set_peft_model_state_dict(twin, weights, adapter_name=name)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise MergeError(f"Copying '{name}' onto the reloaded base left {len(missing)} LoRA tensors unset "
                         f"(e.g. {missing[0]}): the reloaded base {source!r} does not match the adapter.")
    twin.eval()
    ref = _adapter_logits(twin, name, probe) if probe is not None else None
    return twin.merge_and_unload(), None, ref


def _load_float_base(source, dtype, token=None):
    """The base model ``source`` (Hub id or folder) unquantized, in ``dtype``, on the CPU."""
    from transformers import AutoModelForCausalLM

    from .storage import find_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, token=find_token(token), device_map="cpu")
    if _is_quantized(model):  # a pre-quantized repository: dequantize the copy
        model = model.dequantize(dtype=dtype) or model
    return model


def _save(plain, state, folder: Path, dtype, max_shard_size) -> None:
    plain.save_pretrained(folder, state_dict=state, safe_serialization=True, max_shard_size=max_shard_size)
    cfg_file = folder / "config.json"  # the live base's dtype is written there; record the saved one
    cfg = json.loads(cfg_file.read_text())
    cfg["dtype"] = str(dtype).split(".")[-1]
    cfg.pop("quantization_config", None)
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``out``; an old ``out`` is renamed aside first and removed last."""
    _check_target(out, overwrite)  # again: something may have appeared while we worked
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}") if out.exists() else None
    if old:
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old:
            old.rename(out)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- verification
def _probe_ids(model, tokenizer) -> torch.Tensor:
    if tokenizer is not None:
        return tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :48]
    vocab = model.get_base_model().config.vocab_size
    return (torch.arange(1, 33) * 7919 % (vocab - 1) + 1).unsqueeze(0)


@torch.inference_mode()
def _adapter_logits(model, name, ids) -> torch.Tensor:
    """Logits of the unmerged adapter: a temporary switch, restored afterwards (eval mode meanwhile)."""
    from .generate import _using

    training = model.training
    model.eval()
    try:
        with _using(model, name):
            return model(input_ids=ids.to(model.device)).logits.float().cpu()
    finally:
        model.train(training)


@torch.inference_mode()
def _verify(folder: Path, ids, ref, device, dtype):
    """Reload ``folder`` with plain transformers at the reference's precision; (max |Δlogits|, seconds)."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    logits = merged(input_ids=ids.to(merged.device)).logits.float().cpu()
    del merged
    gc.collect()
    return float((logits - ref).abs().max()), time.perf_counter() - start


def _adapter_bytes(model, name) -> int:
    from peft import get_peft_model_state_dict
    weights = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    return sum(t.numel() * t.element_size() for t in weights.values())


# ----------------------------------------------------------------------------- combining
def combine_adapters(model, weights: dict, new_name: str, method: str = "linear", density: float | None = None):
    """Add adapter ``new_name`` = a weighted mix of loaded adapters ({name: weight}); returns ``model``.

    On PEFT's ``add_weighted_adapter``. "cat" is exact (Σ weight·ΔW, rank = sum of ranks); "linear" mixes the
    A and B matrices (same rank needed; an approximation); "ties"/"dare_ties" prune to ``density`` (0..1]
    and resolve sign conflicts ("dare_ties" is random: seed first). The active adapter does not change:
    ``lh.switch(model, new_name)`` to use it.
    """
    if not hasattr(model, "add_weighted_adapter") or not _loaded(model):
        raise AdapterError("combine_adapters needs a PeftModel with LoRA adapters loaded: "
                           "model = lh.load_adapters(model, {name: source}).")
    if not isinstance(weights, dict) or not weights:
        raise AdapterError(f"weights must be a non-empty dict {{adapter name: weight}}, got {weights!r}.")
    unknown = [n for n in weights if n not in model.peft_config]
    if unknown:
        raise AdapterNotFoundError(f"Adapter(s) {unknown} are not loaded; loaded: {', '.join(_loaded(model))}.")
    if not all(_is_lora(model.peft_config[n]) for n in weights):
        raise AdapterError("combine_adapters combines LoRA adapters only; "
                           f"got {[str(model.peft_config[n].peft_type) for n in weights]}.")
    if not isinstance(new_name, str) or not new_name.strip() or new_name == "base":
        raise AdapterError(f"new_name must be a non-empty name other than 'base', got {new_name!r}.")
    if new_name in model.peft_config:
        raise AdapterExistsError(f"An adapter named {new_name!r} is already loaded; choose another new_name "
                                 f"(loaded: {', '.join(_loaded(model))}).")
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
