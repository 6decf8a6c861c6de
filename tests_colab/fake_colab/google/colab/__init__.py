"""A stand-in for Colab's `google.colab` package, for `make test-colab` only (never installed for users).

Drive answers as a learner who declines the permission dialog would (FAKE_COLAB_DRIVE=decline, the
default) or accepts it (=accept: a local folder plays /content/drive); `userdata` holds the Colab secrets
from FAKE_COLAB_SECRETS (JSON), e.g. an HF_TOKEN that cannot write.
"""
from . import drive, userdata  # noqa: F401
