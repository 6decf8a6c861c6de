"""The merged model's weights, written tensor by tensor and shard by shard (no copy of the model).

The base is walked module by module: a LoRA layer gives ``W + get_delta_weight(name)`` as PEFT's own merge
adds it (4-bit weights dequantized first; DoRA and LoRA biases through PEFT's ``merge`` on a copy of that one
layer), ``modules_to_save`` and trainable-token wrappers give the adapter's copy or rows, everything else
its own tensors. Tied embeddings stay tied unless the adapter changed one of them.
"""
from __future__ import annotations

import copy
import gc
import json
from pathlib import Path

import torch

from .errors import MergeError


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
        if key in tied and key not in changed_keys and tied[key] not in changed_keys:
            continue  # still tied: saved once, under the source key
        # as saved: on the CPU (the model may be on a GPU) and in the saved dtype
        t = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
        del tensor
        if key in tied:
            if torch.equal(t, _read_back(folder, files, buffer, tied[key])):
                continue
            untied = True
        if size and size + t.numel() * t.element_size() > shard_bytes:
            flush()
        buffer[key] = t
        size += t.numel() * t.element_size()
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


def _read_back(folder, files, buffer, key):
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
