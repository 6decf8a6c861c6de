"""A tiny random Mistral and an offline tokenizer for fast unit tests."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Return the answer as JSON with fields name and age.",
    "Верни JSON со схемой: имя, возраст, город.",
    "Write a Python function that reverses a string, fix the bug in this code.",
    "Напиши код на Python, который считает сумму списка.",
    "My order did not arrive, please help. Hello, sorry for the trouble.",
    "Здравствуйте, не могу войти в аккаунт, помогите пожалуйста.",
    "def add(a: int, b: int) -> int: return a + b  # {\"key\": [1, 2, 3]}",
]
SPECIAL = ["<pad>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(tok: PreTrainedTokenizerFast, seed: int = 0, **overrides) -> MistralForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    cfg.update(overrides)
    model = MistralForCausalLM(MistralConfig(**cfg)).eval()
    model.name_or_path = model.config._name_or_path = "tests/tiny-mistral"
    return model


def make_4bit(tok: PreTrainedTokenizerFast, folder, dtype=None):
    """The tiny Mistral (hidden 64, so bitsandbytes can quantize it) in nf4 on the CPU, loaded from ``folder``
    where it is saved first; ``dtype``: of the layers that stay unquantized (embeddings, norms, lm_head)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    make_model(tok, hidden_size=64, intermediate_size=128).save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": "cpu"},
                                                quantization_config=BitsAndBytesConfig(
                                                    load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                    bnb_4bit_compute_dtype=torch.float32))


def save_lora(folder, tok, seed: int, **lora_kw):
    """Save a PEFT LoRA adapter for the tiny model to ``folder`` and return it.

    ``lora_kw`` goes to ``LoraConfig`` (e.g. ``modules_to_save``, ``trainable_token_indices``, ``use_dora``).
    Every weight the adapter carries differs from the base (lora_B non-zero, modules_to_save copies and
    trainable-token rows perturbed), so an adapter that does not run shows in the logits.
    """
    from pathlib import Path

    from peft import LoraConfig, get_peft_model

    lora_kw.setdefault("r", 4)
    lora_kw.setdefault("lora_alpha", 2 * lora_kw["r"])
    lora_kw.setdefault("lora_dropout", 0.0)
    lora_kw.setdefault("init_lora_weights", False)
    base = make_model(tok)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(**lora_kw))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".modules_to_save." in name or "trainable_tokens_delta" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(folder), save_embedding_layers=False)
    return Path(folder)
