"""Train a LoRA adapter on (prompt, reply) pairs; ``python -m lora_helpers.course.train_demo --all``
rebuilds the demo adapters with it.

The loss counts only the assistant reply (and the end-of-turn token): the prompt, wrapped in the chat
template exactly as :func:`lora_helpers.generate` wraps it, is masked out. The same function runs QLoRA
when the base is loaded in 4/8-bit (``peft.prepare_model_for_kbit_training``; on a GPU, or on the CPU
with bitsandbytes' CPU backend as in ``make test-4bit``).
"""
from __future__ import annotations

import inspect
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import _unpack_cpu_4bit, is_quantized
from .errors import AdapterError, PromptError
from .generate import chat_text, pad_id
from .modes import eval_mode, kept_modes
from .names import require_new
from .notebook_setup import quiet_known_warnings
from .switching import switch

IGNORE = -100

# Recipes for the shipped demo adapters (python -m lora_helpers.course.train_demo --all), chosen by held-out pass rate
# within the ~15 min budget on 2 CPU cores; what was tried is in the README. json copies names and numbers
# more faithfully with every linear layer adapted (9.8 MB); coding and support learn their form on q/v alone.
RECIPES = {
    "json": dict(r=8, alpha=16, target_modules="all-linear", steps=80, lr=2e-3, batch_size=8),
    "coding": dict(r=8, alpha=16, target_modules=["q_proj", "v_proj"], steps=40, lr=2e-3, batch_size=8),
    "support": dict(r=8, alpha=16, target_modules=["q_proj", "v_proj"], steps=60, lr=2e-3, batch_size=8),
}


def _pair(example) -> tuple[str, str]:
    if isinstance(example, dict):
        return example["prompt"], example["reply"]
    prompt, reply = example
    return prompt, reply


def encode_example(tokenizer, prompt: str, reply: str, system: str | None = None,
                   max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of prompt (chat template) + reply + end of turn, and labels with the prompt masked (-100).

    Prompt and reply are tokenized separately, as at generation time: the model sees the templated
    prompt's tokens and then produces the reply's tokens.
    """
    if tokenizer.eos_token_id is None:
        raise AdapterError("The tokenizer has no eos token, so the adapter could not learn where a reply ends.")
    p_ids = tokenizer(chat_text(tokenizer, prompt, system), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(reply.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if max_length is not None and len(p_ids) + len(r_ids) > max_length:
        if len(p_ids) >= max_length - 1:
            raise PromptError(f"A training prompt has {len(p_ids)} tokens with the chat template, over "
                              f"max_length={max_length}: shorten it or raise max_length. Prompt: {prompt[:80]!r}")
        r_ids = r_ids[:max_length - len(p_ids)]
    return p_ids + r_ids, [IGNORE] * len(p_ids) + r_ids


def collate(rows, pad_id: int) -> dict:
    """Left-pad encoded rows into a batch (replies end together, as in ``generate``'s left-padded batches)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, width - len(x):] = torch.tensor(x)
        labels[i, width - len(y):] = torch.tensor(y)
        mask[i, width - len(x):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


def batch_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the labelled (reply) tokens.

    Only the last positions that can hold reply tokens get logits (``logits_to_keep``): the prompt part
    needs no vocabulary projection, which is a large share of a small model's compute.
    """
    device = model.device if hasattr(model, "device") else next(model.parameters()).device
    labels = batch["labels"].to(device)
    labelled = (labels != IGNORE).any(0).nonzero()
    keep = labels.shape[1] - int(labelled[0]) + 1 if len(labelled) else 1
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                position_ids=batch["position_ids"].to(device), logits_to_keep=keep)
    logits = out.logits[:, :-1].float()
    target = labels[:, labels.shape[1] - keep + 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def reply_loss(model, tokenizer, examples, batch_size: int = 8, max_length: int = 384) -> float:
    """Mean reply-token loss of ``model`` on ``examples`` (eval mode meanwhile; nothing is trained)."""
    rows = [encode_example(tokenizer, *_pair(e), max_length=max_length) for e in examples]
    pad = pad_id(tokenizer)
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            n = sum(sum(t != IGNORE for t in y) for _, y in chunk)
            total += float(batch_loss(model, collate(chunk, pad))) * n
            count += n
    return total / max(count, 1)


def _batches(rows, batch_size: int, steps: int, seed: int):
    """``steps`` batches from seeded shuffles, epoch after epoch; similar lengths share a batch (less padding)."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        idx = list(range(len(rows)))
        rng.shuffle(idx)
        window = batch_size * 8
        idx = [i for w in range(0, len(idx), window) for i in sorted(idx[w:w + window], key=lambda i: len(rows[i][0]))]
        groups = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
        rng.shuffle(groups)
        order += [i for g in groups for i in g]
    for s in range(steps):
        yield [rows[i] for i in order[s * batch_size:(s + 1) * batch_size]]


def _attach(model, name: str, config):
    """Add a new adapter ``name``: to an existing PeftModel, or wrap a plain (maybe 4-bit) base."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
        model.base_model.enable_adapter_layers()  # undo an earlier switch to "base" / disable_adapter
        model.set_adapter(name)  # PEFT's own call for training: the only active adapter, and trainable
        return model
    with quiet_known_warnings():  # PEFT's calls of transformers' deprecated names: nothing a learner can change
        if is_quantized(model):  # QLoRA: fp32 norms, input grads, gradient checkpointing
            # PEFT 0.22 renamed gradient_checkpointing_kwargs (the old name warns); 0.20-0.21 know only that one
            kwarg = ("activation_checkpointing_kwargs" if "activation_checkpointing_kwargs" in
                     inspect.signature(prepare_model_for_kbit_training).parameters else "gradient_checkpointing_kwargs")
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                    **{kwarg: {"use_reentrant": False}})
        return get_peft_model(model, config, adapter_name=name)


def train_adapter(model, tokenizer, examples, name: str, r: int = 8, alpha: int = 16, target_modules=None,
                  steps: int = 40, lr: float = 2e-3, batch_size: int = 8, seed: int = 0, max_length: int = 384,
                  dropout: float = 0.05, warmup: int | None = None, progress: bool = True):
    """Train a new LoRA adapter ``name`` on ``examples`` and return the PeftModel with it active.

    Afterwards each module's train/eval flag and each parameter's ``requires_grad`` are as they were (also after
    an error); the new adapter's layers take the flag of the module they sit in, and its weights are frozen.

    ``examples``: dicts with ``prompt`` and ``reply`` (or (prompt, reply) pairs), or a demo behaviour name
    ("json", "coding", "support") for the shipped training data. ``model``: a plain base (it gets
    wrapped), a 4/8-bit base (QLoRA), or a PeftModel that already holds other adapters (the new
    one is added beside them; they are not changed). ``target_modules=None`` uses PEFT's default for the
    architecture (q_proj and v_proj for Llama/Mistral). Steps use AdamW, linear warmup then linear decay.
    """
    from peft import LoraConfig

    require_new(model, name)  # before any work: the examples are not even read
    if isinstance(examples, str):
        from .shipped import load_examples
        examples = load_examples(examples)
    examples = list(examples)
    if not examples:
        raise AdapterError("No training examples given: pass a list of {'prompt': ..., 'reply': ...}.")
    rows = [encode_example(tokenizer, *_pair(e), max_length=max_length) for e in examples]
    pad = pad_id(tokenizer)

    torch.manual_seed(seed)  # the LoRA A matrices are initialised from it
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        bias="none", task_type="CAUSAL_LM")
    given = model
    with kept_modes(given, training=True, grads=True):  # PEFT freezes every base weight; put the user's back
        model = _attach(given, name, config)
        _unpack_cpu_4bit(model)  # a model loaded elsewhere may have been repacked by a generation
        losses, seconds = _train(model, name, rows, pad, steps, lr, batch_size, seed, warmup, progress)
    if model is not given:  # a plain base was wrapped: the new wrappers take its flag
        model.training = model.base_model.training = given.training
    switch(model, name)  # ready for inference: this adapter runs, every adapter weight frozen again
    tail = losses[-min(5, len(losses)):]
    print(f"[{name}] loss в конце: {sum(tail) / len(tail):.3f} (среднее последних шагов: {len(tail)}); "
          f"всего шагов: {len(losses)}, время: {seconds:.0f} с")
    return model


def _train(model, name, rows, pad, steps, lr, batch_size, seed, warmup, progress) -> tuple[list[float], float]:
    """The optimisation loop over adapter ``name``'s weights: the losses and the seconds it took."""
    from tqdm.auto import tqdm

    target_modules = model.peft_config[name].target_modules
    params = [p for n, p in model.named_parameters() if p.requires_grad and f".{name}." in n]
    if not params:
        raise AdapterError(f"Adapter {name!r} has no trainable parameters: check target_modules={target_modules}.")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10) if warmup is None else warmup
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))

    model.train()  # the wrappers PEFT added too
    losses: list[float] = []
    start = time.perf_counter()
    # TQDM_DISABLE read now and passed explicitly: tqdm reads it once, when it is first imported (often before
    # a notebook sets or clears it), and uses that as its default
    quiet = not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
    bar = tqdm(_batches(rows, batch_size, steps, seed), total=steps, desc=f"LoRA {name}", disable=quiet)
    for batch in bar:
        loss = batch_loss(model, collate(batch, pad))
        if not math.isfinite(loss.item()):
            raise AdapterError(f"Training {name!r} hit a non-finite loss at step {len(losses) + 1}: lower lr={lr}.")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) == 1:
            print(f"[{name}] loss в начале: {losses[0]:.3f}")
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return losses, time.perf_counter() - start


def save_adapter_folder(model, name: str, folder) -> Path:
    """Save adapter ``name`` as a plain PEFT folder (adapter_config.json + adapter_model.safetensors).

    PEFT puts a non-default adapter into ``folder/name/``; this writes it into ``folder`` itself, atomically
    (see :func:`lora_helpers.save_adapter`), without the generated model card.
    """
    from .storage import _write_local
    return _write_local(model, name, Path(folder), allow_pickle=False, card=False)
