"""Copies of the notebooks for a run on another base or runtime (the 4-bit GPU branch in `make test`,
Colab's versions in `make test-colab`): every cell must run without error, and stored outputs are compared
only in cells tagged both `nbval-check-output` and `any-base` (what does not depend on the model).

    python tools/notebooks_for_base.py OUT_DIR [--same-base] [NAME=VALUE ...]

NAME=VALUE pairs replace a notebook's form fields (`USE_DRIVE = False  #@param ...` -> `USE_DRIVE = True`;
`TRAIN_STEPS=3`: notebook 04 trains its adapter for 3 steps, a short but real run). `--same-base` keeps
every `nbval-check-output` tag: `make test` runs such copies on the base the stored outputs came from.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01_load_switch_adapters.ipynb", "02_merge_adapter.ipynb", "03_router_demo.ipynb",
             "04_own_router_project.ipynb")


def prepare(out_dir, fields: dict | None = None, names=NOTEBOOKS, same_base: bool = False) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        nb = json.loads((ROOT / name).read_text())
        for cell in nb["cells"]:
            tags = cell.get("metadata", {}).get("tags", [])
            if not same_base and "nbval-check-output" in tags and "any-base" not in tags:
                tags.remove("nbval-check-output")
            if cell["cell_type"] == "code" and fields:
                src = "".join(cell["source"])
                for key, value in fields.items():
                    src = re.sub(rf"^({re.escape(key)}\s*=\s*)[^#\n]*?(\s*#@param.*)?$", rf"\g<1>{value}\g<2>", src,
                                 flags=re.M)
                cell["source"] = src.splitlines(keepends=True)
        path = out / name
        path.write_text(json.dumps(nb, ensure_ascii=False, indent=1) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    args = sys.argv[2:]
    pairs = dict(a.split("=", 1) for a in args if a != "--same-base")
    for p in prepare(sys.argv[1], pairs, same_base="--same-base" in args):
        print(p)
