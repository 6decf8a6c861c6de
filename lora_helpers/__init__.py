"""lora_helpers: one base LLM, interchangeable LoRA adapters ("сменные насадки").

The public API lives here and nowhere else; see DESIGN.md.
"""
from .errors import (
    AdapterError, AdapterExistsError, AdapterFileError, AdapterNotFoundError, BaseMismatchError,
    BaseModelError, MergeError, PromptError, StorageError,
)
# -- module exports (one line per module) --
from .base import PRESETS, cache_dir, in_colab, load_base, pick_device, setup
from .generate import generate, route_and_generate
from .adapters import DEMO_ADAPTERS, active_adapter, list_adapters, load_adapters, switch
from .storage import find_token, resolve_adapter, save_adapter
from .merge import MergeReport, combine_adapters, merge_and_save
from .widgets import adapter_switcher, plot_sizes, show_replies
from .demo import demo_adapters, make_foreign_adapter
from .timing import median_time, tokens_per_second
from .router import KeywordRouter, SemanticRouter, evaluate_router, make_router
from .serve import RoutedClient, shell_line, vllm_command
from .train import train_adapter
from .evaluate import evaluate_adapters
