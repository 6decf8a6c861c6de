import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import finite_guard  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """fp16 matmuls on a busy 2-core machine: OpenMP threads fighting for the cores cost up to 5x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def guard():
    """The T4-numerics check for one test: every forward pass in it must give finite outputs."""
    finite_guard.install()
    yield finite_guard
    finite_guard.remove()
