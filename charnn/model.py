"""The network: embedding -> stacked nn.LSTM / nn.GRU / nn.RNN (cuDNN on GPU) -> linear head, and the loss.

Batch-first throughout. `forward(x, hidden) -> (logits, hidden)`; the fast one-step path used for
sampling lives in `charnn.sample`, reading these same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from charnn.config import GATES, ModelConfig

RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CharRNN(nn.Module):
    """Character-level recurrent language model over a vocabulary of `vocab_size` symbols."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.embed)
        extra = {"nonlinearity": "tanh"} if cfg.model == "rnn" else {}
        self.rnn = RNN_CLASSES[cfg.model](
            cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0, **extra)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=1.0)
        bound = 1 / math.sqrt(self.cfg.hidden)
        for name, p in self.rnn.named_parameters():
            nn.init.uniform_(p, -bound, bound)
            if self.cfg.model == "lstm" and name.startswith("bias_ih"):
                # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): remember by default.
                with torch.no_grad():
                    p[self.cfg.hidden:2 * self.cfg.hidden].fill_(1.0)
        nn.init.uniform_(self.head.weight, -bound, bound)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """x: (B, T) ids -> logits (B, T, V) and the hidden state after the last step."""
        out, hidden = self.rnn(self.embed(x), hidden)  # (B, T, H)
        return self.head(self.drop(out)), hidden  # (B, T, V)

    def initial_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        device = device or self.head.weight.device
        zeros = torch.zeros(self.cfg.layers, batch_size, self.cfg.hidden, device=device)
        return (zeros, zeros.clone()) if self.cfg.model == "lstm" else zeros


def state_shapes(cfg: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The names and shapes of `CharRNN(cfg, vocab_size).state_dict()`, by arithmetic: the checkpoint loader
    checks a file against them before allocating anything (building the module, even on the meta device,
    costs a second of imports; tests/test_model.py checks the two agree)."""
    G, H, V = GATES[cfg.model], cfg.hidden, vocab_size
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (V, cfg.embed)}
    for layer in range(cfg.layers):
        shapes[f"rnn.weight_ih_l{layer}"] = (G * H, cfg.embed if layer == 0 else H)
        shapes[f"rnn.weight_hh_l{layer}"] = (G * H, H)
        shapes[f"rnn.bias_ih_l{layer}"] = (G * H,)
        shapes[f"rnn.bias_hh_l{layer}"] = (G * H,)
    shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
    return shapes


def detach_hidden(hidden: Hidden | None) -> Hidden | None:
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats per character; targets of -100 are ignored (padding)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           reduction=reduction, ignore_index=-100)
