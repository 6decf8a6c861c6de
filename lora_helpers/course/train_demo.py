"""``python -m lora_helpers.course.train_demo --all``: retrain the demo adapters shipped in
``lora_helpers/data/adapters`` (the repository's ``adapters/``) on the embedded base, from a fixed seed."""
from __future__ import annotations

import time

from ..base import EMBEDDED_NAME, load_base
from ..notebook_setup import setup
from ..errors import AdapterError
from ..shipped import BEHAVIOURS, SHIPPED_DIR, demo_sources
from ..train import RECIPES, save_adapter_folder, train_adapter


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Train the demo adapters (fixed seed) on the embedded SmolLM2 base.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--all", action="store_true", help="train json, coding and support")
    g.add_argument("--only", nargs="+", choices=BEHAVIOURS, help="train only these")
    p.add_argument("--out", default=str(SHIPPED_DIR), help="folder for lora_<name>/ (default: the shipped ones)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    setup(args.seed)
    t0 = time.perf_counter()
    for name in (BEHAVIOURS if args.all else args.only):
        model, tok = load_base("smollm2-135m")
        if model.name_or_path != EMBEDDED_NAME:
            raise AdapterError(f"Expected the embedded base {EMBEDDED_NAME}, got {model.name_or_path}.")
        model = train_adapter(model, tok, name, name, seed=args.seed, **RECIPES[name])
        out = save_adapter_folder(model, name, demo_sources(args.out)[name])
        size = (out / "adapter_model.safetensors").stat().st_size / 2**20
        print(f"[{name}] saved {out} ({size:.2f} MB)")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
