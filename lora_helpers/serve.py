"""Beyond one notebook: serve the base and its adapters with vLLM multi-LoRA.

- :func:`vllm_command` builds the ``vllm serve`` command line (``--enable-lora``, ``--lora-modules``,
  ``--max-lora-rank`` from the adapters' ranks); :func:`shell_line` prints it for a terminal.
- :class:`RoutedClient` (from :mod:`lora_helpers.client`, importable here too) routes each prompt with a
  project router and sends it to the server's OpenAI-compatible API with ``model=<adapter name>``.
- ``python -m lora_helpers.serve`` prints the command for the demo adapters; :mod:`lora_helpers.course.serve_local`
  starts such a server here and compares PEFT's mixed batch in-process with it.

Neither vLLM nor ``openai`` is needed to import this module: vLLM runs as a separate program (its CPU
build lives in its own environment, see ``make serve-setup``), and ``openai`` is imported by the client.
"""
from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from .client import RoutedClient  # noqa: F401  (lora_helpers.serve.RoutedClient, lh.RoutedClient)
from .errors import AdapterError, AdapterNotFoundError
from .names import BASE

# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py); an adapter above it is refused.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


# ----------------------------------------------------------------------------- the command
def adapter_rank(folder) -> int:
    """The LoRA rank of a PEFT adapter folder: ``r`` in adapter_config.json (or the largest ``rank_pattern``)."""
    cfg_file = Path(folder) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterNotFoundError(f"No adapter_config.json in {folder}: expected a PEFT adapter folder "
                                   "(save one with model.save_pretrained(folder) or lh.save_adapter).") from None
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise AdapterError(f"{cfg_file} is not valid JSON ({type(e).__name__}); re-save the adapter.") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfg_file} holds a JSON {type(cfg).__name__}, expected an object with 'r'; "
                           "re-save the adapter.")
    ranks = [cfg.get("r")] + list((cfg.get("rank_pattern") or {}).values())
    ranks = [r for r in ranks if isinstance(r, int)]
    if not ranks:
        raise AdapterError(f"{cfg_file} has no integer 'r' (the LoRA rank); is it a LoRA adapter?")
    return max(ranks)


def max_lora_rank(ranks) -> int:
    """The smallest value vLLM accepts for ``--max-lora-rank`` that covers every rank in ``ranks``."""
    top = max(ranks, default=1)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= top:
            return allowed
    raise AdapterError(f"An adapter has rank {top}; vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}. "
                       "Retrain it with a smaller r, or merge it into the base (lh.merge_and_save).")


def _short(text, limit: int = 80) -> str:
    """``text`` for a message: a long name or a model's repr cut to ``limit`` characters."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _is(path: Path, test) -> bool:
    try:
        return test(path)
    except OSError:  # a name too long for the file system names nothing
        return False


_WHAT_TO_PASS = ("vLLM loads a model from a local folder or a Hub repo id (like 'owner/model'), not from a Python "
                 "object: pass the folder the model was saved to (model.save_pretrained(folder), or "
                 "lh.merge_and_save for a merged adapter), its Hub repo id, or a preset ('smollm2-135m', "
                 "'mistral-7b').")


def _model_name(model_or_folder) -> str:
    """A preset, folder or repo id as a string; a loaded model (or PeftModel) by its ``name_or_path``."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        return os.fspath(model_or_folder)
    get_base = getattr(model_or_folder, "get_base_model", None)  # a PeftModel: the base it was built on
    model = get_base() if callable(get_base) else model_or_folder
    name = getattr(model, "name_or_path", None)
    if isinstance(name, str) and name:
        return name
    raise AdapterError(f"Got a {type(model_or_folder).__name__} without a name_or_path, so there is nothing to "
                       f"serve. {_WHAT_TO_PASS}")


def _base_path(model_or_folder) -> tuple[str, str]:
    """(what vLLM loads, the served model name) for a preset, a local folder, a Hub repo id or a loaded model."""
    from huggingface_hub.utils import validate_repo_id

    from . import base as b

    name = _model_name(model_or_folder)
    if name == "auto":
        name = "smollm2-135m" if b.pick_device() == "cpu" else b.MISTRAL_NAME
    if name in ("smollm2-135m", b.EMBEDDED_NAME):
        return str(b.embedded_folder()), b.EMBEDDED_NAME
    if name == "mistral-7b":
        return b.MISTRAL_NAME, b.MISTRAL_NAME
    if name == "smollm2-135m-4bit-fp16":
        raise AdapterError(f"{name!r} is quantized to nf4 in this process (for tests of T4 numerics), not a model "
                           "vLLM loads: serve 'smollm2-135m', on a GPU with quantization='bitsandbytes', "
                           "dtype='float16' for the same numerics.")
    path = Path(name).expanduser()
    if _is(path, Path.exists):  # a folder, or a GGUF file
        return str(path.resolve()), path.name
    try:
        validate_repo_id(name)
    except ValueError:  # HFValidationError
        raise AdapterError(f"{_short(name)} is neither a local folder nor a Hub repo id. {_WHAT_TO_PASS}") from None
    return name, name  # a Hub repo id: vLLM downloads it


def _flag(key: str, value) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False or value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def vllm_command(model_or_folder, adapters: Mapping, host: str = "127.0.0.1", port: int = 8000, *,
                 program: str = "vllm", **opts) -> list[str]:
    """The ``vllm serve`` command for one base and several LoRA adapters, as a list of arguments.

    ``model_or_folder``: "smollm2-135m", "auto" (on a CPU) or the embedded name -> the cached converted
    folder of the embedded base; "mistral-7b"; a local transformers folder; a Hub repo id; or a loaded
    model (or PeftModel), served by the folder or repo id it was loaded from (its ``name_or_path``).
    ``adapters``: {name: PEFT adapter folder}. A source that is not a local folder (e.g. "owner/repo" on
    the Hub, which vLLM downloads itself) needs ``max_lora_rank=`` since its rank cannot be read here.
    ``opts`` become ``--flag value`` (``max_model_len=1024`` -> ``--max-model-len 1024``; True -> a bare
    flag; a list -> several values); they override the computed ``--max-lora-rank``, ``--max-loras`` and
    ``--served-model-name``. ``program``: the ``vllm`` executable (-> ``vllm serve MODEL ...``), or a
    Python interpreter that has vLLM (-> ``python -m vllm.entrypoints.openai.api_server --model MODEL ...``,
    same flags; :func:`vllm_program` picks it for ``.venv-serve``).
    """
    if not isinstance(adapters, Mapping):
        raise AdapterError(f"adapters must be a mapping {{name: folder}}, got {type(adapters).__name__}. "
                           "Example: vllm_command('smollm2-135m', lh.DEMO_ADAPTERS).")
    model, served = _base_path(model_or_folder)
    modules, ranks = [], []
    for name, source in adapters.items():
        if not isinstance(name, str) or not name or "=" in name or " " in name or name == BASE:
            raise AdapterError(f"Adapter name {name!r} cannot be served: use a non-empty name without '=' or "
                               f"spaces, other than {BASE!r} (which means the base model).")
        if not isinstance(source, (str, os.PathLike)):
            raise AdapterError(f"Adapter {name!r}: got a {type(source).__name__}; expected the adapter's folder "
                               "(lh.save_adapter returns one) or a Hub repo id.")
        source = os.fspath(source)
        path = Path(source).expanduser()
        if _is(path, Path.is_dir):
            ranks.append(adapter_rank(path))
            source = str(path.resolve())
        elif "max_lora_rank" not in opts:
            raise AdapterNotFoundError(
                f"Adapter {name!r}: {_short(source)} is not a local folder, so its rank cannot be read. Give a "
                "folder (lh.resolve_adapter('hub:owner/repo') downloads one), or pass max_lora_rank=<its r> to "
                "serve a Hub repo id that vLLM downloads itself.")
        modules.append(f"{name}={source}")
    computed = {"served_model_name": served, "max_lora_rank": max_lora_rank(ranks),
                "max_loras": max(1, len(modules))}
    opts = {**computed, **opts}
    if Path(str(program)).name.startswith("python"):  # vLLM's server module, not its CLI (see vllm_program)
        cmd = [str(program), "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    else:
        cmd = [str(program), "serve", model]
    cmd += ["--host", str(host), "--port", str(int(port))]
    if modules:
        cmd += ["--enable-lora", "--lora-modules", *modules]
    for key, value in opts.items():
        if not modules and key in ("max_lora_rank", "max_loras"):
            continue
        cmd += _flag(key, value)
    return cmd


def shell_line(cmd) -> str:
    """The command as one line to paste into a terminal (quoted where needed)."""
    return shlex.join(str(c) for c in cmd)


def served_model_name(cmd) -> str:
    """The ``--served-model-name`` (else the model argument) of a ``vllm serve`` command."""
    cmd = list(cmd)
    for flag in ("--served-model-name", "--model", "serve"):
        if flag in cmd:
            return cmd[cmd.index(flag) + 1]
    raise AdapterError(f"Not a vLLM server command: {shell_line(cmd)}")


def main(argv=None) -> None:
    import argparse

    from .shipped import demo_sources

    p = argparse.ArgumentParser(description="Print the vLLM command that serves the demo adapters.")
    p.add_argument("--adapters", default=None, help="folder with lora_json/, lora_coding/, lora_support/")
    args = p.parse_args(argv)
    print(shell_line(vllm_command("smollm2-135m", demo_sources(args.adapters), max_model_len=1024)))


if __name__ == "__main__":
    main()
