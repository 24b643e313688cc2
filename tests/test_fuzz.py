"""Fuzzing the model-file loader: truncations, bit flips and header/metadata edits of a valid file of a
few KB either load (the edit happened to keep the file valid) or raise `CheckpointError`; never another
exception, never a hang, never a huge allocation. A slice of the cases also goes through `charnn sample`.
"""

from __future__ import annotations

import json
import resource
import struct
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charnn.config import DataConfig, ModelConfig
from charnn.data import Vocab
from charnn.errors import CheckpointError
from charnn.model import CharRNN
from charnn.store.checkpoint import load_model, model_bytes
from tests.conftest import invoke

CASES = {"truncate": 80, "flip": 120, "header": 100, "metadata": 80, "cli": 40}  # 420 cases per run


def fuzz(kind: str) -> settings:
    return settings(
        max_examples=CASES[kind],
        deadline=2000,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _valid_file() -> bytes:
    torch.manual_seed(0)
    vocab = Vocab(tuple(map(ord, "\n abc")))
    model = CharRNN(ModelConfig(model="gru", layers=2, hidden=4, embed=3), len(vocab))
    return model_bytes(model, vocab, DataConfig(), step=3, val_loss=1.5, corpus_sha256="0" * 64)


VALID = _valid_file()
HEADER_LEN = struct.unpack("<Q", VALID[:8])[0]
HEADER = json.loads(VALID[8 : 8 + HEADER_LEN])
DATA = VALID[8 + HEADER_LEN :]
RAN = {k: 0 for k in CASES}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    with torch.device("meta"):  # first meta-device use imports torch's meta kernels (seconds): not per case
        CharRNN(ModelConfig(model="gru", layers=1, hidden=2, embed=2), 2)
    return path


def check(workdir: Path, blob: bytes, kind: str) -> None:
    """Load `blob` as a checkpoint: success or CheckpointError only, quickly and without a big allocation."""
    RAN[kind] += 1
    path = workdir / "step-00000003.safetensors"
    path.write_bytes(blob)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        loaded = load_model(path)
    except CheckpointError as err:
        assert str(path) in str(err) or "checkpoint" in str(err)
        assert "\n" not in str(err)
    else:
        assert loaded.model.vocab_size == len(loaded.vocab)
    assert time.perf_counter() - t0 < 1.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB


def test_the_valid_file_is_small_and_loads(workdir: Path):
    assert len(VALID) < 8192
    check(workdir, VALID, "truncate")


@fuzz("truncate")
@given(cut=st.integers(0, len(VALID) - 1))
def test_truncated(workdir: Path, cut: int):
    with pytest.raises(CheckpointError):
        load_model(_write(workdir, VALID[:cut]))
    check(workdir, VALID[:cut], "truncate")


def _write(workdir: Path, blob: bytes) -> Path:
    path = workdir / "step-00000003.safetensors"
    path.write_bytes(blob)
    return path


@fuzz("flip")
@given(
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 7)), min_size=1, max_size=4),
    region=st.sampled_from(["anywhere", "prefix", "data"]),
)
def test_bit_flips(workdir: Path, flips, region: str):
    blob = bytearray(VALID)
    for pos, bit in flips:
        if region == "prefix":
            pos %= 8
        elif region == "data":
            pos = 8 + HEADER_LEN + pos % len(DATA)
        blob[pos] ^= 1 << bit
    if region == "data" and bytes(blob) != VALID:
        with pytest.raises(CheckpointError, match="checksum mismatch"):  # weights are never silently wrong
            load_model(_write(workdir, bytes(blob)))
    check(workdir, bytes(blob), "flip")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 2**20, 2**31, 2**63])
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["F32", "F16", "I64", "lstm", "{}", "[]"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _paths(obj, prefix=()):
    """Every key path inside a JSON value (dicts and lists)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


HEADER_PATHS = [p for p in _paths(HEADER) if p and p[0] != "__metadata__"] + [("__metadata__",)]


def _edit(obj, path, value, delete: bool):
    obj = json.loads(json.dumps(obj))
    target = obj
    for key in path[:-1]:
        target = target[key]
    if delete and isinstance(target, dict):
        del target[path[-1]]
    elif delete:
        target.pop(path[-1])
    else:
        target[path[-1]] = value
    return obj


def _assemble(header: dict, *, length_delta: int = 0) -> bytes:
    raw = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + DATA


@pytest.mark.slow
@fuzz("header")
@given(
    path=st.sampled_from(HEADER_PATHS),
    value=JSON_VALUES,
    delete=st.booleans(),
    length_delta=st.sampled_from([0, 0, 0, -1, 1, 10**6]),
)
def test_header_edits(workdir: Path, path, value, delete: bool, length_delta: int):
    check(workdir, _assemble(_edit(HEADER, path, value, delete), length_delta=length_delta), "header")


META_KEYS = sorted(HEADER["__metadata__"])
NESTED = {
    "model_config": json.loads(HEADER["__metadata__"]["model_config"]),
    "data_config": json.loads(HEADER["__metadata__"]["data_config"]),
    "vocab": json.loads(HEADER["__metadata__"]["vocab"]),
    "checksums": json.loads(HEADER["__metadata__"]["checksums"]),
}
NESTED_PATHS = [(key, *p) for key, value in NESTED.items() for p in _paths(value) if p]


@fuzz("metadata")
@given(data=st.data())
def test_metadata_edits(workdir: Path, data):
    header = json.loads(json.dumps(HEADER))
    meta = header["__metadata__"]
    if data.draw(st.booleans(), label="nested"):
        key, *inner = data.draw(st.sampled_from(NESTED_PATHS), label="path")
        value = data.draw(JSON_VALUES, label="value")
        meta[key] = json.dumps(
            _edit(NESTED[key], tuple(inner), value, data.draw(st.booleans(), label="delete")), allow_nan=True
        )
    else:
        key = data.draw(st.sampled_from(META_KEYS), label="key")
        choice = data.draw(st.sampled_from(["text", "json", "delete"]), label="how")
        if choice == "delete":
            del meta[key]
        elif choice == "text":
            meta[key] = data.draw(st.text(max_size=20), label="text")
        else:
            meta[key] = json.dumps(data.draw(JSON_VALUES, label="value"), allow_nan=True)
    check(workdir, _assemble(header), "metadata")


@fuzz("cli")
@given(how=st.sampled_from(["truncate", "flip"]), pos=st.integers(0, len(VALID) - 1), bit=st.integers(0, 7))
def test_cli_answers_every_broken_file_in_one_line(workdir: Path, how: str, pos: int, bit: int):
    RAN["cli"] += 1
    blob = bytearray(VALID[:pos] if how == "truncate" else VALID)
    if how == "flip":
        blob[pos] ^= 1 << bit
    path = _write(workdir, bytes(blob))
    res = invoke("sample", path, "--length", "5", "--seed", "1")
    assert res.exit_code in (0, 2), res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code == 2:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr


def test_zz_report_how_many_cases_ran():
    """Runs last in this file: how many cases ran (visible with -rA or -s), at least 300 when the whole file ran."""
    total = sum(RAN.values())
    print(f"fuzz cases run: {total} {RAN}")
    if all(RAN[k] for k in CASES):  # the whole file ran (not a -k selection)
        assert total >= 300
