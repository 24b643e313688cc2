"""Drawing text from a model: warm the state on the prime in one forward pass, then one recurrent step per
character on the carried state (O(1) work per character; the text so far is never re-run).

Two stepping paths give the same text for the same seed: `fast` (default) runs `charnn.sampling.stepper`'s kernel, a
few preallocated matrices and one addmm per layer per step; `module` calls the nn.LSTM/GRU/RNN itself. Not
the kernel, nor how logits become a symbol (`charnn.sampling.draw`): this module is the sampling API (the prime,
the stepping paths, the stream of ids).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from charnn.config import DataConfig, SampleConfig
from charnn.data import Vocab, iter_symbols, readable_file
from charnn.errors import ConfigError, DataError, VocabularyError
from charnn.model import CharRNN, Hidden
from charnn.runtime import autocast, autocast_dtype, ieee_rnn
from charnn.sampling.draw import choose, choose_in_graph, choose_one, scale, seeded_generator, uniforms
from charnn.sampling.stepper import MEASURED, FastStepper, Tuning, few_threads

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
    last = scale(logits.float(), cfg.temperature)  # (B, V)
    gen = seeded_generator(cfg.seed)
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
            # its logits come scaled: its head is `scale`d by the temperature once
            stepper = FastStepper(model, cfg.temperature, batch_size=B, precision=cfg.precision, tuning=tuning)
            stepper.load(hidden)
        graph = None
        if _uses_graph(device, tuning, stepper):
            from charnn.sampling.cudagraph import GraphStep  # CUDA only: the CPU's start-up does without it

            graph = GraphStep(stepper, partial(choose_in_graph, cfg))
        if stepper is not None and graph is None and B == 1 and device.type == "cpu":
            yield from _one_stream(stepper, cfg, logits, gen)
            return
        state = hidden
        done = 0
        while done < cfg.length:
            u = uniforms(gen, cfg.length - done, B).to(device)[:, :, None]  # (block, B, 1)
            block = u.shape[0]
            chosen = torch.empty(block, B, dtype=torch.long, device=device)  # rows are yielded as views
            column = chosen[:, :, None]  # (block, B, 1), what `choose` writes
            choose(logits, u[0], cfg, out=column[0])
            for t in range(block):
                yield chosen[t]
                if done + t + 1 == cfg.length:
                    break
                if graph is not None and t + 1 < block:
                    graph(chosen[t], u[t + 1], column[t + 1])
                    continue
                if stepper is not None:
                    logits = stepper.step(chosen[t])
                else:
                    with autocast(device, cfg.precision), ieee_rnn(device):  # per step: a generator yields
                        out, state = model(column[t], state)
                    logits = scale(out[:, -1].float(), cfg.temperature)
                if t + 1 < block:
                    choose(logits, u[t + 1], cfg, out=column[t + 1])
            if graph is not None:
                graph.check()
            done += block


def _one_stream(
    stepper: FastStepper, cfg: SampleConfig, logits: torch.Tensor, gen: torch.Generator
) -> Iterator[torch.Tensor]:
    """One stream on the CPU, the id kept as a Python int (`choose_one`: the same uniforms and inverse CDF as
    `choose`, so the same text), with no tensor op per step but the model's and two of the draw (a tensor op
    costs microseconds; at one stream they were a third of a step). Yields shared (1,) tensors."""
    rows = [torch.tensor([i]) for i in range(logits.shape[-1])]  # (1,) each, yielded: read them, do not write them
    step, length = stepper.step, cfg.length  # bound once: this loop runs once per character
    done = 0
    while done < length:
        for u in uniforms(gen, length - done, 1)[:, 0].tolist():
            i = choose_one(logits, u, cfg)
            yield rows[i]
            done += 1
            if done == length:
                return
            logits = step(i)


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
