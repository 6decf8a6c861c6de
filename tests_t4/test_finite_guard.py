"""The check itself: it fails an fp16 overflow that float32 computes fine, and records each training loss once."""
import pytest
import torch

import finite_guard


def test_an_fp16_overflow_fails_where_float32_passes(guard):
    layer = torch.nn.Linear(4, 4)
    torch.nn.init.ones_(layer.weight)
    x = torch.full((1, 4), 3e4)  # each output ~1.2e5: over fp16's largest, 65504
    assert torch.isfinite(layer(x)).all()  # float32: fine
    with pytest.raises(finite_guard.NonFiniteError, match=r"Linear returned a torch.float16 tensor \(1, 4\)"):
        layer.half()(x.half())


def test_nothing_is_checked_once_removed():
    finite_guard.install()
    finite_guard.remove()
    torch.nn.Identity()(torch.tensor([float("nan")]))


def test_each_training_loss_is_recorded_once(guard):
    """A wrapper that returns its inner model's output (as PEFT's does) does not count the loss twice."""
    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return {"loss": (self.w * x).sum()}

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x)

    model = Wrapper()
    for value in (2.0, 1.0):
        model(torch.tensor([value]))["loss"].backward()
    with torch.no_grad():
        model(torch.tensor([5.0]))  # evaluation: no graph, not a training loss
    assert finite_guard.losses() == [2.0, 1.0]
