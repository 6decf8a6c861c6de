"""Course assets: the demo adapters for the current base, and a deliberately foreign adapter."""
from __future__ import annotations

from pathlib import Path

from ..base import EMBEDDED_NAME
from ..errors import AdapterNotFoundError
from .demo_data import DEMO_ADAPTERS

NAMES = ("json", "coding", "support")


def demo_adapters(model, tokenizer, where: str = "drive", progress: bool = True) -> dict:
    """``{name: source}`` of the course's three adapters for this base model.

    The embedded base gets the adapters shipped in ``adapters/``. Any other base (Mistral-7B in Colab)
    gets ``"<where>:<base>/lora_<name>"``: found there when saved earlier, otherwise trained now with
    ``train_adapter`` on the course's data (QLoRA on a 4-bit base, a few minutes on a T4) and saved there.
    The base model is left as it was (no adapters attached).
    """
    base = getattr(model, "name_or_path", "") or ""
    if base == EMBEDDED_NAME:
        return dict(DEMO_ADAPTERS)
    from ..storage import resolve_adapter, save_adapter
    from ..train import RECIPES, train_adapter

    slug = base.strip("/").replace("/", "--") or "base"
    sources = {n: f"{where}:{slug}/lora_{n}" for n in NAMES}
    missing = []
    for name, source in sources.items():
        try:
            resolve_adapter(source)
        except AdapterNotFoundError:
            missing.append(name)
    if missing:
        print(f"No saved adapters {missing} for {base} in {where}: training them now (this takes a while).")
        trained = model
        for name in missing:
            trained = train_adapter(trained, tokenizer, name, name, progress=progress, **RECIPES[name])
            save_adapter(trained, name, where=where, path_or_repo=f"{slug}/lora_{name}")
        trained.unload()  # take the LoRA layers out of the base again
    return sources


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
