"""A notebook's one setup call: seeds, quiet logs, the device; and the warnings other libraries give about each
other, which a learner can do nothing about (silenced by message and module only)."""
from __future__ import annotations

import importlib.util
import logging
import os
import random
import warnings
from contextlib import contextmanager

import torch


class _DropKernelHubNotice(logging.Filter):
    """bitsandbytes >= 0.50, on CPUs with AVX512-BF16, tries at import to fetch a faster CPU kernel from the Hub
    through the `kernels` package (which transformers >= 5.2x installs), and uses its built-in kernel when that
    fails: offline, or the publisher's trust unverified. Both libraries log it; nothing for a learner to act on.
    Every other warning of theirs passes."""

    NOTICES = ("Failed to load CPU gemm_4bit_forward from kernels-community",
               "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


# installed before anything imports peft (which imports bitsandbytes); a filter acts on its own logger only
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(_DropKernelHubNotice())

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


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


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
