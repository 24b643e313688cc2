"""The model's tensors by arithmetic, without torch: each cell kind's gate layout, the names and shapes of a
model's weights, and its number of parameters. The plan sizes models with them and the checkpoint loader checks
a file against them before anything is allocated; `charnn.model` builds the modules they describe."""

from __future__ import annotations

import math
from dataclasses import dataclass

from charnn.config import ModelConfig


@dataclass(frozen=True)
class CellLayout:
    """The gate layout of a cell kind. A layer's weight_ih, weight_hh, bias_ih and bias_hh stack one block of
    H rows per entry of `blocks`, in this order (PyTorch's; see the nn.LSTM / nn.GRU / nn.RNN docs)."""

    blocks: tuple[str, ...]  # the blocks in weight order
    gates: tuple[str, ...]  # the blocks squashed by a sigmoid; the others are tanh candidates
    hh_bias_apart: bool = False  # the recurrent bias cannot be summed into the input's (GRU: r multiplies it)

    @property
    def count(self) -> int:
        """G: a layer's weights have G * H rows."""
        return len(self.blocks)


CELLS: dict[str, CellLayout] = {  # PyTorch's letters: LSTM i f g o, GRU r z n
    "lstm": CellLayout(blocks=("input", "forget", "candidate", "output"), gates=("input", "forget", "output")),
    "gru": CellLayout(blocks=("reset", "update", "candidate"), gates=("reset", "update"), hh_bias_apart=True),
    "rnn": CellLayout(blocks=("candidate",), gates=()),  # Elman, tanh
}

WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # LayerWeights' fields, as nn.RNNBase names them


def state_shapes(cfg: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The names and shapes of `CharRNN(cfg, vocab_size).state_dict()`, by arithmetic: the checkpoint loader
    checks a file against them before allocating anything (building the module, even on the meta device,
    costs a second of imports; tests/test_model.py checks the two agree)."""
    H, V = cfg.hidden, vocab_size
    rows = CELLS[cfg.model].count * H
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (V, cfg.embed)}
    for layer in range(cfg.layers):
        inputs = cfg.embed if layer == 0 else H
        for name, shape in zip(WEIGHT_NAMES, [(rows, inputs), (rows, H), (rows,), (rows,)], strict=True):
            shapes[f"rnn.{name}_l{layer}"] = shape
    if cfg.layer_norm:
        shapes["ln.weight"] = (H,)
        shapes["ln.bias"] = (H,)
    shapes["head.weight"] = (V, H)  # with tie_weights, a second copy of embed.weight (the loader checks)
    shapes["head.bias"] = (V,)
    return shapes


def num_parameters(cfg: ModelConfig, vocab_size: int) -> int:
    """The number of trainable parameters of `CharRNN(cfg, vocab_size)` (a tied matrix counted once)."""
    shapes = state_shapes(cfg, vocab_size)
    if cfg.tie_weights:
        del shapes["head.weight"]  # the embedding itself
    return sum(math.prod(shape) for shape in shapes.values())
