"""How logits become the next symbol: temperature, top-k, top-p, greedy, and the inverse-CDF draw with one seeded
uniform per stream and step. Every sampler calls these (`charnn sample`'s paths, the CUDA graph, the server's
batch); the playground page's `choose` (charnn/export/model.js) mirrors them. Not the model's step
(`charnn.sampling.stepper`), nor a beam search's scores (`charnn.sampling.beam`).
"""

from __future__ import annotations

import bisect
import math
import os
import struct

import torch

from charnn.config import SampleConfig
from charnn.errors import SamplingError
from charnn.runtime import nondeterministic_allowed

UNIFORM_BLOCK = 4096  # uniforms are drawn this many steps at a time, the same way on every path
NON_FINITE = "non-finite probabilities while sampling; the model's outputs overflow"

_F32 = struct.Struct("f")


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (or a head's weight and bias, whose products are then scaled logits) divided by the temperature,
    in a new tensor. The fast stepper scales its head once with this instead of every step's logits."""
    return logits / temperature


def seeded_generator(seed: int | None) -> torch.Generator:
    """The CPU generator a sample's uniforms come from; no seed: fresh entropy for this generator only
    (torch.seed() would reseed the global generators of a caller)."""
    gen = torch.Generator(device="cpu")
    return gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)


def uniforms(gen: torch.Generator, left: int, streams: int) -> torch.Tensor:
    """The next block of uniforms on the CPU, (steps, streams) for min(UNIFORM_BLOCK, left) steps: drawn the same
    way on every path (greedy draws them too), so a seed gives the same text on each."""
    return torch.rand(min(UNIFORM_BLOCK, left), streams, generator=gen)


def filtered_cdf(logits: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    """Cumulative probabilities (B, V) of scaled logits (B, V) after top-k and top-p filtering (not normalised:
    the last column is each row's total)."""
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= cfg.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    if probs.is_cuda and torch.are_deterministic_algorithms_enabled():
        # --deterministic: PyTorch flags CUDA's floating-point cumsum (pytorch#75240), which would stop a
        # training run at its first sample; the draw's same-text tests (tests/test_gpu.py) cover it
        with nondeterministic_allowed():
            return probs.cumsum_(-1)
    return probs.cumsum_(-1)  # (B, V), in place: probs is ours


def inverse_cdf(cdf: torch.Tensor, uniform: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Ids (B, 1) from cumulative probabilities (B, V) and one uniform (B, 1) per row.

    right=True: the first index whose cdf exceeds u * total, so a filtered-out (zero-probability) symbol is
    never drawn, not even for u == 0; the clamp covers u * total rounding up to the total."""
    total = cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, uniform * total, right=True, out=out).clamp_(max=cdf.shape[-1] - 1)


def choose(
    logits: torch.Tensor, uniform: torch.Tensor, cfg: SampleConfig, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Next ids (B, 1) from scaled logits (B, V), one uniform (B, 1) per stream: argmax when greedy, else the
    inverse CDF of the filtered distribution. A SamplingError when the probabilities are not finite."""
    if cfg.greedy:
        return torch.argmax(logits, dim=-1, keepdim=True, out=out)
    cdf = filtered_cdf(logits, cfg)
    total = cdf[:, -1:]
    # One host read per step (a sum of positive totals is finite iff each is); the CUDA graph reads its flag
    # once per block instead (`choose_in_graph`).
    if not math.isfinite(total.item() if total.shape[0] == 1 else float(total.sum())):
        raise SamplingError(NON_FINITE)
    return inverse_cdf(cdf, uniform, out=out)


def choose_in_graph(
    cfg: SampleConfig, logits: torch.Tensor, uniform: torch.Tensor, out: torch.Tensor
) -> torch.Tensor | None:
    """`choose` as captured in a CUDA graph (`charnn.sampling.cudagraph.GraphStep`), the ids written to `out`:
    the host cannot be read there, so it returns a 0-dim flag of non-finite totals (None when greedy) that
    the graph accumulates and checks once per block."""
    if cfg.greedy:
        torch.argmax(logits, dim=-1, keepdim=True, out=out)
        return None
    cdf = filtered_cdf(logits, cfg)
    bad = ~torch.isfinite(cdf[:, -1:]).all()
    inverse_cdf(cdf, uniform, out=out)
    return bad


def choose_one(logits: torch.Tensor, uniform: float, cfg: SampleConfig) -> int:
    """`choose` for one stream (logits (1, V)) as a Python int, the search done on the host with `bisect`:
    the same symbol, the threshold u * total rounded to fp32 as the tensor path's product is."""
    if cfg.greedy:
        return int(logits.argmax())
    cdf = filtered_cdf(logits, cfg).tolist()[0]  # (V,) floats
    if not math.isfinite(cdf[-1]):
        raise SamplingError(NON_FINITE)
    return min(bisect.bisect_right(cdf, _F32.unpack(_F32.pack(uniform * cdf[-1]))[0]), len(cdf) - 1)
