"""An adapter file checked against a model before PEFT sees it: tensor shapes fit the base
(``check_compatible``), no key names another adapter or PEFT's in-memory containers (``check_keys``), and the
tensors are the ones adapter_config.json asks for (``check_agrees``), and every number in them is finite
(``check_finite``). ``load_adapters`` runs them all first, so a bad file changes nothing."""
from __future__ import annotations

import re

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import AuxiliaryTrainingWrapper, get_pattern_key

from .errors import AdapterFileError, BaseMismatchError
from .storage import AdapterFiles


_LORA_KEY = re.compile(r"^(.+?)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")
_TOKENS_KEY = ".token_adapter.trainable_tokens_delta"  # trainable_token_indices: the new rows, not the base's
_QUANT_TAGS = ("-bnb-4bit", "-bnb-8bit", "-4bit", "-8bit", "-gguf", "-awq", "-gptq", "-fp16", "-bf16")
PREFIX = "base_model.model."


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
    bare = key.removeprefix(PREFIX)
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
    targets = _targets(files, name)
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
        bare = key.removeprefix(PREFIX)
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


def _targets(files: AdapterFiles, name: str):
    """adapter_config.json's target_modules when PEFT can read it (names, a regex, "all-linear", null)."""
    targets = files.config.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise AdapterFileError(f"Adapter {name!r}: '{files.folder}/adapter_config.json' has target_modules="
                               f"{targets!r}; expected a list of module names (e.g. [\"q_proj\", \"v_proj\"]), a "
                               "regular expression, \"all-linear\" or null. Save the adapter again, or fix "
                               "adapter_config.json.")
    return targets


def _peft_config(files: AdapterFiles, name: str, base) -> LoraConfig:
    """adapter_config.json as PEFT reads it; ``target_modules: null`` becomes PEFT's default for ``base``'s
    architecture, as PEFT's own loading makes it."""
    where = f"Adapter {name!r}: '{files.folder}/adapter_config.json'"
    _targets(files, name)
    try:
        cfg = LoraConfig.from_pretrained(str(files.folder))
    except (TypeError, ValueError) as e:
        raise AdapterFileError(f"{where} is not a LoRA config PEFT accepts ({type(e).__name__}: {e}). "
                               "Save the adapter again.") from e
    if cfg.target_modules is None and not cfg.target_parameters:
        kind = getattr(getattr(base, "config", None), "model_type", None)
        default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(kind)
        if default is None:
            raise AdapterFileError(f"{where} has target_modules null, and PEFT has no default LoRA targets for a "
                                   f"{kind!r} model. Name the modules the weights are for in target_modules.")
        cfg.target_modules = default if isinstance(default, str) else set(default)
    return cfg


def check_agrees(model, files: AdapterFiles, name: str) -> None:
    """Raise AdapterFileError unless the tensors are the ones adapter_config.json asks PEFT to create: one
    lora_A/lora_B pair (DoRA magnitudes, LoRA biases) for each module it targets in ``model``, of its rank, and
    none for modules it does not target. Otherwise PEFT loads it partly, with at most a warning.
    """
    base = model.base_model.model if isinstance(model, PeftModel) else model
    cfg = _peft_config(files, name, base)
    null = " (target_modules is null: PEFT's default for this model)" if files.config.get("target_modules") is None \
        else ""
    modules = _plain_modules(base)
    have = {key.removeprefix(PREFIX): shape for key, shape in files.shapes.items()
            if _split_key(key)[1] not in (None, "tokens")}
    where = f"Adapter {name!r} ('{files.folder}')"
    fix = "Save the adapter again with save_pretrained (or lh.save_adapter), or fix adapter_config.json to match."
    if isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == "all-linear" or (
            cfg.target_parameters or cfg.layer_replication):
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
        raise AdapterFileError(f"{where}: adapter_config.json targets modules{null} the weights file has no tensors "
                               f"for: {_shown(missing)} missing{dora}. PEFT would leave them as freshly initialised "
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


def check_finite(files: AdapterFiles, name: str) -> None:
    """Raise AdapterFileError when a tensor in the weights file holds NaN or an infinite value (a training run that
    diverged, a broken conversion): such an adapter turns every reply into garbage. Reads each tensor once."""
    bad = []
    if files.weights.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(files.weights), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if t.is_floating_point() and not torch.isfinite(t).all():
                    bad.append(key)
    else:
        state = torch.load(files.weights, map_location="cpu", weights_only=True)
        bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise AdapterFileError(f"Adapter {name!r} ('{files.weights}'): tensor(s) {_shown(bad)} hold NaN or infinite "
                               "values (not a number), so every reply with it would be garbage; it was not loaded. "
                               "The training diverged or the file is damaged: retrain (e.g. with a lower learning "
                               "rate) or save or download the adapter again.")


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


def refuse_base_weights(name: str, files: AdapterFiles, keys: list[str]) -> None:
    raise AdapterFileError(
        f"Adapter {name!r} ('{files.weights}') also carries tensor(s) that are not adapter weights: {_shown(keys)}. "
        "Loaded, they would overwrite the shared base model for every adapter. Expected only LoRA weights and "
        "the modules its adapter_config.json lists in modules_to_save. Save the adapter again without them, "
        "or pass allow_base_weights=True if you mean to change the base model itself.")
