"""The course's own tooling, apart from the library core: demo adapters and data, held-out evaluation,
benchmarks, timing helpers for the notebooks, and the local vLLM runner."""
