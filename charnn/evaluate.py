"""Scoring text: mean negative log-likelihood per character (nats), bits per character and perplexity.

The text is cut into fixed segments of `segment` characters; each is scored as one stream from a zero
state with the state carried across chunks inside it, and `batch_size` segments run side by side. The
segment length, not the batch size, defines the number, so any batch size gives the same result.

When the embedding is wider than the vocabulary, scoring folds the embedding into the first layer's input
weights (`_Scorer`): the same function, a quarter of the first layer's input arithmetic for 65 symbols and
embed 256 (1.2-1.3x faster scoring on the CPU: docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from charnn.model import CharRNN, layer_weights, lm_loss, run_rnn, set_layer_weights
from charnn.runtime import autocast


@dataclass(frozen=True)
class EvalResult:
    """Token-weighted totals; the per-character figures derive from them."""

    chars: int  # predictions scored
    total_nats: float
    unknown: dict[int, int] = field(default_factory=dict)  # symbol -> count, dropped before scoring
    per_char: np.ndarray | None = None  # (chars,) nats for each prediction, when asked for

    @property
    def loss(self) -> float:
        return self.total_nats / self.chars if self.chars else math.nan

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def as_dict(self) -> dict[str, float | int]:
        return {"chars": self.chars, "nats_per_char": self.loss, "bits_per_char": self.bpc,
                "perplexity": self.perplexity, "unknown_chars": sum(self.unknown.values())}


class _Scorer:
    """The model's forward pass for scoring (eval mode, no gradients), with layer 0's input projection
    W_ih @ embed(x) computed as (W_ih @ E^T) @ onehot(x) when that is cheaper (vocabulary smaller than the
    embedding): the first layer runs as its own nn.LSTM/GRU/RNN on one-hot inputs, the others as a second
    module. Weights are copied, so the model is untouched; the hidden state is the pair of the two modules'.
    """

    def __init__(self, model: CharRNN) -> None:
        self.model = model
        cfg, V = model.cfg, model.vocab_size
        self.split = V < cfg.embed
        if not self.split:
            return
        rnn, device = model.rnn, model.head.weight.device
        extra = {"nonlinearity": rnn.nonlinearity} if cfg.model == "rnn" else {}
        make = type(rnn)
        # fork_rng: building the modules draws initial weights (overwritten below) from the global CPU RNG,
        # which must not move: training's dropout masks would then depend on when it evaluates.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            self.first = make(V, cfg.hidden, 1, batch_first=True, **extra).to(device).eval()
            folded = rnn.weight_ih_l0 @ model.embed.weight.t()  # (G*H, V)
            set_layer_weights(self.first, 0, layer_weights(rnn, 0)._replace(w_ih=folded))
            self.rest = None
            if cfg.layers > 1:
                self.rest = make(cfg.hidden, cfg.hidden, cfg.layers - 1, batch_first=True, **extra).to(device).eval()
                for layer in range(1, cfg.layers):
                    set_layer_weights(self.rest, layer - 1, layer_weights(rnn, layer))
        self.onehot = torch.eye(V, device=device)

    def __call__(self, x: torch.Tensor, hidden):
        if not self.split:
            return self.model(x, hidden)
        first, rest = hidden if hidden is not None else (None, None)
        out, first = run_rnn(self.first, F.embedding(x, self.onehot), first)  # (B, T, H)
        if self.rest is not None:
            out, rest = run_rnn(self.rest, out, rest)
        return self.model.output(out), (first, rest)


@torch.inference_mode()
def evaluate_ids(model: CharRNN, ids: np.ndarray, *, segment: int = 4096, batch_size: int = 64,
                 chunk: int = 256, precision: str = "auto", per_char: bool = False) -> EvalResult:
    """Score predictions of ids[1:] from their left context within each segment."""
    n = len(ids) - 1  # predictions
    if n < 1:
        return EvalResult(0, 0.0)
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    score = _Scorer(model)
    n_seg = math.ceil(n / segment)
    cols = np.arange(segment + 1, dtype=np.int64)
    total = torch.zeros((), dtype=torch.float64, device=device)
    losses = []
    try:
        for r0 in range(0, n_seg, batch_size):
            rows = np.arange(r0, min(r0 + batch_size, n_seg), dtype=np.int64)
            idx = rows[:, None] * segment + cols  # (B, S+1)
            valid = idx <= n
            window = torch.from_numpy(np.where(valid, np.asarray(ids[np.minimum(idx, n)]), 0).astype(np.int64))
            window = window.to(device)
            x = window[:, :-1]
            y = window[:, 1:].masked_fill(torch.from_numpy(~valid[:, 1:]).to(device), -100)
            hidden = None
            group = []
            for c0 in range(0, segment, chunk):
                yc = y[:, c0:c0 + chunk]
                if not bool((yc >= 0).any()):
                    break
                with autocast(device, precision):
                    logits, hidden = score(x[:, c0:c0 + chunk], hidden)  # (B, t, V)
                nll = lm_loss(logits, yc, reduction="none").view(yc.shape)  # (B, t); 0 where ignored
                total += nll.sum(dtype=torch.float64)
                if per_char:
                    group.append(nll)
            if per_char:
                scored = torch.cat(group, dim=1)
                mask = y[:, : scored.shape[1]] >= 0
                losses.append(scored[mask].cpu().numpy())  # row-major: text order
    finally:
        model.train(was_training)
    per = np.concatenate(losses) if per_char else None
    return EvalResult(n, float(total.item()), per_char=per)


def evaluate_file(loaded, path, *, skip_unknown: bool = False, segment: int = 4096, batch_size: int = 64,
                  precision: str = "auto", per_char: bool = False) -> EvalResult:
    """Score a text file with a loaded model (`charnn.checkpoint.LoadedModel`), decoded as its corpus was."""
    from charnn.data import read_ids

    ids, unknown = read_ids(path, loaded.vocab, loaded.data_cfg, skip_unknown=skip_unknown)
    res = evaluate_ids(loaded.model, ids, segment=segment, batch_size=batch_size, precision=precision,
                       per_char=per_char)
    return EvalResult(res.chars, res.total_nats, unknown, res.per_char)


def validation_ids(loaded) -> np.ndarray:
    """The validation split of the corpus a model was trained on (the file must still be there, unchanged)."""
    from pathlib import Path

    from charnn.corpus_cache import load_corpus
    from charnn.data import encode_file, translate_ids
    from charnn.errors import CheckpointWriteError, DataError

    corpus_path, cache_dir = loaded.meta.corpus_path, loaded.meta.corpus_cache
    if not corpus_path:
        raise DataError("this checkpoint does not record its corpus; pass a FILE to score")
    if not Path(corpus_path).is_file():  # also refuses a FIFO or device a crafted path could name
        raise DataError(f"{corpus_path}: the run's corpus is no longer there; pass a FILE to score")
    corpus = None
    if cache_dir:  # the memory-mapped cache training used: a big corpus is never held in memory
        try:
            corpus = load_corpus(corpus_path, loaded.data_cfg, cache_dir=cache_dir)
        except CheckpointWriteError:  # the cache cannot be (re)written here: encode in memory instead
            pass
    if corpus is None:
        corpus = encode_file(corpus_path, loaded.data_cfg)
    if corpus.sha256 != loaded.corpus_sha256:
        raise DataError(f"{corpus_path} changed since training (sha256 differs); pass a FILE to score")
    # the model's ids: a fine-tuned model's vocabulary extends another's and is not the corpus's own
    return translate_ids(corpus.split()[1], corpus.vocab, loaded.vocab, what=corpus_path)


def evaluate_validation(loaded, *, segment: int | None = None, batch_size: int = 64, precision: str = "auto",
                        per_char: bool = False) -> EvalResult:
    """Score the run's own validation split exactly as training did (same segment length)."""
    if segment is None:
        segment = loaded.eval_segment
    return evaluate_ids(loaded.model, validation_ids(loaded), segment=segment, batch_size=batch_size,
                        precision=precision, per_char=per_char)
