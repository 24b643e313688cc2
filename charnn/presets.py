"""The named presets of `charnn train --preset`: a model and its training options, each with the figure that
chose it. Not the plan that is used without a preset (`charnn.training.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charnn.config import ModelConfig


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: dict[str, Any]
    note: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        ModelConfig(model="lstm", layers=2, hidden=128, embed=64, dropout=0.0, layer_norm=True),
        # layer norm + weight decay 0.1: 1.734 -> 1.569 val nats/char in the same 2,500 steps (docs/benchmarks.md)
        dict(batch_size=16, seq_len=64, lr=3e-3, warmup_iters=50, weight_decay=0.1, max_iters=2500, eval_every=500),
        "about a minute on a laptop CPU; recognisable Shakespeare-like text",
    ),
    "small": Preset(
        ModelConfig(model="lstm", layers=2, hidden=256, embed=128, dropout=0.0, layer_norm=True),
        # Many small updates beat few large ones at a fixed CPU budget: 240 s sweeps in docs/benchmarks.md
        # (batch 64 x 128: 1.643, 32 x 128: 1.556, 16 x 128: 1.506, 16 x 64: 1.483 val nats/char); layer norm
        # on the output with weight decay 0.1 took 16 x 64 from 1.486 to 1.422 (each alone: 1.463, 1.483).
        dict(batch_size=16, seq_len=64, lr=3e-3, warmup_iters=50, weight_decay=0.1, max_iters=8000, eval_every=1000),
        "the default: about 5 minutes on a 2-core CPU",
    ),
    "medium": Preset(
        ModelConfig(model="lstm", layers=3, hidden=512, embed=256, dropout=0.2),
        dict(batch_size=64, seq_len=128, lr=2e-3, warmup_iters=100, max_iters=5000, eval_every=500),
        "a GPU, or a long CPU run",
    ),
    "large": Preset(
        ModelConfig(model="lstm", layers=3, hidden=1024, embed=256, dropout=0.3),
        dict(batch_size=128, seq_len=256, lr=1.5e-3, warmup_iters=200, max_iters=10000, eval_every=500),
        "a big GPU",
    ),
}
