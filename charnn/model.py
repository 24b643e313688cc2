"""The network: embedding -> stacked nn.LSTM / nn.GRU / nn.RNN (cuDNN on GPU) -> [layer norm] -> linear head
(optionally tied to the embedding), locked dropout, weight drop, and the loss.

Batch-first throughout. `forward(x, hidden) -> (logits, hidden)`. Also the one definition of the cells'
arithmetic: a readable step of each kind (`lstm_cell`, `gru_cell`, `rnn_cell`), which `charnn.inspect` runs; their
gate layout (`CELLS`) and the weights' shapes are arithmetic without torch, in `charnn.shapes`. Not the sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from charnn.config import ModelConfig
from charnn.shapes import CELLS, WEIGHT_NAMES

RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


# --- one step of each cell, as nn.LSTM / nn.GRU / nn.RNN compute it -------------------------------------------
# x_proj = W_ih x + b_ih and h_proj = W_hh h + b_hh, both (..., G*H) in the blocks' order; h and c (..., H) are
# the previous state. An LSTM or RNN uses only x_proj + h_proj, so a caller may move b_hh into x_proj.


def lstm_cell(x_proj: torch.Tensor, h_proj: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (h, c): c = f * c + i * g, h = o * tanh(c), with i, f, o sigmoid gates and g a tanh candidate."""
    pre = x_proj + h_proj  # (..., 4H)
    i, f, _, o = torch.sigmoid(pre).chunk(4, dim=-1)  # one op for the three gates (g's share is unused)
    g = torch.tanh(pre.chunk(4, dim=-1)[2])
    c = torch.addcmul(f * c, i, g)  # f * c + i * g
    return o * torch.tanh(c), c


def gru_cell(x_proj: torch.Tensor, h_proj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """-> h = (1 - z) * n + z * h, with n = tanh(x_n + r * h_n): the reset gate r scales the recurrent part
    of the candidate, bias included (hence `hh_bias_apart`)."""
    x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
    h_r, h_z, h_n = h_proj.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(torch.addcmul(x_n, r, h_n))  # tanh(x_n + r * h_n)
    return n + z * (h - n)  # (1 - z) * n + z * h


def rnn_cell(x_proj: torch.Tensor, h_proj: torch.Tensor) -> torch.Tensor:
    """-> h = tanh(x_proj + h_proj)."""
    return torch.tanh(x_proj + h_proj)


def gate_values(kind: str, x_proj: torch.Tensor, h_proj: torch.Tensor) -> dict[str, torch.Tensor]:
    """The sigmoid gates of a step (or of many: the projections may be (T, G*H)), by name -> (..., H)."""
    cell = CELLS[kind]
    blocks = dict(zip(cell.blocks, torch.sigmoid(x_proj + h_proj).chunk(cell.count, dim=-1), strict=True))
    return {name: blocks[name] for name in cell.gates}


class LayerWeights(NamedTuple):
    """Layer k of a stacked nn.LSTM/GRU/RNN: weight_ih (G*H, I), weight_hh (G*H, H), bias_ih and bias_hh (G*H,)."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor
    b_hh: torch.Tensor


def layer_weights(rnn: nn.Module, layer: int) -> LayerWeights:
    return LayerWeights(*(getattr(rnn, f"{name}_l{layer}") for name in WEIGHT_NAMES))


def set_layer_weights(rnn: nn.Module, layer: int, weights: LayerWeights) -> None:
    """Copy `weights` into layer `layer` of `rnn` (no gradient)."""
    with torch.no_grad():
        for name, w in zip(WEIGHT_NAMES, weights, strict=True):
            getattr(rnn, f"{name}_l{layer}").copy_(w)


class LockedDropout(nn.Module):
    """Variational ("locked") dropout (Gal & Ghahramani 2016; AWD-LSTM, Merity et al. 2017): one Bernoulli mask
    per sequence, the same at every time step, scaled by 1/(1-p); the identity in eval mode or with p = 0.

    x: (..., T, F), the time axis second to last -> the mask is (..., 1, F), broadcast over T. Dropping a
    feature for a whole sequence, rather than anew at each step, is what keeps it from being smoothed away.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"locked dropout probability must be in [0, 1), not {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(*x.shape[:-2], 1, x.shape[-1]).bernoulli_(1 - self.p)  # (B, 1, F)
        return x * mask.div_(1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class CharRNN(nn.Module):
    """Character-level recurrent language model over a vocabulary of `vocab_size` symbols."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.embed)
        extra = {"nonlinearity": "tanh"} if cfg.model == "rnn" else {}
        self.rnn = RNN_CLASSES[cfg.model](
            cfg.embed,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            **extra,
        )
        self.locked = LockedDropout(cfg.locked_dropout)  # no weights: nothing in the state dict
        self.ln = nn.LayerNorm(cfg.hidden) if cfg.layer_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, vocab_size)
        if cfg.tie_weights:
            # One Parameter in two places (Press & Wolf 2017; Inan et al. 2017): parameters() yields it once,
            # state_dict() under both names (the checkpoint stores both copies and checks they agree).
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.cfg.hidden)
        if self.cfg.tie_weights:
            # The shared matrix gets the output layer's init, uniform +-1/sqrt(H): as a head it must start with
            # small logits and a loss near ln V (the embedding's std 1 would make them about sqrt(3H) times
            # larger), and as an embedding a small start is what AWD-LSTM and word_language_model use with
            # tying (uniform +-0.1, about +-1/sqrt(H) for their sizes).
            nn.init.uniform_(self.embed.weight, -bound, bound)
        else:
            nn.init.normal_(self.embed.weight, std=1.0)
        for name, p in self.rnn.named_parameters():
            nn.init.uniform_(p, -bound, bound)
            if self.cfg.model == "lstm" and name.startswith("bias_ih"):
                # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): remember by default.
                H, forget = self.cfg.hidden, CELLS["lstm"].blocks.index("forget")
                with torch.no_grad():
                    p[forget * H : (forget + 1) * H].fill_(1.0)
        if not self.cfg.tie_weights:  # drawn after the recurrent weights: a seed gives the weights it always gave
            nn.init.uniform_(self.head.weight, -bound, bound)
        if self.cfg.layer_norm:
            self.ln.reset_parameters()  # gain 1, bias 0
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """x: (B, T) ids -> logits (B, T, V) and the hidden state after the last step."""
        out, hidden = run_rnn(self.recurrence(), self.locked(self.embed(x)), hidden)  # (B, T, H)
        return self.output(out), hidden  # (B, T, V)

    def recurrence(self) -> Callable[..., tuple[torch.Tensor, Hidden]]:
        """The stacked recurrent layers as this forward runs them: with weight drop in training, each layer's
        hidden-to-hidden matrix with its own dropout mask (scaled by 1/(1-p), so evaluation uses the weights as
        they are), drawn once per call and fed to the same fused kernel; otherwise the layers themselves."""
        p = self.cfg.weight_drop
        if not self.training or p == 0.0:
            return self.rnn
        from torch.func import functional_call  # training only: sampling's start-up does not import it

        dropped = {
            f"weight_hh_l{k}": F.dropout(getattr(self.rnn, f"weight_hh_l{k}"), p) for k in range(self.cfg.layers)
        }
        return lambda x, hidden: functional_call(self.rnn, dropped, (x, hidden))

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """The last layer's output h (..., T, H) -> logits (..., T, V): layer norm (if on), locked dropout,
        dropout, the head. Shared by `forward` and `charnn.inspect`'s step loop.

        Locked dropout comes after the layer norm: before it, the norm would re-centre and re-scale the
        masked vector, so dropped units would not read as zero and the 1/(1-p) scaling would be undone.
        """
        return self.head(self.drop(self.locked(self.ln(h))))


VOCAB_ROWS = ("embed.weight", "head.weight", "head.bias")  # the tensors with one row per symbol


@torch.no_grad()
def copy_trained(model: CharRNN, trained: CharRNN) -> None:
    """Every weight of `trained` into `model`, whose vocabulary is `trained`'s followed by new symbols: their
    rows (the last V - V0 of the embedding and the head) keep `model`'s fresh initialisation, every other
    value is copied exactly. The two configs must agree on every shape."""
    old = trained.state_dict()
    for name, value in model.state_dict().items():  # tied weights: the shared matrix is written twice, alike
        source = old[name]
        rows = value.shape[0] >= source.shape[0] if name in VOCAB_ROWS else value.shape[0] == source.shape[0]
        if not rows or value.shape[1:] != source.shape[1:]:
            raise ValueError(f"{name}: {tuple(source.shape)} does not fit {tuple(value.shape)}")
        if name in VOCAB_ROWS:
            value[: source.shape[0]].copy_(source)
        else:
            value.copy_(source)


def run_rnn(rnn: nn.Module, x: torch.Tensor, hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
    """rnn(x, hidden), except under CUDA bf16 autocast, where the recurrence runs in fp32 (on TF32 tensor cores).

    PyTorch's autocast sends cuDNN RNNs to fp16 whatever dtype it was asked for (its wrapper for _cudnn_rnn,
    aten/src/ATen/cudnn/AutocastRNN.cpp, casts input, weights and state to half), and a bf16 run has no loss
    scaling, which fp16 gradients need. The embedding and the head keep the autocast dtype (bf16). Under fp16
    autocast (cards without bf16, `charnn.runtime.autocast_dtype`) training scales its loss, so the recurrence
    is left in fp16 on the tensor cores. The CPU's autocast is left alone: its LSTM runs in bf16 as asked.
    """
    if x.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") != torch.float16:
        with torch.autocast("cuda", enabled=False):
            return rnn(x.float(), hidden)
    return rnn(x, hidden)


def detach_hidden(hidden: Hidden | None) -> Hidden | None:
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


def zero_streams(hidden: Hidden | None, fresh: torch.Tensor | None) -> Hidden | None:
    """The state with the streams (rows) where `fresh` (B,) is True set to zero, the state every stream starts
    from; the others are kept. `fresh` None: the state as it is."""
    if hidden is None or fresh is None:
        return hidden
    rows = fresh[:, None]  # (B, 1), broadcast over (L, B, H)
    if isinstance(hidden, tuple):
        return tuple(h.masked_fill(rows, 0.0) for h in hidden)
    return hidden.masked_fill(rows, 0.0)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats per character; targets of -100 are ignored (padding)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction=reduction, ignore_index=-100
    )
