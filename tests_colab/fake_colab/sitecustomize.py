# Colab's kernels import google.colab at start; so does this stand-in (PYTHONPATH=tests_colab/fake_colab).
import google.colab  # noqa: F401
