"""The vLLM integration test (`make test-serve`): runs in the course venv; vLLM runs as a separate
program from .venv-serve (`make serve-setup`), started on 127.0.0.1 by the test and always stopped."""
import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
