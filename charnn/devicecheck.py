"""The start-up self-check of a GPU backend that has computed wrong answers before (Apple's MPS: silent LSTM
bugs such as pytorch#92615): a fixed small batch through networks of charnn's shape on the device and on the
CPU, results compared. Not the choice of device (`charnn.runtime.pick_device` runs the check).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from charnn.errors import first_line

# Tiny fp32 nets agree across backends to about 1e-5; the silent MPS LSTM bugs were off by O(1).
SELF_CHECK_TOLERANCE = 1e-3


def self_check(
    device: torch.device,
    *,
    run: Callable[[torch.device], dict[str, torch.Tensor]] | None = None,
    tolerance: float = SELF_CHECK_TOLERANCE,
) -> str | None:
    """None when `run(device)` (default `reference_outputs`) gives what `reference_outputs` gives on the CPU,
    within `tolerance` (relative to each output's largest value, at least 1); otherwise why not, in a few words:
    an operation the device does not have, or outputs that differ."""
    want = reference_outputs(torch.device("cpu"))
    try:
        got = (run or reference_outputs)(device)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        return f"{type(err).__name__}: {first_line(err)}"
    for name, expected in want.items():
        value = got.get(name)
        if value is None or value.shape != expected.shape:
            return f"no {name}" if value is None else f"{name} of shape {tuple(value.shape)}"
        gap = (value.double() - expected.double()).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
        if not gap <= tolerance * scale:  # `not <=`: a NaN fails too
            return f"{name} differ from the CPU's by {gap:.3g}"
    return None


def reference_outputs(device: torch.device) -> dict[str, torch.Tensor]:
    """A fixed small batch through networks of charnn's shape on `device`, results back on the CPU: embedding,
    a two-layer batch-first LSTM, GRU and RNN with the state carried into a second chunk, layer norm, head,
    the loss's gradients, and the sampler's ops (an addmm and index_select into buffers, softmax, cumsum,
    searchsorted). The modules are built from the same seed whatever the device, without moving the caller's
    random number generators."""
    from torch import nn

    V, E, H, B, T = 11, 8, 16, 3, 12
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(V, (B, 2 * T), generator=gen)
    uniform = torch.rand(B, 1, generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        embed, norm, head = nn.Embedding(V, E), nn.LayerNorm(H), nn.Linear(H, V)
        rnns = {
            "lstm": nn.LSTM(E, H, 2, batch_first=True),
            "gru": nn.GRU(E, H, 2, batch_first=True),
            "rnn": nn.RNN(E, H, 2, batch_first=True),
        }
    for module in (embed, norm, head, *rnns.values()):
        module.to(device)
    x = x.to(device)
    out: dict[str, torch.Tensor] = {}
    for kind, rnn in rnns.items():
        first, state = rnn(embed(x[:, :T]))  # (B, T, H)
        second, _ = rnn(embed(x[:, T:]), state)
        logits = head(norm(torch.cat([first, second], dim=1)))  # (B, 2T, V)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
        grads = torch.autograd.grad(loss, list(rnn.parameters()))
        out[f"{kind} logits"] = logits.detach()
        out[f"{kind} gradients"] = torch.cat([g.reshape(-1) for g in grads])
    with torch.no_grad():
        table = torch.empty(B, V, device=device)
        torch.index_select(head.weight.t().contiguous()[:B], 0, x[:, 0] % B, out=table)  # (B, V)
        step = torch.addmm(head.bias, first[:, -1], head.weight.t(), out=torch.empty(B, V, device=device))
        cdf = (step + table).softmax(dim=-1).cumsum(dim=-1)  # (B, V)
        out["sampler steps"] = step + table
        out["draws"] = torch.searchsorted(cdf, uniform.to(device) * cdf[:, -1:], right=True).float()
    return {name: value.detach().float().cpu() for name, value in out.items()}
