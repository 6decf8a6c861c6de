"""A small random model with the embedded base's architecture and tokenizer, saved in nf4 computing in fp16
(what a T4 computes): every notebook runs on it in seconds, so each cell's dtype path is exercised."""
from __future__ import annotations

from pathlib import Path

import torch

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)  # 64: the smallest width bitsandbytes quantizes


def build(folder, compute: torch.dtype = torch.float16) -> Path:
    """Write the small nf4 model computing in ``compute`` (its unquantized layers in it too) and the embedded
    tokenizer into ``folder``; return it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from lora_helpers.base import embedded_folder

    source, folder = embedded_folder(), Path(folder)
    config = AutoConfig.from_pretrained(source, **SMALL)
    torch.manual_seed(0)
    full = folder.with_name(folder.name + "-fp32")
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(full)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(full, dtype=compute, quantization_config=quant,
                                                 device_map={"": "cpu"})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder
