"""lora_helpers: one base LLM, interchangeable LoRA adapters ("сменные насадки").

The public API lives here and nowhere else; README.md ("The package's layout") says which module does what.
"""
from .errors import (
    AdapterError, AdapterExistsError, AdapterFileError, AdapterNotFoundError, BaseMismatchError,
    BaseModelError, MergeError, PromptError, StorageError, ServeError, AdapterNotServedError,
)
# -- module exports (one line per module) --
from .base import PRESETS, cache_dir, in_colab, load_base, pick_device, setup
from .colab import mount_drive
from .generate import generate, route_and_generate
from .adapters import active_adapter, list_adapters, load_adapters, switch
from .storage import find_token, resolve_adapter, save_adapter
from .merge import MergeReport, merge_and_save
from .combine import combine_adapters
from .widgets import adapter_switcher, plot_sizes, show_replies
# course tooling (lora_helpers.course): demo adapters and data, timing for the notebooks
from .course.demo import demo_adapters, make_foreign_adapter
from .course.demo_data import DEMO_ADAPTERS
from .course.timing import median_time, tokens_per_second
from .router import KeywordRouter, SemanticRouter, evaluate_router, make_router

# Modules that also run as scripts (python -m lora_helpers.train / .serve / .course.evaluate) are imported on
# first use: importing them here would make runpy warn that the module was imported before it ran.
_LAZY = {"RoutedClient": "serve", "shell_line": "serve", "vllm_command": "serve",
         "train_adapter": "train", "evaluate_adapters": "course.evaluate"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'lora_helpers' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
