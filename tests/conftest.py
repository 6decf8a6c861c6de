import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny matmuls on a busy 2-core machine are ~50x faster without OpenMP threads fighting.

    Real-model tests (marker ``real``) keep torch's own thread count: their larger matmuls gain from it.
    """
    if request.node.get_closest_marker("real"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny.make_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A fresh tiny random Mistral for each test (tests may inject adapters into it)."""
    return tiny.make_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2 base (converted once into the cache), shared by real-behaviour tests.

    Tests must not leave adapters in it: use ``embedded_fresh`` for that.
    """
    import lora_helpers as lh
    return lh.load_base("smollm2-135m")


@pytest.fixture
def embedded_fresh():
    import lora_helpers as lh
    return lh.load_base("smollm2-135m")
