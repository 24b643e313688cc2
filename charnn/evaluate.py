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
from charnn.runtime import autocast, wide_float

EVAL_MEMORY = 2 << 30  # bytes of activations scoring may hold: an absurd --batch-size runs in turns instead


class PerChar:
    """The per-character figures of a scored text, from its `chars` (predictions) and `total_nats`."""

    chars: int
    total_nats: float

    @property
    def loss(self) -> float:
        """Nats per character; never below 0 (a one-symbol vocabulary scores -0.0 in floating point, which
        would print as "-0.0000"). NaN when nothing was scored: `evaluate_file` refuses that case."""
        return max(self.total_nats / self.chars, 0.0) if self.chars else math.nan

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@dataclass(frozen=True)
class EvalResult(PerChar):
    """Token-weighted totals; the per-character figures derive from them."""

    chars: int  # predictions scored
    total_nats: float
    unknown: dict[int, int] = field(default_factory=dict)  # symbol -> count, dropped before scoring
    per_char: np.ndarray | None = None  # (chars,) nats for each prediction, when asked for
    scaled_nats: dict[float, float] | None = None  # logit scale -> total nats with the logits so scaled, when asked

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


# long: one pass over the text, chunk by chunk, with everything it sums (the loss, the scaled losses, the
# per-character losses) kept beside the state it carries; split, each part would need all of it.
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
    scales: tuple[float, ...] = (),
) -> EvalResult:
    """Score predictions of ids[1:] from their left context within each segment; with `scales`, also the total
    with the logits multiplied by each (`charnn.calibration`), in the same pass.

    Memory follows the rows scored side by side times `chunk`, never the segment length: windows are cut
    chunk by chunk, a segment longer than the text is the text as one stream, and `batch_size` is lowered to
    what `max_bytes` holds (an estimate of the activations per row). None of these changes the result.
    """
    n = len(ids) - 1  # predictions
    if n < 1:
        return EvalResult(0, 0.0, scaled_nats=dict.fromkeys(scales, 0.0) if scales else None)
    segment = min(segment, n)  # one segment as long as the text scores it as a longer one would
    chunk = min(chunk, segment)
    n_seg = math.ceil(n / segment)
    rows_per_pass = max(1, min(batch_size, n_seg, max_bytes // (chunk * _bytes_per_position(model))))
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    score = _Scorer(model)
    total = torch.zeros((), dtype=wide_float(device), device=device)
    scaled_totals = torch.zeros(len(scales), dtype=wide_float(device), device=device)
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
                total += nll.sum(dtype=total.dtype)
                for k, factor in enumerate(scales):  # the same loss of the logits so scaled, in fp32
                    scaled = lm_loss(logits.float() * factor, yc, reduction="none")
                    scaled_totals[k] += scaled.sum(dtype=scaled_totals.dtype)
                if per_char:
                    group.append(nll)
                    masks.append(mask)
            if per_char:
                losses.append(torch.cat(group, dim=1)[torch.cat(masks, dim=1)].float().cpu().numpy())  # text order
    finally:
        model.train(was_training)
    per = np.concatenate(losses) if per_char else None
    by_scale = dict(zip(scales, scaled_totals.tolist(), strict=True)) if scales else None
    return EvalResult(n, float(total.item()), per_char=per, scaled_nats=by_scale)


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
    if len(ids) < 2:
        skipped = sum(unknown.values())
        left = f"{len(ids)} character{'' if len(ids) == 1 else 's'}" + (
            f" once {skipped} unknown one{'' if skipped == 1 else 's'} were skipped" if skipped else ""
        )
        raise DataError(f"{path}: nothing to score in {left}; scoring needs at least 2 (each predicts the next)")
    res = evaluate_ids(
        loaded.model, ids, segment=segment, batch_size=batch_size, precision=precision, per_char=per_char
    )
    return EvalResult(res.chars, res.total_nats, unknown, res.per_char)


EVAL_FIX = "pass a FILE to score"  # what eval's messages about a run's missing corpus end with


def validation_ids(loaded, run_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The validation split of the corpus a model was trained on (`run_corpus`), in the model's ids."""
    from charnn.data import translate_ids

    corpus = run_corpus(loaded, run_dir)
    # the model's ids: a fine-tuned model's vocabulary extends another's and is not the corpus's own
    return translate_ids(corpus.split()[1], corpus.vocab, loaded.vocab, what=corpus.path)


def run_corpus(loaded, run_dir: str | os.PathLike | None = None, *, fix: str | None = EVAL_FIX):
    """The corpus a model was trained on (a `charnn.data.Corpus` in its own vocabulary), found through its run
    directory (`run_dir`, by default the directory holding the model file): the file RUN/config.json names,
    which must still hash to the model's corpus sha256. Its ids come from a sound corpus cache entry where one
    exists (`run_cache_dirs`), else from encoding it in memory; nothing is written. The model file's own
    metadata never chooses what is read: a crafted file could name any path. A DataError (ending in `fix`)
    when the corpus is missing or changed.
    """
    from charnn.data import encode_file
    from charnn.store.bundled import models_dir
    from charnn.store.corpus_cache import cached_corpus, hash_file
    from charnn.textfile import changed_error, readable_file

    run_dir = Path(loaded.path).parent if run_dir is None else Path(run_dir)
    tail = f"; {fix}" if fix else ""
    if run_dir.resolve() == models_dir().resolve():
        raise DataError(f"{Path(loaded.path).stem} is a model shipped with charnn, not a run{tail}")
    corpus_path = run_corpus_path(run_dir, fix=fix)
    try:
        path, size = readable_file(corpus_path)
        sha = hash_file(path, size)
    except DataError as err:
        raise DataError(f"the corpus of run {run_dir}: {err}{tail}") from None
    if sha != loaded.corpus_sha256:
        raise DataError(
            f"{corpus_path} is not the corpus this model was trained on (it changed since training: "
            f"sha256 differs){tail}"
        )
    corpus = cached_corpus(path, sha, loaded.data_cfg, run_cache_dirs(run_dir)) or encode_file(path, loaded.data_cfg)
    if corpus.sha256 != sha:
        raise changed_error(corpus_path)
    return corpus


def run_cache_dirs(run_dir: Path) -> list[Path]:
    """The corpus cache directories a run's corpus is looked for in: the run's sibling `.cache`, then
    `checkpoints/.cache`, those that exist."""
    from charnn.store.corpus_cache import DEFAULT_CACHE_DIR

    return list(dict.fromkeys(d.resolve() for d in (run_dir.parent / ".cache", DEFAULT_CACHE_DIR) if d.is_dir()))


def run_corpus_path(run_dir: Path, *, fix: str | None = EVAL_FIX) -> str:
    """The corpus path a run directory's config.json records; a DataError (ending in `fix`) when there is none."""
    from charnn.textfile import open_input

    tail = f"; {fix}" if fix else ""
    config_path = run_dir / "config.json"
    if not config_path.exists():
        why = ": only a run's own validation split can be scored" if fix == EVAL_FIX else ""
        raise DataError(f"{run_dir} is not a run directory (no config.json){why}{tail}")
    try:
        f, _ = open_input(config_path)  # a regular file: a FIFO planted there must not hang eval
        with f:
            config = json.loads(f.read().decode("utf-8"))
    except DataError as err:
        raise DataError(f"{err}{tail}") from None
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"{config_path} is unreadable ({first_line(err)}){tail}") from None
    corpus = config.get("corpus") if isinstance(config, dict) else None
    path = corpus.get("path") if isinstance(corpus, dict) else None
    if not isinstance(path, str) or not path:
        raise DataError(f"{config_path} records no corpus path{tail}")
    return path


def evaluate_validation(
    loaded, *, segment: int | None = None, batch_size: int = 64, precision: str = "auto", per_char: bool = False
) -> EvalResult:
    """Score the run's own validation split exactly as training did (same segment length)."""
    if segment is None:
        segment = loaded.eval_segment
    ids = validation_ids(loaded)
    if len(ids) < 2:
        raise DataError(
            f"the run of {loaded.path} has no validation split to score ({len(ids)} characters; trained with "
            f"--val-frac {loaded.data_cfg.val_frac:g}); pass a FILE to score"
        )
    return evaluate_ids(
        loaded.model,
        ids,
        segment=segment,
        batch_size=batch_size,
        precision=precision,
        per_char=per_char,
    )
