"""The start-up self-check of a GPU backend that has computed wrong answers before (Apple's MPS: silent LSTM
bugs such as pytorch#92615 and #190056): a fixed small batch through networks of charnn's shape on the device
and on the CPU, results compared, and an LSTM's gradients with dropout between its layers against finite
differences on the device. Not the choice of device (`charnn.runtime.pick_device` runs the check).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from charnn.errors import first_line

# Tiny fp32 nets agree across backends to about 1e-5; the silent MPS LSTM bugs were off by O(1).
SELF_CHECK_TOLERANCE = 1e-3
# A derivative by finite differences in fp32 agrees with backward's to about 1e-3 here; a backward that ignores
# the dropout mask between an LSTM's layers (MPS up to PyTorch 2.13: pytorch#190056) was off by about 1.
GRADIENT_TOLERANCE = 0.05


def self_check(
    device: torch.device,
    *,
    run: Callable[[torch.device], dict[str, torch.Tensor]] | None = None,
    tolerance: float = SELF_CHECK_TOLERANCE,
    gradient_gap: Callable[[torch.device], float] | None = None,
) -> str | None:
    """None when `run(device)` (default `reference_outputs`) gives what `reference_outputs` gives on the CPU,
    within `tolerance` (relative to each output's largest value, at least 1), and `gradient_gap(device)` (default
    `dropout_gradient_gap`) is within GRADIENT_TOLERANCE; otherwise why not, in a few words: an operation the
    device does not have, outputs that differ, or gradients that do not match the loss they came from."""
    want = reference_outputs(torch.device("cpu"))
    try:
        got = (run or reference_outputs)(device)
        gap = (gradient_gap or dropout_gradient_gap)(device)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        return f"{type(err).__name__}: {first_line(err)}"
    if not gap <= GRADIENT_TOLERANCE:  # `not <=`: a NaN fails too
        return f"lstm gradients with dropout between layers differ from finite differences by {gap:.0%}"
    for name, expected in want.items():
        value = got.get(name)
        if value is None or value.shape != expected.shape:
            return f"no {name}" if value is None else f"{name} of shape {tuple(value.shape)}"
        gap = (value.double() - expected.double()).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
        if not gap <= tolerance * scale:  # `not <=`: a NaN fails too
            return f"{name} differ from the CPU's by {gap:.3g}"
    return None


def dropout_gradient_gap(device: torch.device, make: Callable[[], torch.nn.Module] | None = None) -> float:
    """How far backward's derivative of a two-layer LSTM (default; `make` builds another) with dropout 0.5
    between its layers, in training mode, is from the same derivative by central differences, relative to the
    latter: the output's sum, along a fixed random direction of the input, the random generator reseeded before
    each forward so that every forward draws the same dropout mask. A device whose backward ignores the mask
    misses by about 1 or more; the CPU's by about 1e-3. Compared within the device, not against the CPU: the two
    draw different masks."""
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lstm = (make or (lambda: nn.LSTM(4, 8, 2, dropout=0.5)))().to(device).train()
        x, direction = torch.randn(2, 6, 3, 4)
        x, direction = x.to(device), direction.to(device)

        def loss(inp: torch.Tensor) -> torch.Tensor:
            torch.manual_seed(1)  # the same dropout mask in every forward
            return lstm(inp)[0].sum()

        inp = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(inp), inp)
        analytic = float((grad * direction).sum())
        eps = 1e-2
        with torch.no_grad():
            numeric = float(loss(x + eps * direction) - loss(x - eps * direction)) / (2 * eps)
    return abs(analytic - numeric) / max(abs(numeric), 1e-3)


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
