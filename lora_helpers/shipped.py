"""What the package ships in ``lora_helpers/data/`` (the wheel carries it): the demo adapters for the embedded
base (``data/adapters/lora_<name>/``; the repository's ``adapters/`` links there), the router's labelled
prompts, and the demo adapters' training data.

Training files: ``{behaviour}_train.jsonl`` (``{"prompt", "reply"}`` rows) and ``{behaviour}_heldout.jsonl``
(``{"prompt"}`` rows, plus ``"expect"`` for json: the values the reply must hold). Held-out prompts are
never trained on; ``tests/test_train.py`` checks that and that every training reply passes its own check.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import AdapterError

DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_DIR = DATA_DIR / "adapters"
BEHAVIOURS = ("json", "coding", "support")
SPLITS = ("train", "heldout")


def demo_sources(adapters_dir=None, names=BEHAVIOURS) -> dict:
    """The demo adapters as {name: folder}: ``lora_<name>/`` in ``adapters_dir`` (default: the shipped ones)."""
    root = Path(adapters_dir) if adapters_dir else SHIPPED_DIR
    return {n: root / f"lora_{n}" for n in names}


DEMO_ADAPTERS = demo_sources()


def data_file(behaviour: str, split: str = "train") -> Path:
    """Path of the jsonl file for ``behaviour`` ("json", "coding", "support") and ``split``."""
    if behaviour not in BEHAVIOURS:
        raise AdapterError(f"Unknown demo behaviour {behaviour!r}; expected one of {BEHAVIOURS}.")
    if split not in SPLITS:
        raise AdapterError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return DATA_DIR / f"{behaviour}_{split}.jsonl"


def load_examples(behaviour: str, split: str = "train") -> list[dict]:
    """The rows of one data file as dicts (``prompt`` and ``reply`` for train, ``prompt`` [+ ``expect``] held out)."""
    return load_labelled(data_file(behaviour, split).stem)


def load_labelled(name: str) -> list[dict]:
    """The rows of ``lora_helpers/data/<name>.jsonl`` as dicts (e.g. ``"router_examples"``, ``"json_train"``)."""
    with open(DATA_DIR / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
