"""The report's numbers: a run directory's metrics, samples and config as records, and a passage run through a
loaded model (surprise, activations, correlated units, gate statistics, gradient flow through time) as data for
the page. No HTML here: `charnn.report.sections` lays it out.
"""

from __future__ import annotations

import base64
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charnn.checkpoint import LoadedModel
from charnn.errors import CharnnWarning, DataError
from charnn.inspect import (
    Correlations,
    GateStats,
    Surprise,
    find_correlated,
    gate_stats,
    surprise,
    text_properties,
    trace,
    unit_series,
)
from charnn.memory import Memory, memory

MAX_CHARS = 5000  # passage length shown by default
MAX_ACTIVATION_BYTES = 3_000_000  # int8 activations embedded for the explorer; beyond it the passage is cut
LN2 = math.log(2)


# --- the run directory ----------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a .jsonl file; a missing file is empty; a torn line (a crash mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(record: dict, key: str) -> float:
    """`record[key]` as a float; NaN when it is missing or not a number."""
    value = record.get(key)
    return float(value) if is_number(value) else math.nan


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records), each by step; a resumed run's repeated steps keep their last record."""
    by_kind: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}
    needs = {"train": "train_loss", "eval": "val_loss"}
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        kind = rec.get("kind")
        if kind in by_kind and isinstance(rec.get("step"), int) and is_number(rec.get(needs[kind])):
            by_kind[kind][rec["step"]] = rec
    return ([by_kind["train"][s] for s in sorted(by_kind["train"])],
            [by_kind["eval"][s] for s in sorted(by_kind["eval"])])


def read_config(run_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


@dataclass(frozen=True)
class RunLog:
    """What a run directory recorded besides its checkpoints."""

    config: dict[str, Any]  # config.json, {} when missing or unreadable
    train: list[dict]  # metrics.jsonl training records, by step
    evals: list[dict]  # metrics.jsonl validation records, by step
    samples: list[dict]  # samples.jsonl


def read_run_log(run_dir: Path) -> RunLog:
    train, evals = read_metrics(run_dir)
    return RunLog(read_config(run_dir), train, evals, read_jsonl(run_dir / "samples.jsonl"))


# --- the passage ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Passage:
    ids: np.ndarray
    source: str  # "validation split" or the file name


def passage_ids(loaded: LoadedModel, text: str | os.PathLike | None, *, max_chars: int) -> Passage:
    """The passage to analyse: the first `max_chars` of `text` (a file) or of the run's validation split."""
    from charnn.data import read_ids
    from charnn.evaluate import validation_ids

    if text is None:
        ids, source = validation_ids(loaded), "validation split"
    else:
        ids, unknown = read_ids(text, loaded.vocab, loaded.data_cfg, skip_unknown=True)
        source = Path(text).name
        if unknown:
            shown = ", ".join(loaded.vocab.symbol_str(s) for s in list(unknown)[:10])
            warnings.warn(f"{text}: skipped {sum(unknown.values())} character(s) not in the model's "
                          f"vocabulary ({shown})", CharnnWarning, stacklevel=3)
    ids = np.asarray(ids[:max_chars]).astype(np.int64)
    if len(ids) < 2:
        raise DataError(f"{source}: need at least 2 characters to analyse, found {len(ids)}")
    return Passage(ids, source)


def display_symbols(loaded: LoadedModel) -> list[str]:
    """How each vocabulary symbol is drawn: itself, or an escape for control characters and raw bytes."""
    out = []
    for s in loaded.vocab.symbols:
        if loaded.vocab.bytes_mode and not (32 <= s < 127 or s in (9, 10)):
            out.append(f"\\x{s:02x}")
            continue
        ch = chr(s)
        out.append(ch if ch.isprintable() or ch in "\n\t" else ch.encode("unicode_escape").decode("ascii"))
    return out


@dataclass(frozen=True)
class Analysis:
    """A passage run through the model: what the surprise, neuron and gate sections show."""

    surprise: Surprise
    correlations: Correlations
    gates: list[GateStats]
    units: list[dict[str, Any]]  # per layer and kind: {"layer", "kind", "size", "data": base64 int8 (H, shown)}
    shown: int  # characters of the passage the neuron explorer embeds
    memory: Memory | None = None  # gradient against distance back: "How far back does it look?"


def _quantized(values: np.ndarray) -> str:
    """(T, H) activations in [-1, 1] as base64 int8, unit-major (H rows of T)."""
    q = np.clip(np.rint(values.T * 127), -127, 127).astype(np.int8)
    return base64.b64encode(np.ascontiguousarray(q).tobytes()).decode("ascii")


def analyse(loaded: LoadedModel, passage: Passage, *, segment: int) -> Analysis:
    """Surprise, activations, correlations, gate statistics and gradient flow through time of a passage."""
    tr = trace(loaded.model, passage.ids, segment=segment)
    sur = surprise(tr)
    series = unit_series(tr)
    text_chars = [chr(s) for s in loaded.vocab.decode_symbols(passage.ids)]
    corr = find_correlated(series, text_properties("".join(text_chars)))
    n_units = sum(a.shape[1] for _, _, a in series)
    shown = max(2, min(len(passage.ids), MAX_ACTIVATION_BYTES // max(n_units, 1)))
    units = [{"layer": k, "kind": kind, "size": acts.shape[1],
              "data": _quantized(np.tanh(acts[:shown]) if kind == "cell" else acts[:shown])}
             for k, kind, acts in series]
    return Analysis(sur, corr, gate_stats(tr), units, shown, memory(loaded.model, passage.ids))


def passage_data(loaded: LoadedModel, passage: Passage, analysis: Analysis) -> dict[str, Any]:
    """The page script's data for the surprise heatmap and the neuron explorer."""
    sur = analysis.surprise
    return {
        "vocab": display_symbols(loaded),
        "ids": passage.ids.tolist(),
        "loss": [round(float(v), 3) for v in np.nan_to_num(sur.loss, nan=99.0, posinf=99.0)],
        "top_ids": sur.top_ids.astype(int).ravel().tolist(),
        "top_probs": [round(float(v), 3) for v in np.nan_to_num(sur.top_probs.ravel())],
        "k": int(sur.top_ids.shape[1]),
        "units": analysis.units,
        "shown": analysis.shown,
    }
