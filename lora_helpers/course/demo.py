"""Course assets: the demo adapters for the current base, and a deliberately foreign adapter."""
from __future__ import annotations

import os
from pathlib import Path

from ..base import EMBEDDED_NAME
from ..errors import AdapterError, AdapterNotFoundError, StorageError
from ..shipped import DEMO_ADAPTERS

NAMES = ("json", "coding", "support")
TRAIN_STEPS_ENV = "LORA_HELPERS_DEMO_TRAIN"  # N: train the demo adapters on the spot with N steps (CI: QLoRA path)
LARGE = 1_000_000_000  # parameters: above this, the large-model recipe (Mistral-7B)
# 7B bases learn the form in far fewer, gentler steps than the 135M one (lr 2e-3 would wreck them); the
# time is an estimate for a Colab T4 (QLoRA, batch 4 x ~150 tokens, gradient checkpointing), not a measurement.
RECIPES_LARGE = {n: dict(r=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], steps=30,
                         lr=2e-4, batch_size=4) for n in NAMES}
T4_SECONDS_PER_STEP = 6.0


def demo_adapters(model, tokenizer, where: str = "session", progress: bool = True) -> dict:
    """``{name: source}`` of the course's three adapters for this base model.

    The embedded base (full or 4-bit) gets the adapters shipped in ``adapters/``. Any other base (Mistral-7B
    in Colab) gets adapters trained for it once and kept as ``session:<base>/lora_<name>`` — and on Drive
    too with ``where="drive"`` (mount it first with ``lh.mount_drive()``), where the next notebook or the
    next session finds them. Training (QLoRA on a 4-bit base) prints its expected time first. The base
    model is left without adapters. ``LORA_HELPERS_DEMO_TRAIN=N`` trains on the spot with N steps even on the
    embedded base: how CI runs the training branch.
    """
    from ..storage import resolve_adapter, save_adapter

    if where not in ("session", "drive"):
        raise AdapterError(f"where={where!r}: the demo adapters live in 'session' or 'drive'.")
    forced = _forced_steps()
    base = getattr(model, "name_or_path", "") or ""
    if base == EMBEDDED_NAME and forced is None:
        return dict(DEMO_ADAPTERS)
    slug = base.strip("/").replace("/", "--") or "base"
    if forced is not None:
        slug += f"--steps{forced}"
    places = ["drive", "session"] if where == "drive" else ["session"]
    sources = {}
    for name in NAMES:
        for place in places:
            try:
                resolve_adapter(f"{place}:{slug}/lora_{name}")
                sources[name] = f"{place}:{slug}/lora_{name}"
                break
            except (AdapterNotFoundError, StorageError):  # not saved there, or Drive not mounted
                continue
    missing = [n for n in NAMES if n not in sources]
    if not missing:
        return sources
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    trained = _train(model, tokenizer, missing, forced, progress, drive=where == "drive")
    for name in missing:
        save_adapter(trained, name, where="session", path_or_repo=f"{slug}/lora_{name}")
        sources[name] = f"session:{slug}/lora_{name}"
        if where == "drive":
            try:
                save_adapter(trained, name, where="drive", path_or_repo=f"{slug}/lora_{name}")
                sources[name] = f"drive:{slug}/lora_{name}"
            except StorageError as e:
                print(f"Адаптер {name} не сохранён на Drive ({e}); он есть в папке сессии.")
    _restore(trained.unload(), dtypes)  # the LoRA layers out of the base again, and QLoRA's preparation undone
    return sources


def _restore(base, dtypes: dict) -> None:
    """Undo what ``prepare_model_for_kbit_training`` left on the base after training: the fp32 copies of its
    unquantized layers (embeddings, norms, lm_head: ~0.5 GB more on a 7B model) and gradient checkpointing."""
    for n, p in base.named_parameters():
        if n in dtypes and p.dtype != dtypes[n]:
            p.data = p.data.to(dtypes[n])
    if getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()


def _forced_steps() -> int | None:
    value = os.environ.get(TRAIN_STEPS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise AdapterError(f"{TRAIN_STEPS_ENV}={value!r} must be a positive number of training steps (e.g. 3).")
    return int(value)


def _train(model, tokenizer, names, forced, progress, drive=False):
    from ..base import is_quantized
    from ..train import RECIPES, train_adapter

    large = model.num_parameters() > LARGE
    recipes = {n: dict((RECIPES_LARGE if large else RECIPES)[n]) for n in names}
    if forced is not None:
        for r in recipes.values():
            r["steps"] = forced
    steps = sum(r["steps"] for r in recipes.values())
    kind = "QLoRA (4-bit base)" if is_quantized(model) else "LoRA"
    print(f"Для этой базы нет готовых адаптеров {list(names)}: обучаю их сейчас ({kind}, {steps} шагов всего). "
          + (f"Оценка для T4: ~{steps * T4_SECONDS_PER_STEP / 60:.0f} мин (оценка, не замер). " if large else "")
          + ("Они сохранятся на Drive: в следующий раз обучать не придётся." if drive else
             "Чтобы обучать один раз, отметьте USE_DRIVE: адаптеры сохранятся на Drive."))
    trained = model
    for name in names:
        trained = train_adapter(trained, tokenizer, name, name, progress=progress, **recipes[name])
    return trained


def make_foreign_adapter(out_dir="alien_adapter", seed: int = 0) -> Path:
    """Save a LoRA adapter made for another (tiny, random) Mistral: the 'adapter from another base' mistake."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    other = MistralForCausalLM(MistralConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2))
    other.name_or_path = "tiny-random-mistral"
    peft_model = get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = "tiny-random-mistral"
    out = Path(out_dir)
    peft_model.save_pretrained(out, save_embedding_layers=False)  # no Hub lookup for the made-up base
    return out
