"""A model in eval (or train) mode for one call, each module's own state put back afterwards.

``Module.eval()``/``train()`` set every submodule's flag alike, so calling them around a step loses a mixed state
(some submodules training, others not); PEFT's calls also reset ``requires_grad``. :func:`kept_modes` records
both and restores them exactly, also after an error. A leaf: it imports nothing from the package.
"""
from __future__ import annotations

from contextlib import contextmanager


def recorded(model, grads: bool = False):
    """Record each module's ``training`` flag (and, with ``grads=True``, each parameter's ``requires_grad``);
    returns a function that puts them back exactly (``Module.train``, parents first)."""
    modes = [(m, m.training) for m in model.modules()]  # parents before children
    params = [(p, p.requires_grad) for p in model.parameters()] if grads else []

    def put_back() -> None:
        for m, flag in modes:  # a parent's train() resets its children, then they are fixed in turn
            if m.training != flag:
                m.train(flag)
        for p, flag in params:
            if p.requires_grad != flag:
                p.requires_grad_(flag)

    return put_back


@contextmanager
def kept_modes(model, training: bool = False, grads: bool = False):
    """``with kept_modes(model):`` runs the block with ``model`` in eval mode (``training=True``: train mode).

    On leaving, also after an error, each module's own ``training`` flag is put back (:func:`recorded`); a module
    added inside the block takes the flag of the nearest recorded module around it. ``grads=True`` also puts
    back each recorded parameter's ``requires_grad``.
    """
    put_back = recorded(model, grads)
    if any(m.training != training for m in model.modules()):
        model.train(training)
    try:
        yield
    finally:
        put_back()


def eval_mode(model):
    """``with eval_mode(model):`` the model runs in eval mode inside the block (:func:`kept_modes`)."""
    return kept_modes(model, training=False)
