"""The weights' exponential moving average (--average D): updated after every step, and validated, saved and
sampled in place of the weights as trained, which travel in the training state so that --resume continues the
run exactly. Not the optimizer (`charnn.training.step`) nor the loop that calls it (`charnn.training.loop`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from charnn.errors import CheckpointError
from charnn.model import CharRNN


class WeightAverage:
    """An exponential moving average of a model's parameters, in fp32 on the model's device.

    After step t (0-based) it moves towards the weights by 1 - d, with d = min(decay, (1 + t) / (10 + t)): the
    first steps' weights, far from any good ones, fade within tens of steps instead of a horizon of 1/(1 - decay)
    steps (the warmup of TensorFlow's ExponentialMovingAverage with num_updates): the average spans about
    (10 + t) / 9 steps until that reaches 1/(1 - decay). On CUDA a non-finite step counts as taken (the fused
    optimizer skips it on the device), so the average then moves towards the same weights once more."""

    def __init__(self, model: CharRNN, decay: float) -> None:
        """An average that starts at `model`'s weights (a new run's first, or a checkpoint's model file)."""
        self.decay = decay
        self.tensors = [p.detach().to(torch.float32, copy=True) for p in model.parameters()]  # a tied matrix once

    @torch.no_grad()
    def update(self, model: CharRNN, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.tensors, [p.detach().float() for p in model.parameters()], 1.0 - d)

    @contextmanager
    def applied(self, model: CharRNN) -> Iterator[dict[str, torch.Tensor]]:
        """The model holds the average inside the block and its trained weights again after it; yields the
        trained weights (its state dict, as copies) for the training state."""
        trained = {name: w.detach().clone() for name, w in model.state_dict().items()}
        with torch.no_grad():
            for p, w in zip(model.parameters(), self.tensors, strict=True):
                p.copy_(w)
        try:
            yield trained
        finally:
            model.load_state_dict(trained)


@contextmanager
def averaged(model: CharRNN, average: WeightAverage | None) -> Iterator[dict[str, torch.Tensor] | None]:
    """`average.applied(model)`, or the model as it is (yielding None) where the run keeps no average."""
    if average is None:
        yield None
        return
    with average.applied(model) as trained:
        yield trained


def load_trained(model: CharRNN, trained: dict[str, torch.Tensor]) -> None:
    """The weights as trained (a training state's, where the model file holds their average) into `model`;
    CheckpointError if they do not fit it."""
    device = next(model.parameters()).device
    try:
        model.load_state_dict({name: w.to(device) for name, w in trained.items()})
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"the trained weights do not fit this model ({err})") from None
