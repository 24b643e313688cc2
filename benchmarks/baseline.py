"""What the training-speed benchmarks measure charnn against (imported by train_speed.py and gpu_grid.py).

`bare_loop`: forward + backward + clip + an Adam step of embedding -> nn.LSTM -> linear on resident random
data, no data pipeline and no logging: the ceiling for a shape. `synthetic_corpus`: a play-like text file for
charnn's own runs when no corpus is given.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

SYNTHETIC_LINE = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n\n"


def synthetic_corpus(path: Path, chars: int) -> Path:
    path.write_text((SYNTHETIC_LINE * (chars // len(SYNTHETIC_LINE) + 1))[:chars], encoding="utf-8")
    return path


def bare_loop(
    layers: int,
    hidden: int,
    embed: int,
    batch: int,
    seq: int,
    *,
    steps: int,
    warmup: int,
    device=None,
    bf16: bool = False,
    optimizer: str = "adam",
) -> float:
    """chars/s of the bare training step. `bf16`: the forward under bf16 autocast on the model's device (what
    charnn's `auto` precision does on CUDA and on CPUs with native bf16). `optimizer`: "adam" (the plain
    CPU ceiling: what a hand-written trainer's step costs) or "adamw" (fused on CUDA, as charnn's)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from charnn.model import run_rnn

    device = torch.device(device or "cpu")
    V = 65
    emb = nn.Embedding(V, embed).to(device)
    lstm = nn.LSTM(embed, hidden, layers, batch_first=True).to(device)
    head = nn.Linear(hidden, V).to(device)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=2e-3)
    else:
        opt = torch.optim.AdamW(params, lr=2e-3, fused=device.type == "cuda")
    x = torch.randint(V, (batch, seq), device=device)
    y = torch.randint(V, (batch, seq), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            out, _ = run_rnn(lstm, emb(x), None)  # the recurrence in fp32 under CUDA autocast, as charnn does
            loss = F.cross_entropy(head(out).reshape(-1, V).float(), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * seq * steps / (time.perf_counter() - t0)
