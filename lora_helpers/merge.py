"""Merge one adapter into a plain transformers folder (verified), and combine adapters into a new one.

``merge_and_save`` never touches the live model and never holds a second copy of the base: it walks the
base module by module, computes each merged tensor (``W + s·B·A``, through PEFT's own layer ``merge`` on a
copy of that one layer for DoRA and friends; 4-bit weights dequantized one at a time) and writes shard by
shard, so the extra memory is about one shard. Every adapter stays loaded, unmerged and switchable
("merge is one mode forever: keep the raw adapters").
"""
from __future__ import annotations

import copy
import gc
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from .base import is_quantized
from .colab import GIB, free_gpu, free_ram, require
from .errors import AdapterError, AdapterExistsError, AdapterNotFoundError, MergeError
from .names import BASE, check_name
from .folders import replace_folder, staging_folder

REPORT_NAME = "merge_report.json"
PROBE = "Return the user as JSON: name Anna, city Kazan. Напиши функцию на Python, которая считает сумму."
# Default max |logits(merged) - logits(base + adapter)| by saved dtype: tight for fp32; for fp16/bf16 it
# allows their rounding (SmolLM2-135M: fp16 ~0.04-0.11, bf16 ~0.3-1.1) yet catches a missing adapter.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 0.25, torch.bfloat16: 2.0}
# For a 4-bit base the reference itself is approximate: bitsandbytes' kernels compute in bf16/fp16 (also
# on the CPU). SmolLM2-135M nf4 + the shipped adapters, merged in fp32: 0.61-0.96, while an adapter moves
# the logits by 10.6-28.7 (`make bench`: lora_helpers.course.bench_merge; README "Merging a 4-bit base").
TOLERANCE_4BIT = 2.0
METHODS = ("linear", "ties", "dare_ties", "cat")
VERIFY = (True, False, "auto", "logits", "tensors")
SAMPLED_LAYERS = 8  # LoRA layers re-read and checked against W + s·B·A when the logits check does not fit
SHARD_RANGE = (64 * 2**20, 2 * 2**30)  # default shard: a quarter of the merged model, within this range


@dataclass
class MergeReport:
    """What ``merge_and_save`` did; saved as merge_report.json in the folder (``MergeReport.read(path)``)."""
    path: str
    adapter: str
    base: str
    dtype: str
    max_abs_diff: float | None  # logits check: max |logits(merged) - logits(base + adapter)|; None: not run
    tolerance: float
    adapter_bytes: int
    merged_bytes: int
    seconds: float              # merge + save
    verify_seconds: float
    quantized_base: bool        # merged from dequantized 4-bit weights
    verified_by: str            # "logits", "tensors" (sampled layers re-read: W' = W + s·B·A) or "none"
    tensors_checked: int = 0
    shards: int = 1

    @property
    def ratio(self) -> float:
        """How many times bigger the merged weights are than the adapter's."""
        return self.merged_bytes / max(self.adapter_bytes, 1)

    @classmethod
    def read(cls, folder) -> "MergeReport":
        return cls(**json.loads((Path(folder) / REPORT_NAME).read_text()))

    def summary(self) -> str:
        if self.verified_by == "logits":
            check = f"проверено по логитам: max |Δ| = {self.max_abs_diff:.1e} (допуск {self.tolerance:g})"
        elif self.verified_by == "tensors":
            check = f"проверено по весам: {self.tensors_checked} слоёв W' = W + s·B·A"
        else:
            check = "без проверки"
        return (f"Адаптер «{self.adapter}» вплавлен в базу → {self.path} ({self.dtype}, {self.shards} файл(ов) весов): "
                f"{_mib(self.merged_bytes)} против {_mib(self.adapter_bytes)} у адаптера (×{self.ratio:.0f}); "
                f"{check}; {self.seconds:.1f} с")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} МиБ"


def merge_and_save(model, name: str, out_dir, tokenizer=None, dtype=None, verify=True,
                   overwrite: bool = False, tolerance: float | None = None, max_shard_size=None,
                   token: str | None = None) -> Path:
    """Merge adapter ``name`` into the base, save a plain transformers folder, return its Path.

    The live ``model`` keeps every adapter, unmerged, with the same active one; ``name`` is merged whatever
    adapter is active. Tensors are merged one at a time and written shard by shard (``max_shard_size``:
    bytes or "500MB"; default a quarter of the merged model, 64 MiB to 2 GiB), so the extra memory is about
    one shard. ``dtype``: of the saved weights (default:
    the base's; for a 4-bit base its compute dtype — float32 on a CPU, fp16/bf16 on a GPU — since the
    4-bit weights are dequantized and the adapter added to them). ``verify``: True/"auto" reloads the
    folder with ``AutoModelForCausalLM`` (no PEFT) and compares logits on a probe with the unmerged adapter
    when the model fits in free memory, else re-reads sampled layers and checks W' = W + s·B·A
    ("tensors"); "logits" or "tensors" force one; False skips. A mismatch raises MergeError and writes
    nothing. An existing ``out_dir`` is replaced only with ``overwrite=True`` and only when it holds a
    folder this function wrote, after the new one is complete. ``token`` is unused (kept for old calls).
    """
    _check_adapter(model, name)
    if verify not in VERIFY:
        raise AdapterError(f"verify={verify!r}: use True/'auto', 'logits', 'tensors' or False.")
    out = Path(out_dir).expanduser()
    _check_target(out, overwrite)
    base = model.get_base_model()
    quantized = is_quantized(base)
    dtype = _as_dtype(dtype) or (_compute_dtype(base) if quantized else base.dtype)
    if tolerance is None:
        tolerance = max(TOLERANCE[dtype], TOLERANCE_4BIT) if quantized else TOLERANCE[dtype]
    tolerance = float(tolerance)
    merged_estimate = _merged_bytes(base, dtype)
    shard_bytes = _shard_bytes(max_shard_size, merged_estimate)
    dest = out.resolve()
    require(f"merge '{name}' into {dest}", disk=int(merged_estimate * 1.05), path=dest.parent,
            ram=2 * min(shard_bytes, merged_estimate) + 256 * 2**20, error=MergeError)
    how = _pick_check(verify, model, merged_estimate)
    probe = _probe_ids(model, tokenizer)
    ref = _adapter_logits(model, name, probe) if how == "logits" else None

    try:
        with staging_folder(dest) as tmp:
            start = time.perf_counter()
            shards, untied = write_merged(model, name, tmp, dtype, shard_bytes)
            _write_config(base, tmp, dtype, untied)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            else:
                warnings.warn(f"No tokenizer given: {out} will hold no tokenizer files. Pass tokenizer=tok to save "
                              "one, or load the tokenizer of the base model next to it.", stacklevel=2)
            seconds = time.perf_counter() - start
            vstart, diff, checked = time.perf_counter(), None, 0
            if how == "logits":
                diff = _verify_logits(tmp, probe, ref, model.device, _compute_dtype(base) if quantized else base.dtype)
            elif how == "tensors":
                checked = _verify_tensors(model, name, tmp, dtype)
            report = MergeReport(str(out), name, str(base.name_or_path), str(dtype).split(".")[-1], diff, tolerance,
                                 _adapter_bytes(model, name),
                                 sum(f.stat().st_size for f in tmp.glob("*.safetensors")), round(seconds, 3),
                                 round(time.perf_counter() - vstart, 3), quantized, how or "none", checked, shards)
            if diff is not None and not diff <= tolerance:
                raise MergeError(f"The merged model does not match '{name}': max |Δlogits| = {diff:.3g} > tolerance "
                                 f"{tolerance:g}. Nothing was written to {out}. If the dtype ({report.dtype}) explains "
                                 "it, pass a larger tolerance=...; otherwise check that the adapter is not merged "
                                 "already.")
            (tmp / REPORT_NAME).write_text(json.dumps(asdict(report), indent=1))
            # the old folder survives an interrupt at any instant of the swap (folders.replace_folder)
            replace_folder(tmp, dest, check_old=lambda old: _check_target(old, overwrite))
    except (OSError, SafetensorError) as e:  # disk full, read-only folder, vanished folder
        raise MergeError(f"Writing the merged model for {dest} failed ({type(e).__name__}: {e}). Nothing changed "
                         f"at {out}; free disk space or choose a writable out_dir.") from e
    print(report.summary())
    return out


# ----------------------------------------------------------------------------- checks
def _loaded(model) -> list:
    return sorted(getattr(model, "peft_config", {}) or {})


def _check_adapter(model, name) -> None:
    if not hasattr(model, "get_base_model") or not _loaded(model):
        raise AdapterError(f"The model ({type(model).__name__}) has no adapters loaded, so there is nothing to "
                           "merge. Load them first: model = lh.load_adapters(model, {name: source}).")
    if name == BASE:
        raise AdapterError(f"{BASE!r} means no adapter: there is nothing to merge. Give an adapter name "
                           f"({', '.join(_loaded(model))}).")
    if name not in model.peft_config:
        raise AdapterNotFoundError(f"No adapter named {name!r} is loaded; loaded: {', '.join(_loaded(model))}.")
    if not _is_lora(model.peft_config[name]):
        raise AdapterError(f"'{name}' is a {model.peft_config[name].peft_type} adapter; only LoRA adapters merge here.")
    if any(getattr(m, "merged", False) for m in _lora_layers(model.get_base_model()).values()):
        raise MergeError("The model has adapter weights merged in place (merge_adapter); merging another copy "
                         "on top would be wrong. Call model.unmerge_adapter() first.")
    if getattr(model.get_base_model(), "is_loaded_in_8bit", False):
        raise MergeError("Merging into an 8-bit base is not supported: load the base in 4-bit (nf4) or in full "
                         "precision, add the adapter, and merge that.")


def _is_lora(cfg) -> bool:
    return str(getattr(cfg, "peft_type", "")).split(".")[-1] == "LORA"


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.resolve().name or out.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise AdapterError(f"out_dir={str(out)!r} is the current folder or above it; name a new folder, e.g. "
                           "'merged/json'.")
    if out.exists() and not out.is_dir():
        raise AdapterExistsError(f"{out} exists and is a file, not a folder. Choose another out_dir.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise AdapterExistsError(f"{out} exists and is not empty. Pass overwrite=True to replace it (the old "
                                     "folder is kept until the new one is complete), or choose another out_dir.")
        if not (out / REPORT_NAME).is_file():
            raise AdapterExistsError(f"{out} is not a folder that merge_and_save wrote (no {REPORT_NAME}), so "
                                     "overwrite=True will not delete it. Choose another out_dir or empty it yourself.")


def _as_dtype(dtype):
    if isinstance(dtype, str):  # "float16", "torch.bfloat16"
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in TOLERANCE:
        return dtype
    raise AdapterError(f"dtype={dtype!r} is not supported; use torch.float32, torch.float16 or torch.bfloat16 "
                       "(or None for the base model's dtype).")


def _compute_dtype(base) -> torch.dtype:
    """The dtype a 4-bit base computes in (bitsandbytes' compute dtype), float32 when unknown."""
    qc = getattr(getattr(base, "config", None), "quantization_config", None)
    dt = qc.get("bnb_4bit_compute_dtype") if isinstance(qc, dict) else getattr(qc, "bnb_4bit_compute_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt.removeprefix("torch."), None)
    return dt if dt in TOLERANCE else torch.float32


def _shard_bytes(size, merged_bytes: int) -> int:
    if size is None:
        return int(min(max(merged_bytes / 4, SHARD_RANGE[0]), SHARD_RANGE[1]))
    if isinstance(size, int) and size > 0:
        return size
    if isinstance(size, str):
        from transformers.utils.hub import convert_file_size_to_int
        try:
            return int(convert_file_size_to_int(size))
        except ValueError:
            pass
    raise AdapterError(f"max_shard_size={size!r}: give bytes (an int) or a size like '500MB' / '2GB'.")


def _merged_bytes(base, dtype) -> int:
    per = torch.tensor([], dtype=dtype).element_size()
    seen, n = set(), 0
    for _, p in base.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            shape = getattr(getattr(p, "quant_state", None), "shape", None)
            n += int(torch.Size(shape).numel()) if shape is not None else p.numel()
    return n * per


def _pick_check(verify, model, merged_bytes) -> str | None:
    """"logits" when the reloaded model fits beside the live one (RAM, or the GPU it runs on), else "tensors"."""
    if verify is False:
        return None
    if verify in ("logits", "tensors"):
        return verify
    on_gpu = model.device.type == "cuda"
    free = free_gpu(model.device.index or 0) if on_gpu else free_ram()
    return "logits" if free is None or free > 1.5 * merged_bytes + GIB // 2 else "tensors"


def _lora_layers(base) -> dict:
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer)}


# ----------------------------------------------------------------------------- merging
def write_merged(model, name: str, folder: Path, dtype, shard_bytes: int) -> tuple[int, bool]:
    """Write base + adapter ``name`` as safetensors shards in ``folder``, one tensor at a time.

    Returns (number of shards, whether tied embeddings had to be untied because the adapter changed one).
    """
    from safetensors.torch import save_file

    base = model.get_base_model()
    tied = _tied_pairs(base)  # {target key: source key} that the config ties
    buffer, size, files, weight_map, changed_keys = {}, 0, [], {}, set()
    untied = False

    def flush():
        nonlocal buffer, size
        if buffer:
            path = folder / f".shard-{len(files):05d}.safetensors"
            save_file(buffer, path, metadata={"format": "pt"})
            files.append((path, list(buffer)))
        buffer, size = {}, 0

    for key, tensor, changed in _merged_tensors(base, name):
        if changed:
            changed_keys.add(key)
        if key in tied:
            src = tied[key]
            if key not in changed_keys and src not in changed_keys:
                continue  # still tied: saved once, under the source key
            if torch.equal(tensor, _read_back(folder, files, buffer, src, tensor.dtype)):
                continue
            untied = True
        t = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
        if size and size + t.numel() * t.element_size() > shard_bytes:
            flush()
        buffer[key] = t
        size += t.numel() * t.element_size()
        del tensor
    flush()
    total = len(files)
    for i, (path, keys) in enumerate(files):
        final = "model.safetensors" if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        path.rename(folder / final)
        weight_map.update({k: final for k in keys})
    if total > 1:
        index = {"metadata": {"total_size": sum((folder / f).stat().st_size for f in set(weight_map.values()))},
                 "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total, untied


def _tied_pairs(base) -> dict:
    if not getattr(base.config, "tie_word_embeddings", False):
        return {}
    keys = getattr(base, "_tied_weights_keys", None)  # transformers 5: {target: source}
    return dict(keys) if isinstance(keys, dict) else {}


def _read_back(folder, files, buffer, key, dtype):
    if key in buffer:
        return buffer[key]
    from safetensors import safe_open
    for path, keys in files:
        if key in keys:
            with safe_open(path, "pt") as f:
                return f.get_tensor(key)
    raise MergeError(f"Tied weight {key!r} was not written before its twin: cannot tell whether they still tie.")


def _merged_tensors(base, name):
    """(key, tensor, changed by the adapter) of the merged plain model, one at a time, in module order."""
    keys = set(base.state_dict(keep_vars=True))  # names only; includes wrapper paths
    yield from _walk(base, "", name, keys)


def _walk(module, prefix, name, keys, path=""):
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper, TrainableTokensWrapper

    if isinstance(module, LoraLayer):
        yield from _lora_tensors(module, prefix, name, keys, path)
    elif isinstance(module, TrainableTokensLayer):
        for key, t, changed in _walk(module.base_layer, prefix, name, keys, path + "base_layer."):
            if key == prefix + "weight" and name in module.token_indices:
                t, changed = module.get_merged_weights([name]), True
            yield key, t, changed
    elif isinstance(module, TrainableTokensWrapper):
        yield from _walk(module.token_adapter, prefix, name, keys, path + "token_adapter.")
    elif isinstance(module, ModulesToSaveWrapper):
        own = name in module.modules_to_save
        inner, sub = ((module.modules_to_save[name], f"modules_to_save.{name}.") if own
                      else (module.original_module, "original_module."))
        for key, t, changed in _walk(inner, prefix, name, keys, path + sub):
            yield key, t, changed or own
    elif isinstance(module, BaseTunerLayer):
        raise MergeError(f"{prefix.rstrip('.')} holds a {type(module).__name__} layer, which this merge cannot "
                         "write; only LoRA adapters (with modules_to_save / trainable tokens) are supported.")
    else:
        yield from _own_tensors(module, prefix, keys, path)
        for child_name, child in module.named_children():
            yield from _walk(child, f"{prefix}{child_name}.", name, keys, f"{path}{child_name}.")


def _own_tensors(module, prefix, keys, path):
    """A plain module's own parameters and persistent buffers; 4-bit weights dequantized."""
    for pname, p in module.named_parameters(recurse=False):
        yield prefix + pname, _dequantized(p), False
    for bname, b in module.named_buffers(recurse=False):
        if b is not None and path + bname in keys:  # persistent buffers only (those in the state dict)
            yield prefix + bname, b, False


def _dequantized(p):
    state = getattr(p, "quant_state", None)
    if state is None:
        return p.data
    from peft.utils.integrations import dequantize_bnb_weight
    return dequantize_bnb_weight(p, state=state)


def _lora_tensors(layer, prefix, name, keys, path):
    """The merged base layer of one LoRA layer: ``W + get_delta_weight(name)`` as PEFT's own merge adds it
    (4-bit weights dequantized first); DoRA and LoRA biases through PEFT's ``merge`` on a copy of this layer."""
    inner = layer.get_base_layer()
    if name not in layer.lora_A and name not in layer.lora_embedding_A:
        yield from _own_tensors(inner, prefix, keys, path + "base_layer.")
        return
    quantized = getattr(inner.weight, "quant_state", None) is not None
    if layer.lora_variant.get(name) is not None or layer.lora_bias.get(name):
        if quantized:
            raise MergeError(f"{prefix.rstrip('.')}: '{name}' uses DoRA or a LoRA bias, which this merge cannot add "
                             "to a 4-bit weight. Merge it on a full-precision base.")
        one = copy.deepcopy(layer)  # one layer's copy, never the model's
        with torch.no_grad():
            one.merge(safe_merge=True, adapter_names=[name])
        merged = list(_own_tensors(one.get_base_layer(), prefix, keys, path + "base_layer."))
        del one
        gc.collect()  # PEFT layers hold reference cycles: free the copy now, not at some later collection
        for key, t, _ in merged:
            yield key, t, True
        return
    with torch.no_grad():
        w = _dequantized(inner.weight)
        w = (w.float() if quantized else w) + layer.get_delta_weight(name).to(torch.float32 if quantized else w.dtype)
    yield prefix + "weight", w, True
    for pname, p in inner.named_parameters(recurse=False):
        if pname != "weight":
            yield prefix + pname, p.data, False


def _write_config(base, folder: Path, dtype, untied: bool) -> None:
    cfg = base.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = str(dtype).split(".")[-1]
    if untied:
        cfg["tie_word_embeddings"] = False  # as PEFT does when merging leaves the embeddings different
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen = getattr(base, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(folder)


# ----------------------------------------------------------------------------- verification
def _probe_ids(model, tokenizer) -> torch.Tensor:
    if tokenizer is not None:
        return tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :48]
    vocab = model.get_base_model().config.vocab_size
    return (torch.arange(1, 33) * 7919 % (vocab - 1) + 1).unsqueeze(0)


@torch.inference_mode()
def _adapter_logits(model, name, ids) -> torch.Tensor:
    """Logits of the unmerged adapter: a temporary switch, restored afterwards (eval mode meanwhile)."""
    from .switching import temporary_switch

    training = model.training
    model.eval()
    try:
        with temporary_switch(model, name):
            return model(input_ids=ids.to(model.device)).logits.float().cpu()
    finally:
        model.train(training)


@torch.inference_mode()
def _verify_logits(folder: Path, ids, ref, device, ref_dtype) -> float:
    """Reload ``folder`` with plain transformers at the reference's precision; max |Δlogits| on the probe."""
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=ref_dtype).to(device).eval()
    logits = merged(input_ids=ids.to(merged.device)).logits.float().cpu()
    del merged
    gc.collect()
    return float((logits - ref).abs().max())


@torch.no_grad()
def _verify_tensors(model, name, folder: Path, dtype) -> int:
    """Re-read sampled merged layers from the shards and check W' = W + s·B·A (computed here from lora_A and
    lora_B, not by PEFT); returns how many were checked. For models too big to reload for the logits check."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    where = (json.loads(index.read_text())["weight_map"] if index.is_file()
             else {k: "model.safetensors" for k in safe_open(folder / "model.safetensors", "pt").keys()})
    layers = [(n, m) for n, m in _lora_layers(model.get_base_model()).items()
              if name in m.lora_A and m.lora_variant.get(name) is None and not m.lora_bias.get(name)]
    step = max(1, len(layers) // SAMPLED_LAYERS)
    sample = layers[::step][:SAMPLED_LAYERS]
    for n, m in sample:
        key = n + ".weight"
        with safe_open(folder / where[key], "pt") as f:
            saved = f.get_tensor(key).float()
        delta = m.lora_B[name].weight.float() @ m.lora_A[name].weight.float() * m.scaling[name]
        if getattr(model.peft_config[name], "fan_in_fan_out", False):
            delta = delta.T
        expected = (_dequantized(m.get_base_layer().weight).float() + delta.to(saved.device)).to(dtype).float()
        limit = 2 * torch.finfo(dtype).eps * float(expected.abs().max()) + 1e-6
        diff = float((saved - expected).abs().max())
        if not diff <= limit:
            raise MergeError(f"The merged weight {key} does not equal W + s·B·A of '{name}' (max |Δ| = {diff:.3g} > "
                             f"{limit:.3g}). Nothing was written; please report this with your PEFT version.")
    return len(sample)


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
    check_name(new_name, "the combined adapter")
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
