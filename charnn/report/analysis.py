"""The report's numbers: a run directory's metrics, samples and config as records, and a passage run through a
loaded model (surprise, activations, correlated units, gate statistics, gradient flow through time) as data for
the page. No HTML here: the section modules (`curves`, `record`, `passage`, `lookback`) lay it out.
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

from charnn.data import unknown_count, unknown_symbols
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
from charnn.store.checkpoint import LoadedModel
from charnn.textfile import open_input

MAX_CHARS = 5000  # passage length shown by default
MAX_ACTIVATION_BYTES = 3_000_000  # int8 activations embedded for the explorer; beyond it the passage is cut
LN2 = math.log(2)


# --- the run directory ----------------------------------------------------------------------------------

MAX_STEP = 2**53  # the largest step a float (a chart's x) holds exactly; a larger one is no run's
SECTIONS = ("model", "train", "data", "corpus", "init_from", "plan")  # config.json's objects


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a .jsonl file; a missing file is empty. A line that is not a JSON object (torn by a crash
    mid-write, or edited) is skipped, with one warning for the file."""
    out, skipped = [], 0
    for line in _read(path).splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            out.append(record)
        else:
            skipped += line.strip() != ""
    _skipped(path, skipped, "unreadable line(s)")
    return out


def _read(path: Path) -> str:
    """The text of a side file; "" when it is missing, or (with a warning) when it is there but is no regular
    file (a FIFO would block the read, a device never end it) or cannot be read."""
    if not os.path.lexists(path):
        return ""
    try:
        f, _ = open_input(path)
        with f:
            return f.read().decode("utf-8", errors="replace")
    except (DataError, OSError) as err:
        _warn(path, f"left out of the report ({err})")
        return ""


def _skipped(path: Path, count: int, what: str) -> None:
    if count:
        _warn(path, f"skipped {count} {what}")


def _warn(path: Path, text: str) -> None:
    warnings.warn(f"{path}: {text}", CharnnWarning, stacklevel=4)


def real(value: Any) -> bool:
    """A JSON number a float can hold (NaN and infinities included), not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:  # an int of 400 digits
        return False
    return True


def is_number(value: Any) -> bool:
    """A finite number: what a chart can place on an axis."""
    return real(value) and math.isfinite(value)


def number(record: dict, key: str) -> float:
    """`record[key]` as a float (NaN and infinities as they are); NaN when it is missing or not a number."""
    value = record.get(key)
    return float(value) if real(value) else math.nan


def is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STEP


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records), each by step; a resumed run's repeated steps keep their last record.
    A record without a step or without its loss (a number, NaN allowed: a diverged run logs one) is skipped."""
    by_kind: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}
    needs = {"train": "train_loss", "eval": "val_loss"}
    path = run_dir / "metrics.jsonl"
    skipped = 0
    for rec in read_jsonl(path):
        kind = rec.get("kind")
        if kind not in by_kind:
            continue  # "stop" records, and kinds of later versions
        if is_step(rec.get("step")) and real(rec.get(needs[kind])):
            by_kind[kind][rec["step"]] = {**rec, needs[kind]: float(rec[needs[kind]])}
        else:
            skipped += 1
    _skipped(path, skipped, "record(s) without a step or a loss")
    return (
        [by_kind["train"][s] for s in sorted(by_kind["train"])],
        [by_kind["eval"][s] for s in sorted(by_kind["eval"])],
    )


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """samples.jsonl's records with a step, each field of the type the timeline shows (None: not known)."""
    path = run_dir / "samples.jsonl"
    records = read_jsonl(path)
    out = [
        {
            "step": r["step"],
            "elapsed": number(r, "elapsed"),
            "val_loss": number(r, "val_loss") if real(r.get("val_loss")) else None,
            "temperature": r["temperature"] if real(r.get("temperature")) else "?",
            "text": r.get("text") if isinstance(r.get("text"), str) else "",
            "novelty": read_novelty(r.get("novelty")),
        }
        for r in records
        if is_step(r.get("step"))
    ]
    _skipped(path, len(records) - len(out), "record(s) without a step")
    return out


def read_novelty(record: Any) -> dict[str, Any] | None:
    """A sample's novelty record (charnn.novelty) with the fields the report shows, each of its type; None when
    the sample has none (written before novelty was recorded, or unavailable for that run)."""
    if not isinstance(record, dict) or not is_step(record.get("longest")) or not real(record.get("share")):
        return None
    spans = record.get("spans") if isinstance(record.get("spans"), list) else []
    return {
        "longest": record["longest"],
        "share": float(record["share"]),
        "copy_span": record.get("copy_span") if is_step(record.get("copy_span")) else "?",
        "spans": [
            (a, b) for a, b in (s for s in spans if isinstance(s, list) and len(s) == 2) if is_step(a) and is_step(b)
        ],
    }


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.json, {} when missing or unreadable; a section that is not an object is dropped (with a warning)."""
    path = run_dir / "config.json"
    try:
        config = json.loads(_read(path) or "{}")
    except (ValueError, RecursionError):
        _warn(path, "not JSON; left out of the report")
        return {}
    if not isinstance(config, dict):
        _warn(path, "not a JSON object; left out of the report")
        return {}
    bad = [k for k in SECTIONS if k in config and not isinstance(config[k], dict)]
    _skipped(path, len(bad), f"section(s) that are not objects ({', '.join(bad)})")
    return {k: v for k, v in config.items() if k not in bad}


@dataclass(frozen=True)
class RunLog:
    """What a run directory recorded besides its checkpoints."""

    config: dict[str, Any]  # config.json, {} when missing or unreadable
    train: list[dict]  # metrics.jsonl training records, by step
    evals: list[dict]  # metrics.jsonl validation records, by step
    samples: list[dict]  # samples.jsonl


def read_run_log(run_dir: Path) -> RunLog:
    train, evals = read_metrics(run_dir)
    return RunLog(read_config(run_dir), train, evals, read_samples(run_dir))


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
            warnings.warn(
                f"{text}: skipped {unknown_count(unknown)} not in the model's vocabulary "
                f"({unknown_symbols(loaded.vocab, unknown)})",
                CharnnWarning,
                stacklevel=3,
            )
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
    units = [
        {
            "layer": k,
            "kind": kind,
            "size": acts.shape[1],
            "data": _quantized(np.tanh(acts[:shown]) if kind == "cell" else acts[:shown]),
        }
        for k, kind, acts in series
    ]
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
