"""lora_helpers: one base LLM, interchangeable LoRA adapters ("сменные насадки").

The public API lives here and nowhere else; README.md ("The package's layout") says which module does what.
"""
from .errors import (
    AdapterError, AdapterExistsError, AdapterFileError, AdapterNotFoundError, BaseMismatchError,
    BaseModelError, MergeError, PromptError, StorageError, ServeError, AdapterNotServedError,
    UntrainedAdapterWarning,
)
# -- module exports (one line per module) --
from .base import PRESETS, load_base
from .embedded import cache_dir
from .notebook_setup import in_colab, pick_device, setup
from .colab import mount_drive
from .generate import generate, route_and_generate
from .adapters import active_adapter, list_adapters, load_adapters, switch
from .storage import find_token, resolve_adapter, save_adapter
from .merge import MergeReport, merge_and_save
from .combine import combine_adapters
from .widgets import adapter_switcher, plot_sizes, show_replies
from .train import train_adapter
from .router import KeywordRouter, SemanticRouter, evaluate_router, make_router
from .shipped import DEMO_ADAPTERS
from .timing import median_time, tokens_per_second

# Modules that also run as scripts (python -m lora_helpers.serve) are imported on first use: importing them
# here would make runpy warn that the module was imported before it ran. The course's own tooling (demo
# adapters for other bases, evaluation, benchmarks) is in lora_helpers.course, which the core never imports.
_LAZY = {"RoutedClient": "serve", "shell_line": "serve", "vllm_command": "serve"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'lora_helpers' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
