"""Scoring text: mean negative log-likelihood per character (nats), bits per character and perplexity.

The text is cut into fixed segments of `segment` characters; each is scored as one stream from a zero
state with the state carried across chunks inside it, and `batch_size` segments run side by side. The
segment length, not the batch size, defines the number, so any batch size gives the same result.

When the embedding is wider than the vocabulary, scoring folds the embedding into the first layer's input
weights (`_Scorer`): the same function, a quarter of the first layer's input arithmetic for 65 symbols and
embed 256 (1.2-1.3x faster scoring on the CPU: docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charnn.errors import DataError, first_line
from charnn.model import CharRNN, layer_weights, lm_loss, run_rnn, set_layer_weights
from charnn.runtime import autocast

EVAL_MEMORY = 2 << 30  # bytes of activations scoring may hold: an absurd --batch-size runs in turns instead


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
        return {
            "chars": self.chars,
            "nats_per_char": self.loss,
            "bits_per_char": self.bpc,
            "perplexity": self.perplexity,
            "unknown_chars": sum(self.unknown.values()),
        }


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
def evaluate_ids(
    model: CharRNN,
    ids: np.ndarray,
    *,
    segment: int = 4096,
    batch_size: int = 64,
    chunk: int = 256,
    precision: str = "auto",
    per_char: bool = False,
    max_bytes: int = EVAL_MEMORY,
) -> EvalResult:
    """Score predictions of ids[1:] from their left context within each segment.

    Memory follows the rows scored side by side times `chunk`, never the segment length: windows are cut
    chunk by chunk, a segment longer than the text is the text as one stream, and `batch_size` is lowered to
    what `max_bytes` holds (an estimate of the activations per row). None of these changes the result.
    """
    n = len(ids) - 1  # predictions
    if n < 1:
        return EvalResult(0, 0.0)
    segment = min(segment, n)  # one segment as long as the text scores it as a longer one would
    chunk = min(chunk, segment)
    n_seg = math.ceil(n / segment)
    rows_per_pass = max(1, min(batch_size, n_seg, max_bytes // (chunk * _bytes_per_position(model))))
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    score = _Scorer(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    losses = []
    try:
        for r0 in range(0, n_seg, rows_per_pass):
            starts = np.arange(r0, min(r0 + rows_per_pass, n_seg), dtype=np.int64) * segment  # (B,)
            hidden = None
            group, masks = [], []
            for c0 in range(0, segment, chunk):
                idx = starts[:, None] + c0 + np.arange(min(chunk, segment - c0) + 1)  # (B, t+1)
                valid = idx <= n
                if not valid[:, 1:].any():
                    break
                window = torch.from_numpy(np.where(valid, np.asarray(ids[np.minimum(idx, n)]), 0).astype(np.int64))
                window = window.to(device)
                mask = torch.from_numpy(valid[:, 1:]).to(device)  # (B, t)
                yc = window[:, 1:].masked_fill(~mask, -100)
                with autocast(device, precision):
                    logits, hidden = score(window[:, :-1], hidden)  # (B, t, V)
                nll = lm_loss(logits, yc, reduction="none").view(yc.shape)  # (B, t); 0 where ignored
                total += nll.sum(dtype=torch.float64)
                if per_char:
                    group.append(nll)
                    masks.append(mask)
            if per_char:
                losses.append(torch.cat(group, dim=1)[torch.cat(masks, dim=1)].float().cpu().numpy())  # text order
    finally:
        model.train(was_training)
    per = np.concatenate(losses) if per_char else None
    return EvalResult(n, float(total.item()), per_char=per)


def _bytes_per_position(model: CharRNN) -> int:
    """About what scoring one position holds at once: logits and their log-softmax, and each layer's gates
    and outputs, in fp32."""
    return 4 * (3 * model.vocab_size + 6 * model.cfg.hidden * model.cfg.layers) + 64


def evaluate_file(
    loaded,
    path,
    *,
    skip_unknown: bool = False,
    segment: int = 4096,
    batch_size: int = 64,
    precision: str = "auto",
    per_char: bool = False,
) -> EvalResult:
    """Score a text file with a loaded model (`charnn.store.checkpoint.LoadedModel`), decoded as its corpus was."""
    from charnn.data import read_ids

    ids, unknown = read_ids(path, loaded.vocab, loaded.data_cfg, skip_unknown=skip_unknown)
    res = evaluate_ids(
        loaded.model, ids, segment=segment, batch_size=batch_size, precision=precision, per_char=per_char
    )
    return EvalResult(res.chars, res.total_nats, unknown, res.per_char)


def validation_ids(loaded, run_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The validation split of the corpus a model was trained on, found through its run directory (`run_dir`,
    by default the directory holding the model file): the corpus is the file RUN/config.json names, and it
    must still hash to the model's corpus sha256. Its ids come from a sound corpus cache entry where one
    exists (the run's sibling `.cache`, then `checkpoints/.cache`), else from encoding it in memory; nothing
    is written. The model file's own metadata never chooses what is read: a crafted file could name any path.
    """
    from charnn.data import encode_file, translate_ids
    from charnn.store.bundled import models_dir
    from charnn.store.corpus_cache import DEFAULT_CACHE_DIR, cached_corpus, hash_file
    from charnn.textfile import changed_error, readable_file

    run_dir = Path(loaded.path).parent if run_dir is None else Path(run_dir)
    if run_dir.resolve() == models_dir().resolve():
        raise DataError(f"{Path(loaded.path).stem} is a model shipped with charnn, not a run; pass a FILE to score")
    corpus_path = _run_corpus(run_dir)
    try:
        path, size = readable_file(corpus_path)
        sha = hash_file(path, size)
    except DataError as err:
        raise DataError(f"the corpus of run {run_dir}: {err}; pass a FILE to score") from None
    if sha != loaded.corpus_sha256:
        raise DataError(
            f"{corpus_path} is not the corpus this model was trained on (it changed since training: "
            f"sha256 differs); pass a FILE to score"
        )
    dirs = dict.fromkeys(d.resolve() for d in (run_dir.parent / ".cache", DEFAULT_CACHE_DIR) if d.is_dir())
    corpus = cached_corpus(path, sha, loaded.data_cfg, dirs) or encode_file(path, loaded.data_cfg)
    if corpus.sha256 != sha:
        raise changed_error(corpus_path)
    # the model's ids: a fine-tuned model's vocabulary extends another's and is not the corpus's own
    return translate_ids(corpus.split()[1], corpus.vocab, loaded.vocab, what=str(corpus_path))


def _run_corpus(run_dir: Path) -> str:
    """The corpus path a run directory's config.json records; a DataError when there is none to read."""
    from charnn.textfile import open_input

    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise DataError(
            f"{run_dir} is not a run directory (no config.json): only a run's own validation split "
            f"can be scored; pass a FILE to score"
        )
    try:
        f, _ = open_input(config_path)  # a regular file: a FIFO planted there must not hang eval
        with f:
            config = json.loads(f.read().decode("utf-8"))
    except DataError as err:
        raise DataError(f"{err}; pass a FILE to score") from None
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{config_path} is unreadable ({first_line(err)}); pass a FILE to score") from None
    corpus = config.get("corpus") if isinstance(config, dict) else None
    path = corpus.get("path") if isinstance(corpus, dict) else None
    if not isinstance(path, str) or not path:
        raise DataError(f"{config_path} records no corpus path; pass a FILE to score")
    return path


def evaluate_validation(
    loaded, *, segment: int | None = None, batch_size: int = 64, precision: str = "auto", per_char: bool = False
) -> EvalResult:
    """Score the run's own validation split exactly as training did (same segment length)."""
    if segment is None:
        segment = loaded.eval_segment
    return evaluate_ids(
        loaded.model,
        validation_ids(loaded),
        segment=segment,
        batch_size=batch_size,
        precision=precision,
        per_char=per_char,
    )
