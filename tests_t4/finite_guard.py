"""The T4-numerics check: while it is installed, every module's floating-point output must be finite.

A global forward hook sees every forward pass in the process (generation, training, merges, their checks),
so a notebook cell that overflows fp16 fails where it happens; a dtype mismatch fails by itself. Losses that
models return (a loop that passes ``labels``) are recorded for the falling-loss check.
"""
from __future__ import annotations

import weakref

import torch

_LOSSES: list[float] = []
_last = None  # the last recorded loss: PEFT's wrappers return the same tensor again
_handle = None


class NonFiniteError(RuntimeError):
    """A module produced inf or NaN."""


def _tensors(output):
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


def _check(module, args, output):
    for t in _tensors(output):
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            raise NonFiniteError(f"{type(module).__name__} returned a {t.dtype} tensor {tuple(t.shape)} with "
                                 f"{int((~torch.isfinite(t.detach())).sum())} non-finite values")
    loss = output.get("loss") if isinstance(output, dict) else None  # transformers' ModelOutput is a dict
    global _last
    if isinstance(loss, torch.Tensor) and loss.requires_grad and (_last is None or _last() is not loss):
        _last = weakref.ref(loss)
        _LOSSES.append(float(loss))


def install() -> None:
    """Check every forward pass from now on (idempotent)."""
    global _handle
    if _handle is None:
        _handle = torch.nn.modules.module.register_module_forward_hook(_check)


def remove() -> None:
    global _handle, _last
    _last = None
    if _handle is not None:
        _handle.remove()
        _handle = None
    _LOSSES.clear()


def losses() -> list[float]:
    """Training losses seen so far (one per forward that returned a loss with a graph)."""
    return list(_LOSSES)
