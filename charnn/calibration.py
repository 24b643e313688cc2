"""The output's temperature, fitted on the validation split (--calibrate): one number that scales the logits.

A model trained for several passes over its text grows more confident than it should be on text it has not
seen: its training loss falls below its validation loss, and its probabilities are too sharp. Dividing the
logits by a temperature T above 1 (multiplying them by a scale 1/T) takes that back (temperature scaling: Guo
et al. 2017, "On Calibration of Modern Neural Networks"). Training fits the scale at each validation, on the
same pass that scores the split, and saves the model with it folded into the weights that make the logits: the
head's weight and bias, or with a tied head the layer norm's gain and bias and the head's bias. So every
consumer (sample, eval, beam search, the server, the exports) uses it without knowing of it, and the checkpoint
format is unchanged. A tied head without a layer norm has nowhere to fold it and keeps the scale 1.

The pass scores each candidate scale exactly, a few around the last fitted one (`candidates`), and 1 always,
so the figure saved is never worse than the uncalibrated one. One number fitted on the validation split, as the
best checkpoint is chosen on it: on tiny shakespeare a temperature fitted on one half of the split and scored on
the other keeps 0.004-0.007 of the 0.007-0.010 nats/char it gains (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from charnn.config import ModelConfig
from charnn.model import CharRNN

# Multiples of the last fitted scale scored at the next validation: fine near it (a step of 0.01 costs at most
# about 0.00003 nats/char near the best) and wide enough to follow a run, whose best scale moves by a few
# hundredths between validations (on tiny shakespeare 0.92 at the first, about 0.88, a temperature of 1.13,
# after five passes).
SPREAD = (0.85, 0.92, 0.96, 0.98, 0.99, 1.0, 1.01, 1.02, 1.04, 1.08, 1.15)
LEAST, MOST = 0.25, 4.0  # the scales a fit may reach


def candidates(last: float) -> tuple[float, ...]:
    """The scales to score at a validation: SPREAD around `last`, and 1."""
    return tuple(sorted({1.0, *(round(min(max(last * m, LEAST), MOST), 4) for m in SPREAD)}))


def best_scale(totals: dict[float, float]) -> float:
    """The scale with the lowest total of `totals` (scale -> nats); 1 on a tie or where none is finite."""
    finite = {s: t for s, t in totals.items() if math.isfinite(t)}
    if not finite:
        return 1.0
    return min(finite, key=lambda s: (finite[s], s != 1.0))


def can_fold(cfg: ModelConfig) -> bool:
    """Whether a model of `cfg` can hold a scale in its weights: a tied head needs the layer norm for it."""
    return not cfg.tie_weights or cfg.layer_norm


def folded_names(cfg: ModelConfig) -> tuple[str, ...]:
    """The state-dict entries that `fold` scales."""
    return ("ln.weight", "ln.bias", "head.bias") if cfg.tie_weights else ("head.weight", "head.bias")


@torch.no_grad()
def fold(model: CharRNN, scale: float) -> None:
    """Make `model`'s logits `scale` times what they are, in its weights (see the module's note)."""
    if scale == 1.0:
        return
    if not can_fold(model.cfg):
        raise ValueError("a tied head without a layer norm cannot hold a logit scale")
    params = dict(model.named_parameters())
    for name in folded_names(model.cfg):
        params[name].mul_(scale)


@contextmanager
def scaled(model: CharRNN, scale: float) -> Iterator[dict[str, torch.Tensor]]:
    """`model` with `scale` folded in inside the block and its own weights, bit for bit, after it; yields the
    folded tensors as they were before (copies), which a training state keeps so a resume starts from them."""
    if scale == 1.0:
        yield {}
        return
    params = dict(model.named_parameters())
    before = {name: params[name].detach().clone() for name in folded_names(model.cfg)}
    fold(model, scale)
    try:
        yield before
    finally:
        unfold(model, before)


@torch.no_grad()
def unfold(model: CharRNN, before: dict[str, torch.Tensor]) -> None:
    """Put back the tensors `scaled` yielded (a training state's), where the model file holds them folded;
    ValueError if they do not fit `model`."""
    params = dict(model.named_parameters())
    for name, value in before.items():
        if name not in params or params[name].shape != value.shape:
            raise ValueError(f"{name} {tuple(value.shape)} does not fit the model")
        params[name].copy_(value.to(params[name].device, params[name].dtype))
