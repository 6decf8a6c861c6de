"""The course's own tooling, apart from the library core (which never imports it): demo adapters for any
base (trained on the spot where none ship), a deliberately foreign adapter, held-out evaluation,
benchmarks, exercises, the snippet sandbox and the local vLLM runner."""
from .demo import demo_adapters, make_foreign_adapter

__all__ = ["demo_adapters", "make_foreign_adapter"]
