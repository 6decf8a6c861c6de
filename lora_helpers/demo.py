"""Course assets: the demo adapters for the current base, and a deliberately foreign adapter."""
from __future__ import annotations

from pathlib import Path

from .adapters import DEMO_ADAPTERS
from .base import EMBEDDED_NAME


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
    peft_model.save_pretrained(out)
    return out
