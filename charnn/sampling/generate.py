"""Drawing text from a model: warm the state on the prime in one forward pass, then one recurrent step per
character on the carried state (O(1) work per character; the text so far is never re-run).

Two stepping paths give the same text for the same seed: `fast` (default) runs `charnn.sampling.stepper`'s kernel, a
few preallocated matrices and one addmm per layer per step; `module` calls the nn.LSTM/GRU/RNN itself. Not
the kernel: this module is the sampling API (prime, filtering, the draw, the stream of ids).
"""

from __future__ import annotations

import bisect
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from charnn.config import DataConfig, SampleConfig
from charnn.data import Vocab, iter_symbols, readable_file
from charnn.errors import ConfigError, DataError, SamplingError, VocabularyError
from charnn.model import CharRNN, Hidden
from charnn.runtime import autocast, autocast_dtype, ieee_rnn, nondeterministic_allowed
from charnn.sampling.cudagraph import GraphStep
from charnn.sampling.stepper import MEASURED, FastStepper, Tuning, few_threads

UNIFORM_BLOCK = 4096  # uniforms are drawn this many steps at a time, the same way on every path
PRIME_CHUNK = 4096  # a long prime runs through the model this many symbols at a time
PRIME_FILE_MAX = 16 << 20  # bytes of a prime file: far more than any state remembers, read in a second


def default_prime(vocab: Vocab) -> list[int]:
    """A start symbol for unprimed sampling: newline, else space, else the vocabulary's first symbol."""
    for sym in (10, 32):
        if sym in vocab.symbols:
            return [vocab.symbols.index(sym)]
    return [0]


def prime_ids(vocab: Vocab, prime: str | None) -> tuple[list[int], bool]:
    """(ids to warm the state on, whether they are echoed at the start of the output)."""
    if not prime:
        return default_prime(vocab), False
    data = prime.encode("utf-8", "surrogateescape") if vocab.bytes_mode else prime
    try:
        return vocab.encode(data).tolist(), True
    except VocabularyError as err:
        raise VocabularyError(f"--prime: {err}") from None


def _filtered_cdf(logits: torch.Tensor, cfg: SampleConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative probabilities (B, V) of scaled logits after top-k / top-p filtering, and their totals (B, 1)."""
    cdf = _cdf(logits, cfg)
    return cdf, cdf[:, -1:]


def _cdf(logits: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    """`_filtered_cdf`'s cumulative probabilities (B, V) alone."""
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= cfg.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    if probs.is_cuda and torch.are_deterministic_algorithms_enabled():
        # --deterministic: PyTorch flags CUDA's floating-point cumsum (pytorch#75240), which would stop a
        # training run at its first sample; the draw's same-text tests (tests/test_gpu.py) cover it
        with nondeterministic_allowed():
            cdf = probs.cumsum_(dim=-1)
    else:
        cdf = probs.cumsum_(dim=-1)  # (B, V), in place: probs is ours
    return cdf


def _choose(
    logits: torch.Tensor, uniform: torch.Tensor, cfg: SampleConfig, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Next ids (B, 1) from scaled logits (B, V) by inverse-CDF with one uniform (B, 1) per stream."""
    if cfg.greedy:
        return torch.argmax(logits, dim=-1, keepdim=True, out=out)
    cdf, total = _filtered_cdf(logits, cfg)
    # One host read per step (a sum of positive totals is finite iff each is); the CUDA graph path checks
    # once per block instead (`_graph_draw`).
    if not math.isfinite(total.item() if total.shape[0] == 1 else float(total.sum())):
        raise SamplingError("non-finite probabilities while sampling; the model's outputs overflow")
    return _draw(cdf, total, uniform, out)


def _draw(cdf: torch.Tensor, total: torch.Tensor, uniform: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Inverse CDF: ids (B, 1) from cumulative probabilities (B, V), their totals and uniforms (B, 1).

    right=True: the first index whose cdf exceeds u * total, so a filtered-out (zero-probability) symbol is
    never drawn, not even for u == 0; the clamp covers u * total rounding up to the total."""
    return torch.searchsorted(cdf, uniform * total, right=True, out=out).clamp_(max=cdf.shape[-1] - 1)


def _graph_draw(
    cfg: SampleConfig, logits: torch.Tensor, uniform: torch.Tensor, out: torch.Tensor
) -> torch.Tensor | None:
    """`_choose` as captured in a CUDA graph (`charnn.sampling.stepper.GraphStep`): the host cannot be read there, so
    it returns a flag of non-finite totals (None when greedy) that the graph accumulates and checks per block."""
    if cfg.greedy:
        torch.argmax(logits, dim=-1, keepdim=True, out=out)
        return None
    cdf, total = _filtered_cdf(logits, cfg)
    bad = ~torch.isfinite(total).all()
    _draw(cdf, total, uniform, out)
    return bad


@torch.inference_mode()
def warm(model: CharRNN, ids: list[int], streams: int = 1, *, chunk: int = PRIME_CHUNK) -> tuple[torch.Tensor, Hidden]:
    """The model's forward pass over the prime `ids` for `streams` streams: the logits (B, V) after its last
    symbol, and the hidden state. A long prime runs in `chunk`-symbol pieces with the state carried (the same
    recurrence: memory bounded by the chunk, not the prime)."""
    x = torch.tensor(ids, device=model.head.weight.device).expand(streams, -1)  # (B, P)
    hidden = None
    for start in range(0, x.shape[1], chunk):
        logits, hidden = model(x[:, start : start + chunk], hidden)  # (B, T, V)
    return logits[:, -1], hidden


def read_prime(path: str | os.PathLike, vocab: Vocab, data_cfg: DataConfig | None = None) -> str:
    """A prime file's text as `SampleConfig.prime` takes it, read as the model's corpus was (`data_cfg`: its
    encoding and newlines; `--bytes` models take the bytes) and checked against its vocabulary: a DataError or
    VocabularyError naming the file otherwise."""
    cfg = DataConfig(bytes_mode=vocab.bytes_mode) if data_cfg is None else data_cfg
    _, size = readable_file(path)
    if size > PRIME_FILE_MAX:
        raise DataError(f"{path}: a prime of {size:,} bytes; at most {PRIME_FILE_MAX:,} are read")
    try:
        cps = np.concatenate([np.zeros(0, np.uint32), *iter_symbols(path, cfg)])
    except DataError as err:  # its advice names training's flags (--encoding, --bytes): not the sampler's
        raise DataError(str(err).split("; pass ")[0].split("; use --bytes")[0]) from None
    try:
        vocab.map_symbols(cps)
    except VocabularyError as err:
        raise VocabularyError(f"{path}: {err}") from None
    if vocab.bytes_mode:
        return cps.astype(np.uint8).tobytes().decode("utf-8", "surrogateescape")
    return cps.tobytes().decode("utf-32-le", "surrogatepass")


@dataclass(frozen=True)
class Generation:
    """What `generate` is about to produce: the echoed prime per stream, then a stream of id rows."""

    prime: list[int]
    steps: Iterator[torch.Tensor]


@torch.inference_mode()
def generate(
    model: CharRNN, vocab: Vocab, cfg: SampleConfig, *, path: str = "fast", tuning: Tuning = MEASURED
) -> Generation:
    """Start sampling `cfg.num_samples` streams; `steps` yields one (B,) id tensor per generated character (read
    it, do not write it: one stream on the CPU yields one shared tensor per symbol).
    `tuning` picks the fast path's kernels (its defaults were measured; the text is the same either way)."""
    if path not in ("fast", "module"):
        raise ConfigError(f"unknown stepping path {path!r}")
    if cfg.beam is not None:
        raise ConfigError("a beam search is charnn.sampling.beam.beam_search, not a sampler")
    model.eval()
    device = model.head.weight.device
    autocast_dtype(device, cfg.precision)  # bf16 on a GPU without it: one clear error now, not mid-stream
    ids, echo = prime_ids(vocab, cfg.prime)
    B = cfg.num_samples
    with few_threads(B, model.cfg.hidden, device, tuning):
        logits, hidden = warm(model, ids, B)
    last = logits.float() / cfg.temperature  # (B, V)
    gen = torch.Generator(device="cpu")
    # No seed: fresh entropy for this generator only (torch.seed() would reseed the global RNGs of a caller).
    gen.manual_seed(cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return Generation(ids if echo else [], _steps(model, cfg, last, hidden, gen, path, tuning))


def _steps(
    model: CharRNN,
    cfg: SampleConfig,
    logits: torch.Tensor,
    hidden: Hidden,
    gen: torch.Generator,
    path: str,
    tuning: Tuning,
) -> Iterator[torch.Tensor]:
    with torch.inference_mode(), few_threads(logits.shape[0], model.cfg.hidden, logits.device, tuning):
        device = logits.device
        B = logits.shape[0]
        stepper = None
        if path == "fast":
            stepper = FastStepper(model, cfg.temperature, batch_size=B, precision=cfg.precision, tuning=tuning)
            stepper.load(hidden)
        graph = GraphStep(stepper, partial(_graph_draw, cfg)) if _uses_graph(device, tuning, stepper) else None
        if stepper is not None and graph is None and B == 1 and device.type == "cpu":
            yield from _one_stream(stepper, cfg, logits, gen)
            return
        state = hidden
        done = 0
        while done < cfg.length:
            block = min(UNIFORM_BLOCK, cfg.length - done)
            # (block, B, 1): drawn the same way on every path, so both give the same text
            uniforms = torch.rand(block, B, generator=gen).to(device)[:, :, None]
            chosen = torch.empty(block, B, dtype=torch.long, device=device)  # rows are yielded as views
            column = chosen[:, :, None]  # (block, B, 1), what _choose writes
            _choose(logits, uniforms[0], cfg, out=column[0])
            for t in range(block):
                yield chosen[t]
                if done + t + 1 == cfg.length:
                    break
                if graph is not None and t + 1 < block:
                    graph(chosen[t], uniforms[t + 1], column[t + 1])
                    continue
                if stepper is not None:
                    logits = stepper.step(chosen[t])
                else:
                    with autocast(device, cfg.precision), ieee_rnn(device):  # per step: a generator yields
                        out, state = model(column[t], state)
                    logits = out[:, -1].float() / cfg.temperature
                if t + 1 < block:
                    _choose(logits, uniforms[t + 1], cfg, out=column[t + 1])
            if graph is not None:
                graph.check()
            done += block


_F32 = struct.Struct("f")


def _one_stream(
    stepper: FastStepper, cfg: SampleConfig, logits: torch.Tensor, gen: torch.Generator
) -> Iterator[torch.Tensor]:
    """One stream on the CPU, the id kept as a Python int: the same uniforms and inverse CDF as `_choose`
    (the same text), with the search on the host and no tensor op per step but the model's and two of the draw
    (a tensor op costs microseconds; at one stream they were a third of a step). Yields shared (1,) tensors."""
    V = logits.shape[-1]
    rows = [torch.tensor([i]) for i in range(V)]  # (1,) each, yielded: read them, do not write them
    done = 0
    while done < cfg.length:
        block = min(UNIFORM_BLOCK, cfg.length - done)
        for u in torch.rand(block, 1, generator=gen)[:, 0].tolist():
            if cfg.greedy:
                i = int(logits.argmax())
            else:
                cdf = _cdf(logits, cfg).tolist()[0]  # (V,) floats
                if not math.isfinite(cdf[-1]):
                    raise SamplingError("non-finite probabilities while sampling; the model's outputs overflow")
                # u * total rounded to fp32 as the tensor path's product is, so both find the same symbol
                i = min(bisect.bisect_right(cdf, _F32.unpack(_F32.pack(u * cdf[-1]))[0]), V - 1)
            yield rows[i]
            done += 1
            if done == cfg.length:
                return
            logits = stepper.step(i)


def _uses_graph(device: torch.device, tuning: Tuning, stepper: FastStepper | None) -> bool:
    """CUDA graphs for the fast path on CUDA (GraphStep falls back to eager steps if they fail)."""
    return tuning.cuda_graphs and stepper is not None and device.type == "cuda"


def sample_text(
    model: CharRNN, vocab: Vocab, cfg: SampleConfig, *, path: str = "fast", tuning: Tuning = MEASURED
) -> list[str | bytes]:
    """Whole samples (prime included when given), one per stream."""
    gen = generate(model, vocab, cfg, path=path, tuning=tuning)
    rows = [torch.tensor(gen.prime, dtype=torch.long).expand(cfg.num_samples, -1).cpu()]
    rows += [step.cpu()[:, None] for step in gen.steps]
    ids = torch.cat(rows, dim=1)
    return [vocab.decode(row.tolist()) for row in ids]
