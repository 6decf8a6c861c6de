"""Run copies of the course notebooks with the T4-numerics check installed in their kernel."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tools"))

from notebooks_for_base import NOTEBOOKS, prepare  # noqa: E402

GUARD_CELL = f"""import sys
sys.path.insert(0, {str(HERE)!r})
import torch, finite_guard
torch.set_num_threads(1)   # small matmuls on a busy machine: no OpenMP threads fighting
finite_guard.install()"""
# 04's own loop computes its loss from the logits (no labels to the model, so the guard sees none): its list
# `losses` is reported where the notebook has one, else what the guard recorded.
REPORT_CELL = ("import json; _l = globals().get('losses'); print('T4-LOSSES', json.dumps([float(x) for x in _l] "
               "if isinstance(_l, list) else finite_guard.losses()))")


def copies(out_dir, fields: dict, names=NOTEBOOKS, edit=None) -> list[Path]:
    """Notebook copies (form fields replaced, see tools/notebooks_for_base.py) that install the check first and
    print the training losses last; ``edit(name, cell)`` may change a copy's cells (a planted failure)."""
    paths = prepare(out_dir, fields, names)
    for path in paths:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if edit is not None:
                edit(path.name, cell)
        extra = [{"cell_type": "code", "id": cell_id, "metadata": {}, "source": src, "outputs": [],
                  "execution_count": None} for cell_id, src in (("t4-guard", GUARD_CELL), ("t4-report", REPORT_CELL))]
        nb["cells"] = extra[:1] + nb["cells"] + extra[1:]
        path.write_text(json.dumps(nb, ensure_ascii=False, indent=1))
    return paths


def execute(path: Path, env: dict, timeout: int = 600) -> list[float]:
    """Run the copy top to bottom in a fresh kernel (its folder as the working directory); return the losses
    the check recorded. A cell's error (a dtype mismatch, a non-finite output) raises CellExecutionError."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
                       ).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        nbformat.write(nb, path)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    return json.loads(text.split("T4-LOSSES", 1)[1])
