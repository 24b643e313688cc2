"""Starting a run from another run's trained weights (fine-tuning): the model file it starts from, the vocabulary
that extends the file's with the new corpus's symbols, the weights copied into the larger model, and what
config.json records. Not the schedule (`charnn.training.plan` chooses a fine-tuning one) nor the loop
(`charnn.training.train`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from charnn.config import ModelConfig, to_dict
from charnn.data import Corpus, extend_vocab, unknown_symbols
from charnn.errors import CheckpointError
from charnn.model import CharRNN, copy_trained
from charnn.store.bundled import STARTER, bundled_path
from charnn.store.checkpoint import LoadedModel, read_meta
from charnn.store.rundir import list_checkpoints, load_run
from charnn.training.plan import PlanRequest, finetune_model


@dataclass(frozen=True)
class Start:
    """The trained model a run starts from, and the sha256 of its file."""

    loaded: LoadedModel
    sha256: str

    def record(self) -> dict[str, Any]:
        """Where the run started from, as config.json keeps it (and the report shows it)."""
        path = self.loaded.path.resolve()
        return {
            "run": str(path.parent),
            "checkpoint": path.name,
            "step": self.loaded.step,
            "sha256": self.sha256,
            "vocab_size": len(self.loaded.vocab),
        }

    def describe(self, data: Corpus) -> str:
        """One line for the start of training: the model file and the symbols it never saw."""
        old = len(self.loaded.vocab)
        new = {s: 1 for s in data.vocab.symbols[old:]}
        added = f"{len(new)} new symbol(s): {unknown_symbols(data.vocab, new)}" if new else "no new symbols"
        return f"starting from {self.loaded.path} (step {self.loaded.step}); {added}"


def load_start(init_from: str | os.PathLike) -> Start:
    """The best checkpoint of run `init_from` (or that model file itself), verified, on the CPU."""
    loaded = load_run(init_from, which="best", which_flag=False)  # a damaged best is named, never replaced
    try:
        sha256 = hashlib.sha256(loaded.path.read_bytes()).hexdigest()
    except OSError as err:
        raise CheckpointError(f"{loaded.path}: cannot read ({err.strerror})") from None
    return Start(loaded, sha256)


def start_request(start: Start | None, request: PlanRequest, model_cfg: ModelConfig | None = None) -> PlanRequest:
    """The plan's request for a run starting from `start`: fine-tune its model (`model_cfg`, when given, must
    fit it: a ConfigError otherwise). `request` itself for a new model."""
    if start is None:
        return request
    if model_cfg is not None:
        finetune_model(start.loaded.model_cfg, to_dict(model_cfg))
    return replace(request, init_model=start.loaded.model_cfg)


def training_corpus(data: Corpus, *, start: Start | None, resume_dir: Path | None) -> Corpus:
    """The corpus in the ids the run trains with: those of the model it starts from (`start_corpus`), or of
    the run it resumes (`resumed_corpus`); else its own."""
    if start is not None:
        return start_corpus(data, start)
    if resume_dir is not None:
        return resumed_corpus(data, resume_dir)
    return data


def start_corpus(data: Corpus, start: Start) -> Corpus:
    """The corpus in the ids of the starting model's vocabulary followed by the corpus's new symbols, so every
    old id keeps its meaning (torch-rnn#147: after a corpus swap the ids silently meant other characters)."""
    return data.in_vocab(extend_vocab(start.loaded.vocab, data.vocab))


def resumed_corpus(data: Corpus, run_dir: Path) -> Corpus:
    """The corpus in the ids of the run being resumed: a fine-tuned run's vocabulary is not the corpus's own.
    Read from the newest checkpoint header that parses; a corpus other than the run's is left as it is, for the
    resume's own checks to refuse."""
    if not run_dir.is_dir():
        return data
    for path in list_checkpoints(run_dir)[::-1]:
        try:
            meta = read_meta(path)
        except CheckpointError:
            continue
        if meta.corpus_sha256 != data.sha256 or meta.vocab.bytes_mode != data.vocab.bytes_mode:
            return data
        return data.in_vocab(meta.vocab)
    return data


def starter_coverage(train_ids: np.ndarray, data: Corpus) -> float | None:
    """The share of the training characters `train_ids` (ids of `data.vocab`) that the bundled starter's vocabulary
    holds, for the plan's hint; None when no starter is bundled or its vocabulary is of another kind (--bytes)."""
    path = bundled_path(STARTER)
    try:
        vocab = read_meta(path).vocab if path is not None else None
    except CheckpointError:  # a damaged package: no hint, and nothing else fails
        return None
    if vocab is None or vocab.bytes_mode != data.vocab.bytes_mode or len(train_ids) == 0:
        return None
    counts = np.bincount(np.asarray(train_ids), minlength=len(data.vocab))  # (V,)
    known = np.isin(np.asarray(data.vocab.symbols), np.asarray(vocab.symbols))  # (V,)
    return float(counts[known].sum() / counts.sum())


def start_weights(model: CharRNN, start: Start) -> None:
    """The starting model's weights into `model`; the rows of the new symbols keep their fresh initialisation."""
    copy_trained(model, start.loaded.model)
