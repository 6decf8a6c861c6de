"""Every notebook, top to bottom, as it is stored, on a small random model with the embedded base's architecture
and tokenizer in nf4 computing in fp16 (what a T4 computes): each cell's dtype path runs, and the check in the
kernel fails any forward pass that gives inf or NaN. The demo adapters are trained on the spot (QLoRA, 2 steps),
04 trains its own adapter in its own loop. A planted fp16-only failure in 04's loop is caught."""
import math

import pytest
import torch
from nbclient.exceptions import CellExecutionError

import run_notebooks
import small_base
from run_notebooks import NOTEBOOKS

FIELDS = {"TRAIN_STEPS": 3, "BATCH": 2}  # 04's loop: 3 short steps
NB04 = "04_own_router_project.ipynb"


@pytest.fixture(scope="session")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("t4-bases")
    return {dtype: small_base.build(root / str(dtype).removeprefix("torch."), dtype)
            for dtype in (torch.float16, torch.float32)}


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory):
    """One session folder for all notebooks: the demo adapters trained by the first are found by the next."""
    return tmp_path_factory.mktemp("t4-session")


def _env(base, session) -> dict:
    return {"LORA_HELPERS_BASE": str(base), "LORA_HELPERS_DEMO_TRAIN": "2", "LORA_SESSION_DIR": str(session),
            "TQDM_DISABLE": "1"}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_runs_at_fp16(name, bases, session_dir, tmp_path):
    [copy] = run_notebooks.copies(tmp_path, FIELDS, names=(name,))
    losses = run_notebooks.execute(copy, _env(bases[torch.float16], session_dir))
    assert all(math.isfinite(x) for x in losses)
    if name == NB04:  # its own PEFT loop passes labels: one loss per step
        assert len(losses) == FIELDS["TRAIN_STEPS"]


# Planted in 04's training loop: a float32 tensor added to the embeddings' fp16 output. Harmless where the model
# computes in float32 (what CI ran before), an error at fp16 (the head gets a float32 input).
PLANT = ("import torch as _t\n_plant = model.get_input_embeddings().register_forward_hook("
         "lambda module, args, out: out + _t.zeros(out.shape[-1]))\n")


PLANTED = []


def _planted(name, cell):
    if "train-loop" in cell.get("metadata", {}).get("tags", []):  # the loop cell, found by its tag
        cell["source"] = PLANT + "".join(cell["source"]) + "\n_plant.remove()\n"
        PLANTED.append(name)


def _upto_loop(path):
    """The copy cut after its training loop (and the losses report kept): the rest adds nothing here."""
    import json
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    last = max(i for i, c in enumerate(cells) if "train-loop" in c.get("metadata", {}).get("tags", []))
    nb["cells"] = cells[:last + 1] + cells[-1:]
    path.write_text(json.dumps(nb, ensure_ascii=False))


def test_a_planted_fp16_only_failure_in_04s_loop_is_caught(bases, session_dir, tmp_path):
    runs = {}
    for dtype, base in bases.items():
        [copy] = run_notebooks.copies(tmp_path / str(dtype), FIELDS, names=(NB04,), edit=_planted)
        _upto_loop(copy)
        try:
            runs[dtype] = run_notebooks.execute(copy, _env(base, session_dir))
        except CellExecutionError as e:
            runs[dtype] = e
    assert PLANTED == [NB04, NB04]
    assert len(runs[torch.float32]) == FIELDS["TRAIN_STEPS"]  # at float32 the plant changes nothing
    assert isinstance(runs[torch.float16], CellExecutionError)
    assert "dtype" in str(runs[torch.float16]) and "_plant" in str(runs[torch.float16])
