"""Dynamic evaluation (Krause et al., 2018): a text scored as one stream, segment by segment, where after scoring
each segment the model takes one gradient step on it and is pulled back a share of the way toward its trained
weights, so it adapts to the text as it reads it. Every character is scored before any step has seen it.

A copy of the model adapts: the loaded weights, and the run's files, stay as they were. Not static scoring
(`charnn.evaluate`), whose figures are never mixed with these.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from charnn.config import DynamicConfig
from charnn.evaluate import PerChar
from charnn.model import CharRNN, detach_hidden, lm_loss


@dataclass(frozen=True)
class DynamicResult(PerChar):
    """Totals of a dynamic evaluation, and what it cost."""

    chars: int  # predictions scored
    total_nats: float
    seconds: float
    extra_bytes: int  # about what it holds beyond static scoring: weight copies, gradients, a segment's graph
    cfg: DynamicConfig

    def as_dict(self) -> dict[str, float | int]:
        """Its own keys (`dynamic_...`), never the static figures' names."""
        return {
            "chars": self.chars,
            "dynamic_nats_per_char": self.loss,
            "dynamic_bits_per_char": self.bpc,
            "dynamic_perplexity": self.perplexity,
            "dynamic_lr": self.cfg.dynamic_lr,
            "dynamic_decay": self.cfg.dynamic_decay,
            "dynamic_segment": self.cfg.dynamic_segment,
            "seconds": round(self.seconds, 3),
            "extra_memory_bytes": self.extra_bytes,
        }


def evaluate_dynamic(model: CharRNN, ids: np.ndarray, cfg: DynamicConfig) -> DynamicResult:
    """Score predictions of ids[1:] from all the text before them (one stream from a zero state), adapting a
    copy of `model` after each `cfg.dynamic_segment` characters: w <- w - lr * grad + decay * (w_trained - w),
    the gradient of the segment's mean loss. In fp32, dropout off; deterministic (no random draw)."""
    started = time.perf_counter()
    n = len(ids) - 1
    device = model.head.weight.device
    adapting = copy.deepcopy(model).float().eval()
    params = [p for p in adapting.parameters() if p.requires_grad]
    trained = [p.detach().clone() for p in params]
    data = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)
    total = 0.0
    hidden = None
    # cuDNN's RNN backward runs only in training mode (dropout would then be on): its native kernels instead
    kernels = torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else nullcontext()
    with kernels, torch.enable_grad():
        for s0 in range(0, n, cfg.dynamic_segment):
            s1 = min(s0 + cfg.dynamic_segment, n)
            logits, hidden = adapting(data[s0:s1][None], hidden)
            loss = lm_loss(logits, data[s0 + 1 : s1 + 1][None], reduction="sum")
            total += float(loss.detach())
            adapting.zero_grad(set_to_none=True)
            (loss / (s1 - s0)).backward()
            _step(params, trained, cfg)
            hidden = detach_hidden(hidden)
    return DynamicResult(max(n, 0), total, time.perf_counter() - started, _extra_bytes(model, cfg), cfg)


@torch.no_grad()
def _step(params: list[torch.nn.Parameter], trained: list[torch.Tensor], cfg: DynamicConfig) -> None:
    for p, w in zip(params, trained, strict=True):
        if p.grad is not None:
            p.add_(p.grad, alpha=-cfg.dynamic_lr)
        if cfg.dynamic_decay:
            p.add_(w - p, alpha=cfg.dynamic_decay)


def _extra_bytes(model: CharRNN, cfg: DynamicConfig) -> int:
    """The adapting copy, the trained weights kept to decay toward and the gradients (three fp32 copies of the
    weights), and one segment's graph (each layer's gates and outputs, the logits and their softmax)."""
    weights = 4 * sum(p.numel() for p in model.parameters())
    per_position = 4 * (3 * model.vocab_size + 8 * model.cfg.hidden * model.cfg.layers)
    return 3 * weights + cfg.dynamic_segment * per_position


def dynamic_file(loaded, path, cfg: DynamicConfig, *, skip_unknown: bool = False) -> tuple[DynamicResult, dict]:
    """Dynamic evaluation of a text file with a loaded model (decoded as its corpus was); and the unknown
    characters dropped (symbol -> count), as `charnn.evaluate.evaluate_file` reports them."""
    from charnn.data import read_ids

    ids, unknown = read_ids(path, loaded.vocab, loaded.data_cfg, skip_unknown=skip_unknown)
    return evaluate_dynamic(loaded.model, ids, cfg), unknown


def dynamic_validation(loaded, cfg: DynamicConfig) -> DynamicResult:
    """Dynamic evaluation of the run's own validation split (`charnn.evaluate.validation_ids`)."""
    from charnn.evaluate import validation_ids

    return evaluate_dynamic(loaded.model, validation_ids(loaded), cfg)
