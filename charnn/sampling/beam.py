"""Beam search: the continuation of a prime with the highest total log-probability that a beam of W texts finds,
each step one batched step of the fast stepper (`charnn.sampling.stepper`) for all W texts. Deterministic: no
temperature, no randomness. Not sampling (`charnn.sampling.generate`), which draws from the distribution instead:
the scores are the model's own log-probabilities in float64 (log-softmax; float32 on MPS, which has no float64),
not the draw's filtered cumulative sums (`charnn.sampling.draw`), which no beam step uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from charnn.data import Vocab
from charnn.errors import ConfigError, SamplingError
from charnn.model import CharRNN
from charnn.runtime import autocast_dtype, wide_float
from charnn.sampling.generate import prime_ids
from charnn.sampling.stepper import MEASURED, FastStepper, Tuning, few_threads


@dataclass(frozen=True)
class Beam:
    """One text the search found: the echoed prime, the continuation, and how probable the model finds it."""

    prime: tuple[int, ...]  # the prime's ids when it is echoed (a --prime was given), else empty
    ids: tuple[int, ...]  # the continuation's ids
    logprob: float  # ln P(continuation | prime) in nats: the sum of each character's log-probability
    text: str | bytes  # prime and continuation, decoded

    @property
    def per_char(self) -> float:
        """The mean log-probability of a continuation character (nats); minus `charnn eval`'s nats/char on it."""
        return self.logprob / len(self.ids) if self.ids else 0.0


@torch.inference_mode()
def beam_search(
    model: CharRNN,
    vocab: Vocab,
    prime: str | None,
    width: int,
    length: int,
    *,
    precision: str = "fp32",
    tuning: Tuning = MEASURED,
) -> list[Beam]:
    """The `width` most probable continuations of `length` characters the beam finds, best first (fewer when
    the vocabulary has fewer than `width` texts of that length). Width 1 is greedy decoding.

    Each step extends every kept text by every symbol, V x W candidates scored by their total log-probability,
    and keeps the `width` best; a stable sort breaks ties towards the earlier text, then the lower id.
    """
    if width < 1:
        raise ConfigError(f"--beam must be at least 1, not {width}")
    if length < 0:
        raise ConfigError(f"--length must be at least 0, not {length}")
    model.eval()
    device = model.head.weight.device
    autocast_dtype(device, precision)  # bf16 where the device lacks it: the error sampling gives
    ids, echo = prime_ids(vocab, prime)
    shown = tuple(ids) if echo else ()
    logits, hidden = model(torch.tensor([ids], device=device))  # one pass over the prime: (1, P, V)
    wide = wide_float(device)  # float64 (float32 on MPS)
    logp = logits[:, -1].to(wide).log_softmax(dim=-1)  # (1, V), broadcast over the beam at the first step
    if length == 0:
        return [Beam(shown, (), 0.0, vocab.decode(list(shown)))]
    with few_threads(width, model.cfg.hidden, device, tuning):
        stepper = FastStepper(model, 1.0, batch_size=width, precision=precision, tuning=tuning)
        stepper.load(_rows(hidden, width))
        scores = torch.full((width,), float("-inf"), dtype=wide, device=device)  # (W,)
        scores[0] = 0.0  # one text to start from: the other rows are placeholders until the beam fills
        parents, chars = [], []
        for t in range(length):
            total = (scores[:, None] + logp).flatten()  # (W*V,): candidate (beam b, symbol s) at b*V + s
            best = torch.sort(total, descending=True, stable=True).indices[:width]  # (W,)
            scores = total[best]
            parent, char = best // logp.shape[-1], best % logp.shape[-1]
            parents.append(parent)
            chars.append(char)
            if t + 1 < length:
                stepper.select_rows(parent)  # row b now carries the state of the text it extends
                logp = stepper.step(char).to(wide).log_softmax(dim=-1)  # (W, V)
    if torch.isnan(scores).any():
        raise SamplingError("non-finite probabilities in the beam search; the model's outputs overflow")
    return _beams(scores, parents, chars, shown, vocab)


def _rows(hidden, width: int):
    """The prime's state (L, 1, H), or an LSTM's pair of them, repeated for every row of the beam."""
    if isinstance(hidden, tuple):
        return tuple(h.expand(-1, width, -1) for h in hidden)
    return hidden.expand(-1, width, -1)


def _beams(
    scores: torch.Tensor, parents: list[torch.Tensor], chars: list[torch.Tensor], shown: tuple[int, ...], vocab: Vocab
) -> list[Beam]:
    """The texts of the final rows, traced back through each step's parents; rows never filled are dropped."""
    row = torch.arange(len(scores), device=scores.device)
    backwards = []
    for parent, char in zip(reversed(parents), reversed(chars), strict=True):
        backwards.append(char[row])
        row = parent[row]
    texts = torch.stack(backwards[::-1], dim=1).cpu().tolist()  # (W, L)
    out = []
    for text, score in zip(texts, scores.cpu().tolist(), strict=True):
        if score != float("-inf"):
            out.append(Beam(shown, tuple(text), score, vocab.decode(list(shown) + text)))
    return out
