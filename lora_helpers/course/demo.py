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
# 7B bases learn the form in far fewer, gentler steps than the 135M one (lr 2e-3 would wreck them). Sized so
# that the three of them train in under 5 minutes on a T4 by the estimate below.
RECIPES_LARGE = {n: dict(r=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], steps=20,
                         lr=2e-4, batch_size=4) for n in NAMES}
# The T4 estimate's one assumption, not a measurement: QLoRA on a 7B base in 4-bit with gradient checkpointing
# trains ~150 tokens per second, so a step of batch 4 x ~150 tokens takes ~4 s.
T4_TOKENS_PER_SECOND = 150
T4_TOKENS_PER_EXAMPLE = 150  # what the time table assumes (the printed estimate counts the real tokenizer's)


def demo_adapters(model, tokenizer, where: str = "session", progress: bool = True, names=NAMES) -> dict:
    """``{name: source}`` of the course's adapters for this base model: all three, or those in ``names``.

    The embedded base (full or 4-bit) gets the adapters shipped in ``adapters/``. Any other base (Mistral-7B
    in Colab) gets adapters trained for it once and kept as ``session:<base>/lora_<name>`` — and on Drive
    too with ``where="drive"`` (mount it first with ``lh.mount_drive()``), where the next notebook or the
    next session finds them. Only ``names`` are trained (e.g. ``names=("json",)``); on a 7B base the expected
    time on a T4 is printed first, and a progress bar shows the time left. The base model is left without
    adapters. ``LORA_HELPERS_DEMO_TRAIN=N`` trains on the spot with N steps even on the
    embedded base: how CI runs the training branch.
    """
    from ..storage import resolve_adapter, save_adapter

    if where not in ("session", "drive"):
        raise AdapterError(f"where={where!r}: the demo adapters live in 'session' or 'drive'.")
    names = _check_names(names)
    forced = _forced_steps()
    base = getattr(model, "name_or_path", "") or ""
    if base == EMBEDDED_NAME and forced is None:
        return {n: DEMO_ADAPTERS[n] for n in names}
    slug = base.strip("/").replace("/", "--") or "base"
    if forced is not None:
        slug += f"--steps{forced}"
    places = ["drive", "session"] if where == "drive" else ["session"]
    sources = {}
    for name in names:
        for place in places:
            try:
                resolve_adapter(f"{place}:{slug}/lora_{name}")
                sources[name] = f"{place}:{slug}/lora_{name}"
                break
            except (AdapterNotFoundError, StorageError):  # not saved there, or Drive not mounted
                continue
    missing = [n for n in names if n not in sources]
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


def _check_names(names) -> tuple:
    names = (names,) if isinstance(names, str) else names
    try:
        names = tuple(dict.fromkeys(names))
    except TypeError:
        names = ()
    if not names or not all(isinstance(n, str) and n in NAMES for n in names):
        raise AdapterError(f"names={names!r}: pass some of the demo adapters {NAMES}, e.g. names=('json',).")
    return names


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


def _ru(n: int, one: str, few: str, many: str) -> str:
    if n % 10 == 1 and n % 100 != 11:
        return f"{n} {one}"
    return f"{n} {few}" if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14 else f"{n} {many}"


def t4_estimate(recipes: dict, tokens: float) -> tuple[float, str]:
    """Seconds to train ``recipes`` ({name: recipe}) on a T4, and the sentence that says how it was counted:
    adapters x steps x seconds per step, a step being batch x ``tokens`` at ``T4_TOKENS_PER_SECOND``."""
    seconds = sum(r["steps"] * r["batch_size"] * tokens for r in recipes.values()) / T4_TOKENS_PER_SECOND
    shapes = {(r["steps"], r["batch_size"]) for r in recipes.values()}
    if len(shapes) == 1:
        (steps, batch), = shapes
        per_step = batch * tokens / T4_TOKENS_PER_SECOND
        count = f"{_ru(len(recipes), 'адаптер', 'адаптера', 'адаптеров')} × {_ru(steps, 'шаг', 'шага', 'шагов')}"
        how = f"батч {batch} × ~{tokens:.0f} токенов"
    else:
        steps = sum(r["steps"] for r in recipes.values())
        per_step = seconds / steps
        count, how = _ru(steps, "шаг", "шага", "шагов"), f"~{tokens:.0f} токенов на пример"
    return seconds, (f"{count} × ~{per_step:.0f} с/шаг (оценка для T4: {how}, QLoRA, ~{T4_TOKENS_PER_SECOND} "
                     f"токенов/с; не замер) ≈ {max(1, round(seconds / 60))} мин")


def _mean_tokens(tokenizer, names) -> float:
    from ..shipped import load_examples
    from ..train import encode_example
    lengths = [len(encode_example(tokenizer, e["prompt"], e["reply"], max_length=384)[0])
               for n in names for e in load_examples(n)]
    return sum(lengths) / len(lengths)


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
    estimate = f"Время: {t4_estimate(recipes, _mean_tokens(tokenizer, names))[1]}. " if large else ""
    print(f"Для этой базы нет готовых адаптеров {list(names)}: обучаю их сейчас ({kind}, "
          f"{_ru(steps, 'шаг', 'шага', 'шагов')} всего). "
          + estimate
          + ("Они сохранятся на Drive: в следующий раз обучать не придётся." if drive else
             "Чтобы обучать один раз, отметьте USE_DRIVE: адаптеры сохранятся на Drive."))
    trained = model
    for name in names:
        trained = train_adapter(trained, tokenizer, name, name, progress=progress, **recipes[name])
    return trained


# ----------------------------------------------------------------------------- the opening cell's time table
# What each notebook runs under Run all on a fresh Colab runtime (each notebook gets its own, so each downloads
# the base once): the demo adapters it asks demo_adapters for; how often it loads a ~4 GB base onto the GPU
# (lh.load_base(BASE), and a merged model read back); the merged weights it writes (02: PEFT's nf4 merge
# ~4.1 GB + lh.merge_and_save's fp16 ~14.5 GB); its own training (04: TRAIN_STEPS x BATCH of its recipe, ~58
# tokens a pair); the decode steps of its generate calls (max_new_tokens summed over the calls, a batch
# counted once; tokens_per_second runs 1 warm-up + 3 repeats per case), an upper bound: replies stop at EOS.
NOTEBOOK_RUNS = {
    "01": dict(adapters=NAMES, loads=1, write_gb=0.0, decode=3 * 96 * 3 + 96 * 4 + 2 * 24 + 2 * 4 * 32),
    "02": dict(adapters=NAMES, loads=3, write_gb=4.1 + 14.5, decode=3 * 64 + 3 * 4 * 32 + 80,
               small=0.5),  # 02's nf4 experiment on the embedded base: GGUF conversion + two small merges
    "03": dict(adapters=NAMES, loads=1, write_gb=0.0, decode=2 * 48 + 48 + 160 + 96),
    "04": dict(adapters=("json", "support"), loads=1, write_gb=0.0, decode=3 * 160 + 96,  # COURSE_ROUTES' default
               own=dict(steps=30, batch_size=8, tokens=58)),
}
NOTEBOOK_ADAPTERS = {key: run["adapters"] for key, run in NOTEBOOK_RUNS.items()}
T4_DOWNLOAD_GB = 4.1  # MISTRAL_4BIT's weights
# The T4 column's assumptions, not measurements (the course's machines have no GPU and no Hub access):
T4_DOWNLOAD_MB_S = 50  # Colab's usual Hub download speed
T4_LOAD_MINUTES = 1.0  # reading a ~4 GB 4-bit checkpoint from disk onto the GPU
T4_WRITE_MB_S = 150  # Colab's disk, writing safetensors shards
T4_DECODE_TOKENS_PER_S = 12  # greedy decoding of Mistral-7B in bitsandbytes nf4 on a T4, batch 1
# CPU (the embedded SmolLM2, shipped with its adapters: nothing to download; 04 trains its own): measured,
# minutes, with `nbconvert --execute` on 2 quiet cores, PEFT 0.22 / transformers 5.25 (2026-12-07: 01 88 s,
# 02 57 s, 03 38 s; 04 203 s, of which 1.9 min training, its first 1.5 min beside another notebook run);
# 02's merge ~9 s (2026-12-06).
CPU_MINUTES = {"01": dict(merge=0.0, total=1.5), "02": dict(merge=0.15, total=1.0),
               "03": dict(merge=0.0, total=0.6), "04": dict(train=1.9, merge=0.0, total=3.4)}


def _key(notebook) -> str:
    key = str(notebook)[:2]
    if key not in NOTEBOOK_RUNS:
        raise AdapterError(f"notebook={notebook!r}: expected one of {sorted(NOTEBOOK_RUNS)} (e.g. '01').")
    return key


def t4_minutes(notebook: str) -> dict:
    """Minutes of a first Run all on a Colab T4 (Mistral-7B in nf4), part by part, counted from what the
    notebook runs (``NOTEBOOK_RUNS``) at the ``T4_*`` rates: download, loads, demo training (and with Drive:
    ``train_drive``, its own training only), merge writes, decoding; ``total`` is their sum."""
    run = NOTEBOOK_RUNS[_key(notebook)]
    demo_train = t4_estimate({n: RECIPES_LARGE[n] for n in run["adapters"]}, T4_TOKENS_PER_EXAMPLE)[0] / 60
    own = run.get("own")
    own_train = t4_estimate({"own": own}, own["tokens"])[0] / 60 if own else 0.0
    parts = dict(download=T4_DOWNLOAD_GB * 1024 / T4_DOWNLOAD_MB_S / 60, load=run["loads"] * T4_LOAD_MINUTES,
                 train=demo_train + own_train, merge=run["write_gb"] * 1024 / T4_WRITE_MB_S / 60,
                 decode=run["decode"] / T4_DECODE_TOKENS_PER_S / 60, small=run.get("small", 0.0))
    return {**parts, "train_drive": own_train, "total": sum(parts.values())}


def time_table(notebook: str, cpu: dict | None = None) -> str:
    """A small Russian table for a notebook's opening cell: download, training, merge and total time on the
    CPU (measured: ``CPU_MINUTES``, or ``cpu={"merge": ..., "total": ...}`` in minutes) and on a Colab T4
    (:func:`t4_minutes`: an estimate counted from the notebook's own steps), then the line that says what the
    T4 figure counts. ``print(time_table("01"))``."""
    key = _key(notebook)
    c = {"train": 0.0, **CPU_MINUTES[key], **(cpu or {})}
    t, run = t4_minutes(key), NOTEBOOK_RUNS[key]

    def num(x, digits=0):
        return "—" if x is None else f"{x:.{digits}f}"

    drive = f"~{t['train_drive']:.0f}" if t["train_drive"] else "0"
    rows = [("Скачать, ГБ", "0", f"~{T4_DOWNLOAD_GB:.1f}"),
            ("Обучение адаптеров, мин", num(c["train"], 1) if c["train"] else "0",
             f"~{t['train']:.0f} ({drive} с Drive)"),
            ("Слияние, мин", num(c["merge"], 1), f"~{t['merge']:.0f}" if t["merge"] else "0"),
            ("Всего, мин", num(c["total"], 1), f"~{t['total']:.0f}")]
    head = ("Этап", "CPU (замер)", "T4 (оценка)")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    line = lambda r: "| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    trained = [*run["adapters"], *(["свой"] if run.get("own") else [])]
    counted = (f"Из чего сложена оценка T4: скачать базу один раз (~{t['download']:.1f} мин при "
               f"{T4_DOWNLOAD_MB_S} МБ/с), загрузить модель на GPU: {run['loads']} × ~{T4_LOAD_MINUTES:.0f} мин, "
               f"обучить адаптеры {', '.join(trained)} "
               f"(~{t['train']:.1f} мин, QLoRA ~{T4_TOKENS_PER_SECOND} токенов/с)"
               + (f", записать {run['write_gb']:.1f} ГБ слитых весов (~{t['merge']:.1f} мин)" if run["write_gb"]
                  else "")
               + f", сгенерировать до {run['decode']} токенов ответов (~{t['decode']:.1f} мин при "
               f"{T4_DECODE_TOKENS_PER_S} токенах/с)"
               + (f", опыт с 4-битной встроенной базой (~{t['small']:.1f} мин)" if t["small"] else "") + ".")
    return "\n".join([f"Ноутбук {key}: время (CPU — встроенная SmolLM2, адаптеры в комплекте; "
                       "T4 — Mistral-7B в 4 битах, оценка, не замер)",
                       line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows), "",
                       counted])


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
