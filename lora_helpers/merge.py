"""Merge one adapter into a plain transformers folder, verified (the weights are written by merged_weights).

``merge_and_save`` never touches the live model and never holds a second copy of the base: it walks the
base module by module, computes each merged tensor (``W + s·B·A``, through PEFT's own layer ``merge`` on a
copy of that one layer for DoRA and friends; 4-bit weights dequantized one at a time) and writes shard by
shard, so the extra memory is about one shard. Every adapter stays loaded, unmerged and switchable
("merge is one mode forever: keep the raw adapters").
"""
from __future__ import annotations

import errno
import fnmatch
import gc
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from .base import is_quantized
from .colab import GIB, free_disk, free_gpu, free_ram, require
from .combine import _is_lora
from .errors import AdapterError, AdapterExistsError, AdapterNotFoundError, MergeError, StorageError
from .folders import OS_LITTER, as_os_error, check_path, disk_error, replace_folder, staging_folder, user_path
from .modes import eval_mode
from .merged_weights import _dequantized, _tied_pairs, _write_config, write_merged
from .names import BASE, loaded_names, require_loaded
from .storage import adapter_bytes

REPORT_NAME = "merge_report.json"
PROBE = "Return the user as JSON: name Anna, city Kazan. Напиши функцию на Python, которая считает сумму."
# Default max |logits(merged) - logits(base + adapter)| by saved dtype: tight for fp32; for fp16/bf16 it
# allows their rounding (SmolLM2-135M: fp16 ~0.04-0.11, bf16 ~0.3-1.1) yet catches a missing adapter.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 0.25, torch.bfloat16: 2.0}
# For a 4-bit base the reference itself is approximate: on a GPU bitsandbytes computes in fp16/bf16, and the
# merged weights are saved in that dtype. On the CPU (fp32, bitsandbytes' bf16 inference kernel off, see
# base._no_cpu_inference_layout), SmolLM2-135M nf4 merged with each shipped adapter agrees to 0.00; an adapter
# moves the logits by 10.8-28.5 (`make bench`: lora_helpers.course.bench_merge; README "Merging a 4-bit base").
TOLERANCE_4BIT = 2.0
VERIFY = (True, False, "auto", "logits", "tensors")
SAMPLED_LAYERS = 8  # LoRA layers re-read and checked against W + s·B·A when the logits check does not fit
SHARD_RANGE = (64 * 2**20, 2 * 2**30)  # default shard: a quarter of the merged model, within this range
# what merge_and_save wrote before its report listed the files: overwrite=True accepts these beside such a report
_WRITTEN_UNLISTED = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                     "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                     "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


class MergeWriteError(MergeError, StorageError):
    """Writing the merged folder failed (a full or read-only disk): a MergeError and a StorageError (an OSError)."""


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
    files: list[str] | None = None  # what the folder holds besides this report (None: an older report)

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
        return (f"Адаптер «{self.adapter}» вплавлен в базу → {self.path} ({self.dtype}, {_files(self.shards)} весов): "
                f"{_mib(self.merged_bytes)} против {_mib(self.adapter_bytes)} у адаптера (×{self.ratio:.0f}); "
                f"{check}; {self.seconds:.1f} с")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} МиБ"


def _files(n: int) -> str:
    """«1 файл», «3 файла», «12 файлов»: the Russian plural."""
    if n % 10 == 1 and n % 100 != 11:
        return f"{n} файл"
    if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14):
        return f"{n} файла"
    return f"{n} файлов"


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
    tolerance = _check_tolerance(tolerance)
    out = user_path(out_dir)
    dest = check_path(out)  # a name too long or a link loop: refused before anything is written
    _check_target(out, overwrite)
    base = model.get_base_model()
    quantized = is_quantized(base)
    native = _compute_dtype(base) if quantized else base.dtype  # what the live model computes in
    dtype = _as_dtype(dtype) or native
    if tolerance is None:
        tolerance = max(TOLERANCE[dtype], TOLERANCE_4BIT) if quantized else TOLERANCE[dtype]
    merged_estimate = _merged_bytes(base, dtype)
    shard_bytes = _shard_bytes(max_shard_size, merged_estimate)
    if free_disk(dest.parent) < merged_estimate * 1.05:
        raise disk_error(OSError(errno.ENOSPC, "checked before writing"), f"write the merged model to '{out}'",
                         dest.parent, int(merged_estimate * 1.05), elsewhere="another out_dir", error=MergeWriteError)
    require(f"merge '{name}' into {dest}", ram=2 * min(shard_bytes, merged_estimate) + 256 * 2**20, error=MergeError)
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
                diff = _verify_logits(tmp, probe, ref, model.device, native)
            elif how == "tensors":
                checked = _verify_tensors(model, name, tmp, dtype)
            report = MergeReport(str(out), name, str(base.name_or_path), str(dtype).split(".")[-1], diff, tolerance,
                                 adapter_bytes(model, name),
                                 sum(f.stat().st_size for f in tmp.glob("*.safetensors")), round(seconds, 3),
                                 round(time.perf_counter() - vstart, 3), quantized, how or "none", checked, shards,
                                 sorted(p.name for p in tmp.iterdir()))
            if diff is not None and not diff <= tolerance:
                raise MergeError(f"The merged model does not match '{name}': max |Δlogits| = {diff:.3g} > tolerance "
                                 f"{tolerance:g}. Nothing was written to {out}. If the dtype ({report.dtype}) explains "
                                 "it, pass a larger tolerance=...; otherwise check that the adapter is not merged "
                                 "already.")
            (tmp / REPORT_NAME).write_text(json.dumps(asdict(report), indent=1))
            # the old folder survives an interrupt at any instant of the swap (folders.replace_folder)
            replace_folder(tmp, dest, check_old=lambda old: _check_target(old, overwrite))
    except AdapterError:  # ours already (StorageError is an OSError too): keep its message
        raise
    except Exception as e:  # disk full, read-only folder; tokenizers and safetensors raise plain exceptions for them
        failed = as_os_error(e)
        if failed is not None:
            raise disk_error(failed, f"write the merged model to '{out}'", dest.parent, merged_estimate,
                             elsewhere="another out_dir", error=MergeWriteError) from e
        if isinstance(e, SafetensorError):
            raise MergeError(f"Writing the merged model for {dest} failed ({type(e).__name__}: {e}). Nothing "
                             f"changed at {out}; free disk space or choose a writable out_dir.") from e
        raise
    print(report.summary())
    return out


# ----------------------------------------------------------------------------- checks
def _check_adapter(model, name) -> None:
    if not hasattr(model, "get_base_model") or not loaded_names(model):
        raise AdapterNotFoundError(f"The model ({type(model).__name__}) has no adapters loaded, so there is nothing "
                                   "to merge. Load them first: model = lh.load_adapters(model, {name: source}).")
    if name == BASE:
        raise AdapterError(f"{BASE!r} means no adapter: there is nothing to merge. Give an adapter name "
                           f"({', '.join(loaded_names(model))}).")
    require_loaded(model, name)
    if not _is_lora(model.peft_config[name]):
        raise AdapterError(f"'{name}' is a {model.peft_config[name].peft_type} adapter; only LoRA adapters merge here.")
    if any(getattr(m, "merged", False) for m in _lora_layers(model.get_base_model()).values()):
        raise MergeError("The model has adapter weights merged in place (merge_adapter); merging another copy "
                         "on top would be wrong. Call model.unmerge_adapter() first.")
    if getattr(model.get_base_model(), "is_loaded_in_8bit", False):
        raise MergeError("Merging into an 8-bit base is not supported: load the base in 4-bit (nf4) or in full "
                         "precision, add the adapter, and merge that.")


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
        extra = _not_written(out)
        if extra:
            shown = ", ".join(extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
            raise AdapterExistsError(f"{out} holds what merge_and_save did not write ({shown}), so overwrite=True "
                                     "will not replace it: that would delete them. Nothing was changed. Move them "
                                     "elsewhere, or choose another out_dir.")


def _not_written(out: Path) -> list[str]:
    """What ``out`` holds besides its merge report and the files the report lists (folders end with "/")."""
    try:
        listed = json.loads((out / REPORT_NAME).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        return [f"{REPORT_NAME} (unreadable)"]
    extra = []
    for p in sorted(out.iterdir()):
        if p.name == REPORT_NAME or p.name in OS_LITTER:
            continue
        ours = (p.name in listed if isinstance(listed, list)
                else any(fnmatch.fnmatchcase(p.name, pattern) for pattern in _WRITTEN_UNLISTED))
        if p.is_dir() and not p.is_symlink():
            extra.append(p.name + "/")
        elif not ours:
            extra.append(p.name)
    return extra


def _check_tolerance(tolerance) -> float | None:
    if tolerance is None:
        return None
    if not isinstance(tolerance, bool) and isinstance(tolerance, (int, float)) and tolerance >= 0:
        return float(tolerance)  # NaN fails ">= 0"
    raise AdapterError(f"tolerance={tolerance!r} ({type(tolerance).__name__}): expected a non-negative number, the "
                       "largest max |Δlogits| to accept, e.g. tolerance=0.5 (or None for the dtype's default).")


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

    with eval_mode(model), temporary_switch(model, name):
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


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
    tied = _tied_pairs(model.get_base_model())  # a weight that stayed tied is saved under its source's key
    for n, m in sample:
        key = n + ".weight"
        if key not in where and tied.get(key) in where:
            key = tied[key]
        if key not in where:
            raise MergeError(f"The merged folder has no tensor {key!r} for a LoRA layer of '{name}'. Nothing was "
                             "written; please report this with your PEFT and transformers versions.")
        with safe_open(folder / where[key], "pt") as f:
            saved = f.get_tensor(key).float()
        delta = m.lora_B[name].weight.float() @ m.lora_A[name].weight.float() * m.scaling[name]
        if getattr(model.peft_config[name], "fan_in_fan_out", False):
            delta = delta.T
        # on the CPU, where the saved tensor is, whatever device the model runs on
        base_w = _dequantized(m.get_base_layer().weight).to("cpu", torch.float32)
        expected = (base_w + delta.to("cpu")).to(dtype).float()
        limit = 2 * torch.finfo(dtype).eps * float(expected.abs().max()) + 1e-6
        diff = float((saved - expected).abs().max())
        if not diff <= limit:
            raise MergeError(f"The merged weight {key} does not equal W + s·B·A of '{name}' (max |Δ| = {diff:.3g} > "
                             f"{limit:.3g}). Nothing was written; please report this with your PEFT version.")
    return len(sample)

