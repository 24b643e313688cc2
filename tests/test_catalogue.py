"""The catalogue of bad inputs: every one gets its exit code, exactly one `error: ...` line on
stderr, nothing on stdout, and no traceback. In-process through CliRunner; a few also through `python -m charnn`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import pickle
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from hashlib import sha256 as _sha256
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from charnn.config import ModelConfig, TrainConfig
from charnn.store.checkpoint import read_header
from charnn.store.trainstate import load_state
from charnn.training.train import train
from tests.conftest import (
    PYTHON,
    SMALL_MODEL,
    TINY_TEXT,
    cli_env,
    corpus_of,
    exit_code_in_child,
    invoke,
    one_error_line,
    small_train,
    snapshot,
    torch_save_bytes,
)

SEQ = 16  # --seq-len of the "too short" cases (with --batch-size 1)


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Every bad input lives here, next to one good run ("run") to point the checkpoint cases at."""
    w = tmp_path_factory.mktemp("catalogue")
    corpus = w / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    train(
        corpus,
        model_cfg=ModelConfig(model="gru", layers=1, hidden=16, embed=8),
        train_cfg=TrainConfig(
            batch_size=4, seq_len=16, max_iters=10, eval_every=10, sample_length=0, warmup_iters=0, device="cpu", seed=1
        ),
        out_dir=w / "run",
    )
    good = w / "run" / "step-00000010.safetensors"
    (w / "changed.txt").write_text(TINY_TEXT + "more\n", encoding="utf-8")
    (w / "adir").mkdir()
    (w / "empty.txt").write_bytes(b"")
    (w / "binary.bin").write_bytes(b"ELF\x00\x01\x02text\x00")
    (w / "bad_utf8.txt").write_bytes(b"hello \xff world")
    (w / "utf16.txt").write_bytes("no bom here".encode("utf-16-le"))
    (w / "spaces.txt").write_text("  \n\t \r\n   \n", encoding="utf-8")
    for size in (1, SEQ, SEQ + 1):
        (w / f"short{size}.txt").write_text(("abcdefgh" * 10)[:size], encoding="utf-8")
    # the plan shrinks the batch to fit small text; 8 characters leave one for validation: too few
    (w / "short_default.txt").write_text(TINY_TEXT[:8], encoding="utf-8")
    (w / "unknown.txt").write_text("First \u00e9 Citizen\u2603\n", encoding="utf-8")
    (w / "text.safetensors").write_text("this is not a checkpoint\n")
    blob = bytearray(good.read_bytes())
    blob[-100] ^= 0x10
    (w / "corrupt.safetensors").write_bytes(bytes(blob))
    (w / "truncated.safetensors").write_bytes(good.read_bytes()[:-50])
    (w / "pickled.safetensors").write_bytes(torch_save_bytes({"model": torch.zeros(3)}))
    (w / "payload.safetensors").write_bytes(pickle.dumps(Payload(w / "PWNED")))
    (w / "payload_torch.pt").write_bytes(torch_save_bytes({"x": Payload(w / "PWNED")}))
    (w / "foreign.safetensors").write_bytes(st_save({"w": torch.zeros(2)}, metadata={"format": "pt"}))
    (w / "norun").mkdir()
    (w / "not_a_run").mkdir()
    shutil.copy(good, w / "not_a_run" / "step-00000010.safetensors")  # checkpoints but no config.json
    user_files(w / "userdir")
    os.mkfifo(w / "fifo")  # reading it would wait for a writer forever
    (w / "fifo_link").symlink_to(w / "fifo")
    return w


def user_files(d: Path) -> dict[str, bytes]:
    """A directory of someone's own files, some with the names a run uses; what it holds."""
    d.mkdir()
    files = {
        "notes.txt": b"mine\n",
        "config.json": b'{"theme": "dark"}\n',
        "vocab.json": b"[1, 2]\n",
        ".important.tmp": b"keep me\n",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


T = ["train", "--quiet", "--device", "cpu"]
SHORT = ["--batch-size", "1", "--seq-len", str(SEQ), "--layers", "1", "--hidden", "8", "--embed", "4"]

# (id, argv with {w} for the world directory, exit code, a piece of the message)
CATALOGUE = [
    # the corpus
    ("missing file", [*T, "{w}/nope.txt"], 2, "no such file"),
    ("directory", [*T, "{w}/adir"], 2, "is a directory"),
    ("empty file", [*T, "{w}/empty.txt"], 2, "empty (0 bytes)"),
    ("binary NUL", [*T, "{w}/binary.bin"], 2, "binary file"),
    ("invalid utf-8", [*T, "{w}/bad_utf8.txt"], 2, "not valid utf-8 at byte 6"),
    ("utf-16 without BOM", [*T, "{w}/utf16.txt", "--encoding", "utf-16"], 2, "not valid utf-16"),
    ("whitespace only", [*T, "{w}/spaces.txt"], 2, "only whitespace"),
    ("too short: 0", [*T, "{w}/empty.txt", *SHORT], 2, "0 bytes"),
    ("too short: 1", [*T, "{w}/short1.txt", *SHORT], 2, "validation split has 1 character"),
    ("too short: seq_len", [*T, "{w}/short16.txt", *SHORT], 2, "training split has 14 characters"),
    ("too short: seq_len+1", [*T, "{w}/short17.txt", *SHORT], 2, "training split has 15 characters"),
    ("too short for any plan", [*T, "{w}/short_default.txt"], 2, "validation split has 1 characters"),
    ("no corpus", [*T], 2, "missing CORPUS"),
    ("existing run without --resume", [*T, "{w}/tiny.txt", "--out", "{w}/run", *SHORT], 2, "already holds a run"),
    # bad flag values
    ("--hidden 0", [*T, "{w}/tiny.txt", "--hidden", "0"], 2, "--hidden"),
    ("--hidden abc", [*T, "{w}/tiny.txt", "--hidden", "abc"], 2, "--hidden"),
    ("--layers 0", [*T, "{w}/tiny.txt", "--layers", "0"], 2, "--layers"),
    ("--embed 0", [*T, "{w}/tiny.txt", "--embed", "0"], 2, "--embed"),
    ("--dropout 1.5", [*T, "{w}/tiny.txt", "--dropout", "1.5"], 2, "--dropout"),
    ("--lr -1", [*T, "{w}/tiny.txt", "--lr", "-1"], 2, "--lr"),
    ("--lr nan", [*T, "{w}/tiny.txt", "--lr", "nan"], 2, "--lr"),
    ("--min-lr above --lr", [*T, "{w}/tiny.txt", "--lr", "0.001", "--min-lr", "0.1"], 2, "--min-lr"),
    ("--batch-size 0", [*T, "{w}/tiny.txt", "--batch-size", "0"], 2, "--batch-size"),
    ("--seq-len 0", [*T, "{w}/tiny.txt", "--seq-len", "0"], 2, "--seq-len"),
    ("--max-iters 0", [*T, "{w}/tiny.txt", "--max-iters", "0"], 2, "--max-iters"),
    ("--epochs 0", [*T, "{w}/tiny.txt", "--epochs", "0"], 2, "--epochs"),
    ("--time-budget -5", [*T, "{w}/tiny.txt", "--time-budget", "-5"], 2, "--time-budget"),
    ("--keep-last 0", [*T, "{w}/tiny.txt", "--keep-last", "0"], 2, "--keep-last"),
    ("--grad-clip -1", [*T, "{w}/tiny.txt", "--grad-clip", "-1"], 2, "--grad-clip"),
    ("--val-frac 0.7", [*T, "{w}/tiny.txt", "--val-frac", "0.7"], 2, "--val-frac"),
    ("--val-frac + --test-frac", [*T, "{w}/tiny.txt", "--val-frac", "0.5", "--test-frac", "0.45"], 2, "--test-frac"),
    ("--model foo", [*T, "{w}/tiny.txt", "--model", "foo"], 2, "--model"),
    ("--preset huge", [*T, "{w}/tiny.txt", "--preset", "huge"], 2, "--preset"),
    ("--precision fp8", [*T, "{w}/tiny.txt", "--precision", "fp8"], 2, "--precision"),
    ("--encoding nope", [*T, "{w}/tiny.txt", "--encoding", "nope"], 2, "--encoding"),
    ("--encoding rot13", [*T, "{w}/tiny.txt", "--encoding", "rot13", *SHORT], 2, "not a text encoding"),
    ("--errors bogus", [*T, "{w}/tiny.txt", "--errors", "bogus"], 2, "--errors"),
    ("--device tpu", [*T, "{w}/tiny.txt", "--device", "tpu"], 2, "--device"),
    ("--threads 0", [*T, "{w}/tiny.txt", "--threads", "0"], 2, "--threads"),
    ("unknown option", [*T, "{w}/tiny.txt", "--hiden", "8"], 2, "--hiden"),
    ("unknown command", ["trian", "{w}/tiny.txt"], 2, "trian"),
    # resume
    ("resume: missing directory", [*T, "--resume", "{w}/nope"], 2, "nope"),
    ("resume: not a run", [*T, "--resume", "{w}/adir"], 2, "not a charnn run"),
    ("resume: changed corpus", [*T, "{w}/changed.txt", "--resume", "{w}/run"], 2, "corpus differs"),
    ("resume: changed model", [*T, "--resume", "{w}/run", "--hidden", "64"], 2, "cannot change on resume"),
    ("resume: changed cell", [*T, "--resume", "{w}/run", "--model", "lstm"], 2, "cannot change on resume"),
    ("resume: changed decoding", [*T, "--resume", "{w}/run", "--bytes"], 2, "cannot change on resume"),
    ("resume: with --preset", [*T, "--resume", "{w}/run", "--preset", "tiny"], 2, "--preset"),
    ("resume: a flag out of range", [*T, "--resume", "{w}/run", "--lr", "20"], 2, "error: --lr must be at most 10"),
    (
        "resume: --min-lr above the run's --lr",
        [*T, "--resume", "{w}/run", "--min-lr", "5"],
        2,
        "error: --min-lr (5.0) must not exceed --lr",
    ),
    # checkpoints (sample)
    ("sample: missing run", ["sample", "{w}/nope"], 2, "no such run"),
    ("sample: directory without checkpoints", ["sample", "{w}/norun"], 2, "no checkpoints"),
    ("sample: text file as checkpoint", ["sample", "{w}/text.safetensors"], 2, "not a charnn checkpoint"),
    ("sample: corrupt checkpoint", ["sample", "{w}/corrupt.safetensors"], 2, "checksum mismatch"),
    ("sample: truncated checkpoint", ["sample", "{w}/truncated.safetensors"], 2, "truncated or corrupt"),
    ("sample: pickled checkpoint", ["sample", "{w}/pickled.safetensors"], 2, "not a charnn checkpoint"),
    ("sample: pickle payload", ["sample", "{w}/payload.safetensors"], 2, "not a charnn checkpoint"),
    ("sample: torch payload", ["sample", "{w}/payload_torch.pt"], 2, "not a charnn checkpoint"),
    ("sample: foreign safetensors", ["sample", "{w}/foreign.safetensors"], 2, "not a charnn checkpoint"),
    ("sample: empty checkpoint", ["sample", "{w}/empty.txt"], 2, "not a charnn checkpoint"),
    (
        "sample: unknown prime characters",
        ["sample", "{w}/run", "--prime", "caf\u00e9\u2603"],
        2,
        "not in this model's vocabulary",
    ),
    ("sample: --temperature 0", ["sample", "{w}/run", "--temperature", "0"], 2, "--temperature"),
    ("sample: --temperature -1", ["sample", "{w}/run", "-t", "-1"], 2, "--temperature"),
    ("sample: --top-k 0", ["sample", "{w}/run", "--top-k", "0"], 2, "--top-k"),
    ("sample: --top-p 2", ["sample", "{w}/run", "--top-p", "2"], 2, "--top-p"),
    ("sample: --length -1", ["sample", "{w}/run", "--length", "-1"], 2, "--length"),
    ("sample: --num-samples 0", ["sample", "{w}/run", "--num-samples", "0"], 2, "--num-samples"),
    ("sample: --seed -1", ["sample", "{w}/run", "--seed", "-1"], 2, "--seed"),
    (
        "sample: samples beyond the RAM",
        ["sample", "{w}/run", "--num-samples", "100000", "--length", "1000000000"],
        5,
        "100,000 samples of 1,000,000,000 characters need about",
    ),
    ("sample: --which middle", ["sample", "{w}/run", "--which", "middle"], 2, "--which"),
    ("sample: --device tpu", ["sample", "{w}/run", "--device", "tpu"], 2, "--device"),
    ("sample: --temperature 1e-40", ["sample", "{w}/run", "-t", "1e-40", "--length", "5"], 2, "--temperature"),
    # sampling: --prime-file (read as a corpus is, checked against the model's vocabulary)
    ("sample: --prime-file missing", ["sample", "{w}/run", "--prime-file", "{w}/nope.txt"], 2, "no such file"),
    ("sample: --prime-file directory", ["sample", "{w}/run", "--prime-file", "{w}/adir"], 2, "is a directory"),
    ("sample: --prime-file empty", ["sample", "{w}/run", "--prime-file", "{w}/empty.txt"], 2, "empty (0 bytes)"),
    ("sample: --prime-file binary", ["sample", "{w}/run", "--prime-file", "{w}/binary.bin"], 2, "binary file"),
    (
        "sample: --prime-file invalid utf-8",
        ["sample", "{w}/run", "--prime-file", "{w}/bad_utf8.txt"],
        2,
        "not valid utf-8 at byte 6",
    ),
    (
        "sample: --prime-file unknown characters",
        ["sample", "{w}/run", "--prime-file", "{w}/unknown.txt"],
        2,
        "unknown.txt: 2 characters not in this model's vocabulary",
    ),
    (
        "sample: --prime-file and --prime",
        ["sample", "{w}/run", "--prime-file", "{w}/changed.txt", "--prime", "a"],
        2,
        "--prime and --prime-file",
    ),
    # eval
    ("eval: missing run", ["eval", "{w}/nope"], 2, "no such run"),
    ("eval: corrupt checkpoint", ["eval", "{w}/corrupt.safetensors", "{w}/tiny.txt"], 2, "checksum mismatch"),
    ("eval: pickle payload", ["eval", "{w}/payload.safetensors", "{w}/tiny.txt"], 2, "not a charnn checkpoint"),
    ("eval: missing file", ["eval", "{w}/run", "{w}/nope.txt"], 2, "no such file"),
    ("eval: directory", ["eval", "{w}/run", "{w}/adir"], 2, "is a directory"),
    ("eval: empty file", ["eval", "{w}/run", "{w}/empty.txt"], 2, "empty"),
    ("eval: binary file", ["eval", "{w}/run", "{w}/binary.bin"], 2, "binary file"),
    ("eval: invalid utf-8", ["eval", "{w}/run", "{w}/bad_utf8.txt"], 2, "at byte 6"),
    ("eval: unknown characters", ["eval", "{w}/run", "{w}/unknown.txt"], 2, "--skip-unknown"),
    ("eval: --batch-size 0", ["eval", "{w}/run", "{w}/tiny.txt", "--batch-size", "0"], 2, "--batch-size"),
    ("eval: --segment 1", ["eval", "{w}/run", "{w}/tiny.txt", "--segment", "1"], 2, "--segment"),
    ("eval: --device tpu", ["eval", "{w}/run", "{w}/tiny.txt", "--device", "tpu"], 2, "--device"),
    # data and eval: special files as input are refused before they are read, and a model file outside its
    # run directory has no validation split to score
    ("corpus: FIFO without a writer", [*T, "{w}/fifo"], 2, "is a pipe (FIFO), not a regular file"),
    ("corpus: /dev/zero", [*T, "/dev/zero"], 2, "is a character device"),
    ("resume: corpus is /dev/urandom", [*T, "/dev/urandom", "--resume", "{w}/run"], 2, "character device"),
    ("eval: FIFO", ["eval", "{w}/run", "{w}/fifo"], 2, "is a pipe (FIFO)"),
    ("eval: /dev/urandom", ["eval", "{w}/run", "/dev/urandom"], 2, "is a character device"),
    (
        "eval: model file outside a run, no FILE",
        ["eval", "{w}/not_a_run/step-00000010.safetensors"],
        2,
        "pass a FILE to score",
    ),
    # runs: where a training writes, and which run it continues
    ("--out of a user's files", [*T, "{w}/tiny.txt", "--out", "{w}/userdir", *SHORT], 2, "not a charnn run's"),
    ("--out empty", [*T, "{w}/tiny.txt", "--out", ""], 2, "'--out': is empty"),
    ("--resume empty", [*T, "--resume", ""], 2, "'--resume': is empty"),
    ("--init-from empty", [*T, "{w}/tiny.txt", "--init-from", " "], 2, "'--init-from': is empty"),
    ("--cache-dir empty", [*T, "{w}/tiny.txt", "--cache-dir", ""], 2, "'--cache-dir': is empty"),
    ("--resume A --out B", [*T, "--resume", "{w}/run", "--out", "{w}/elsewhere"], 2, "drop --out"),
    (
        "sample: a file with --which latest",
        ["sample", "{w}/run/step-00000010.safetensors", "--which", "latest"],
        2,
        "--which latest chooses within a run directory",
    ),
    ("sample: a device as RUN", ["sample", "/dev/null"], 2, "not a run directory or checkpoint file"),
    ("eval: a pipe as RUN", ["eval", "{w}/fifo"], 2, "not a run directory or checkpoint file"),
    ("--init-from a pipe", [*T, "{w}/tiny.txt", "--init-from", "{w}/fifo"], 2, "not a run directory"),
    ("--out a device", [*T, "{w}/tiny.txt", "--out", "/dev/null"], 2, "not a run directory"),
    # output: an output path that is not a regular file is refused, never replaced (more below the table)
    ("output: report -o FIFO", ["report", "{w}/run", "-o", "{w}/fifo"], 2, "is a FIFO"),
    ("output: report -o link to FIFO", ["report", "{w}/run", "-o", "{w}/fifo_link"], 2, "a link to"),
    ("output: export -o FIFO", ["export", "{w}/run", "-o", "{w}/fifo"], 2, "is a FIFO"),
    ("output: export -o FIFO --force", ["export", "{w}/run", "-o", "{w}/fifo", "--force"], 2, "is a FIFO"),
    (
        "output: export onnx -o FIFO",
        ["export", "{w}/run", "--format", "onnx", "-o", "{w}/fifo_link", "--force"],
        2,
        "is a FIFO",
    ),
    # output: text echoed on stderr (a file name) has its control characters escaped: still one line
    ("output: file name with newline and ESC", ["eval", "{w}/run", "{w}/a\nb\x1b[2J.txt"], 2, "a\\nb\\x1b[2j"),
]

KNOWN_BUGS: list = []  # strict xfail cases: when one is fixed, the test turns red and it moves up


def _argv(args: list[str], w: Path) -> list[str]:
    return [a.replace("{w}", str(w)) for a in args]


def check_one_error(exit_code: int, stdout: str, stderr: str, expected_code: int, fragment: str) -> None:
    assert "Traceback" not in stderr + stdout
    assert exit_code == expected_code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert stdout == ""


@pytest.mark.parametrize(
    "name,args,code,fragment",
    [*CATALOGUE, *KNOWN_BUGS],
    ids=[c[0] for c in CATALOGUE] + [p.values[0] for p in KNOWN_BUGS],
)
def test_bad_input(world: Path, name: str, args: list[str], code: int, fragment: str):
    before = sorted(p.name for p in (world / "run").iterdir())
    result = invoke(*_argv(args, world))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    check_one_error(result.exit_code, result.stdout, result.stderr, code, fragment)
    assert not (world / "PWNED").exists()
    assert sorted(p.name for p in (world / "run").iterdir()) == before  # a refused command changes no run


def test_catalogue_size():
    names = [c[0] for c in CATALOGUE]
    assert len(set(names)) == len(names)
    print(f"catalogue: {len(CATALOGUE)} bad inputs (+{len(KNOWN_BUGS)} known bug)")
    assert len(CATALOGUE) >= 70


@pytest.mark.slow
@pytest.mark.parametrize("name", ["invalid utf-8", "sample: pickle payload"])
def test_bad_input_through_python_m_charnn(world: Path, name: str):
    """The same answers from a real process: `python -m charnn`, exit status and stderr as a shell sees them."""
    _, args, code, fragment = next(c for c in CATALOGUE if c[0] == name)
    proc = subprocess.run(
        [PYTHON, "-m", "charnn", *_argv(args, world)], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    check_one_error(proc.returncode, proc.stdout, proc.stderr, code, fragment)
    assert not (world / "PWNED").exists()


# --- data and eval: what a model file may not choose, damaged caches, files that change, memory ------------


def _crafted_model(src: Path, dst: Path, **meta) -> Path:
    """`src` re-saved with metadata fields replaced (a valid file: the tensor checksums still hold)."""
    from charnn.store.checkpoint import load_model, model_bytes

    m = load_model(src)
    fields = dict(step=m.step, val_loss=m.val_loss, corpus_sha256=m.corpus_sha256, train_cfg=m.meta.train_cfg)
    dst.write_bytes(model_bytes(m.model, m.vocab, m.data_cfg, **{**fields, **meta}))
    return dst


def test_a_model_file_never_chooses_what_eval_reads_or_writes(world: Path, tmp_path: Path):
    secret, leak = tmp_path / "secret.txt", tmp_path / "leak"
    secret.write_text(TINY_TEXT)  # readable, and even the corpus's own bytes: the model's sha256 matches it
    good = world / "run" / "step-00000010.safetensors"
    (tmp_path / "bare").mkdir()
    bare = _crafted_model(good, tmp_path / "bare" / "m.safetensors", corpus_path=str(secret), corpus_cache=str(leak))
    check_one_error(*_run(invoke("eval", bare)), 2, "pass a FILE to score")
    # inside a run directory the run's config.json names the corpus; the metadata's paths are ignored
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    inside = _crafted_model(good, run / "step-00000011.safetensors", corpus_path="/etc/passwd", corpus_cache=str(leak))
    result = invoke("eval", inside, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chars"] > 0
    assert not leak.exists() and not (tmp_path / ".cache").exists() and not (world / ".cache").exists()


def test_eval_uses_a_sound_cache_read_only_and_scores_past_a_damaged_one(tmp_path: Path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TINY_TEXT)
    out, cache = tmp_path / "checkpoints" / "run", tmp_path / "checkpoints" / ".cache"
    train(
        corpus,
        model_cfg=ModelConfig(model="gru", layers=1, hidden=16, embed=8),
        cache_dir=cache,
        out_dir=out,
        train_cfg=TrainConfig(
            batch_size=4, seq_len=16, max_iters=10, eval_every=10, sample_length=0, warmup_iters=0, device="cpu", seed=1
        ),
    )
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    want = next(r["val_loss"] for r in logged if r.get("val_loss") is not None)
    ids = next(cache.glob("*.ids"))
    stamp = sorted((p.name, p.stat().st_mtime_ns) for p in cache.iterdir())
    sound = json.loads(invoke("eval", out, "--json").stdout)
    assert sound["nats_per_char"] == pytest.approx(want, rel=1e-5)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in cache.iterdir()) == stamp  # read, never written
    blob = bytearray(ids.read_bytes())
    blob[-3:] = bytes(b ^ 1 for b in blob[-3:])  # the tail changed, the size kept
    ids.write_bytes(bytes(blob))
    result = invoke("eval", out, "--json")
    assert result.exit_code == 0 and "damaged" in result.stderr, result.output
    assert json.loads(result.stdout)["nats_per_char"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("change,code", [("append", 0), ("rewrite", 2)])
def test_corpus_changing_while_it_is_encoded(world: Path, tmp_path: Path, monkeypatch, change: str, code: int):
    """`train --no-cache`: text appended during encoding is left out (both passes read the bytes the file held
    when the first began); a rewrite in place between the passes is one error line, never a traceback."""
    import charnn.data
    import charnn.textfile

    corpus = tmp_path / "c.txt"
    corpus.write_text(TINY_TEXT)
    real = charnn.data.iter_symbols

    def changing(path, cfg, **kw):
        if kw.get("sha256"):  # the encode pass, after the scan: the file changes under it
            with open(corpus, "r+b" if change == "rewrite" else "ab") as g:
                g.write(b"Z" * 40)
        return real(path, cfg, **kw)

    monkeypatch.setattr(charnn.textfile, "CHUNK_BYTES", 256)
    monkeypatch.setattr(charnn.data, "iter_symbols", changing)
    result = invoke(*T, corpus, "--no-cache", *SHORT, "--max-iters", "2", "--out", tmp_path / "r")
    if code:
        check_one_error(result.exit_code, result.stdout, result.stderr, code, "changed while it was being read")
    else:
        assert result.exit_code == 0, result.output
        config = json.loads((tmp_path / "r" / "config.json").read_text())
        assert config["corpus"]["chars"] == len(TINY_TEXT)


def test_eval_segment_and_batch_size_have_no_memory_cliff(world: Path):
    """`--segment` far past the text scores it as one stream, `--batch-size` far past memory runs in turns:
    the figures of the sensible values, not a 24 GB allocation."""
    text = world / "tiny.txt"
    figures = {}
    for args in (
        ["--segment", str(len(TINY_TEXT))],
        ["--segment", "1000000000000"],
        ["--segment", "64"],
        ["--segment", "64", "--batch-size", "1000000000"],
    ):
        result = invoke("eval", world / "run", text, "--json", *args)
        assert result.exit_code == 0, result.output
        figures[tuple(args)] = json.loads(result.stdout)["nats_per_char"]
    values = list(figures.values())
    assert values[0] == pytest.approx(values[1], rel=1e-6) and values[2] == pytest.approx(values[3], rel=1e-6)


def test_memory_error_exits_5(world: Path, monkeypatch):
    import charnn.evaluate

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(charnn.evaluate, "evaluate_file", exhausted)
    check_one_error(*_run(invoke("eval", world / "run", world / "tiny.txt")), 5, "out of memory")


def test_a_model_larger_than_the_free_ram_is_refused_before_it_is_built(world: Path):
    from charnn.ram import available_ram

    if available_ram() is None:
        pytest.skip("no /proc/meminfo here")
    result = invoke(*T, world / "tiny.txt", "--hidden", "16384", "--layers", "16", "--out", world / "big")
    check_one_error(*_run(result), 5, "RAM free here")
    assert not (world / "big").exists()


@pytest.mark.parametrize(
    "limit,current,inactive,want_gb",
    [
        ("max", "0", "0", 8.0),  # no container limit: MemAvailable
        (str(4 << 30), str(3 << 30), "0", 1.0),  # the group's own limit, less what it uses
        (str(4 << 30), str(3 << 30), str(2 << 30), 3.0),  # the file cache it holds can be given back
        (str(4 << 30), str(5 << 30), "0", 0.0),  # over its limit (cache): nothing, never negative
    ],
)
def test_free_ram_in_a_container(tmp_path: Path, monkeypatch, limit, current, inactive, want_gb):
    import charnn.ram as ram

    (tmp_path / "meminfo").write_text(f"MemTotal: 1 kB\nMemAvailable: {8 << 20} kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(limit + "\n")
    (cgroup / "memory.current").write_text(current + "\n")
    (cgroup / "memory.stat").write_text(f"anon 1\ninactive_file {inactive}\nactive_file 7\n")
    monkeypatch.setattr(ram, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(ram, "CGROUP", cgroup)
    assert ram.available_ram() == int(want_gb * (1 << 30))


def test_cpu_allocation_failure_exits_5(world: Path, tmp_path: Path):
    """Under `ulimit -v` the CPU allocator fails (no OOM killer): exit 5 and one line, not its traceback."""
    limit = 3 << 30  # room for torch's libraries; a 16384-wide layer's 4 GB weight matrix cannot fit

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "charnn",
            *T,
            str(world / "tiny.txt"),
            "--hidden",
            "16384",
            "--layers",
            "1",
            "--out",
            str(tmp_path / "r"),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap,
    )
    check_one_error(proc.returncode, proc.stdout, proc.stderr, 5, "out of memory")


def test_unreadable_and_vanishing_inputs(world: Path, tmp_path: Path, monkeypatch):
    """Permissions cannot stop root, so the refusal is simulated at the one place inputs are opened."""
    import charnn.textfile as textfile

    text = tmp_path / "t.txt"
    text.write_text(TINY_TEXT)
    real = os.open

    def denied(path, flags, *args, **kwargs):
        if Path(path) == text:
            raise PermissionError(13, "Permission denied")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(textfile.os, "open", denied)
    check_one_error(*_run(invoke("eval", world / "run", text)), 2, "cannot read (Permission denied)")
    monkeypatch.setattr(textfile.os, "open", real)
    real_open, calls = textfile.open_input, []

    def vanishing(path):
        calls.append(path)
        if len(calls) == 2:  # after readable_file looked: gone before it is read
            text.unlink(missing_ok=True)
        return real_open(path)

    monkeypatch.setattr(textfile, "open_input", vanishing)
    check_one_error(*_run(invoke("eval", world / "run", text)), 2, "no such file")


@pytest.mark.slow
def test_dev_stdin_as_a_pipe_is_refused(world: Path):
    proc = subprocess.run(
        [PYTHON, "-m", "charnn", "eval", str(world / "run"), "/dev/stdin"],
        env=cli_env(),
        input="First Citizen:\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    check_one_error(proc.returncode, proc.stdout, proc.stderr, 2, "pipe (FIFO)")


def _run(result) -> tuple[int, str, str]:
    return result.exit_code, result.stdout, result.stderr


def test_cpu_allocation_failures_are_out_of_memory():
    from charnn.errors import OutOfMemoryError
    from charnn.runtime import user_device_error

    torch_cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 22716547072 bytes. Error code 12 (Cannot allocate memory)"
    )
    err = user_device_error(torch_cpu)
    assert isinstance(err, OutOfMemoryError) and "22.7 GB in RAM" in str(err) and "alloc_cpu" not in str(err)
    assert isinstance(user_device_error(MemoryError()), OutOfMemoryError)
    assert user_device_error(RuntimeError("expected scalar type Float")) is None


# --- runs: damaged checkpoints, interrupts, the lock, what --out may touch -----------------------------------


def relabel(path: Path, val_loss: float | None) -> None:
    """Rewrite a model file's validation loss, everything else as it was (a valid, verifiable file)."""
    from charnn.store.checkpoint import load_model, model_bytes

    loaded = load_model(path)
    m = loaded.meta
    path.write_bytes(
        model_bytes(
            loaded.model,
            m.vocab,
            m.data_cfg,
            step=m.step,
            val_loss=val_loss,
            corpus_sha256=m.corpus_sha256,
            corpus_path=m.corpus_path,
            corpus_cache=m.corpus_cache,
            train_cfg=m.train_cfg,
            state_sha256=m.state_sha256,
        )
    )


def answering_commands(run: Path, tmp: Path, *which: str) -> dict[str, list[str]]:
    """Every command whose answer belongs to one checkpoint of `run`."""
    return {
        "sample": ["sample", str(run), "--length", "5", *which],
        "eval": ["eval", str(run), *which],
        "report": ["report", str(run), "-o", str(tmp / "r.html"), *which],
        "export": ["export", str(run), "-o", str(tmp / "m.html"), *which],
        "serve": ["serve", str(run), "--port", "0", *which],
        "train --init-from": [*T, str(corpus_of(run)), "--init-from", str(run), "--out", str(tmp / "ft")],
    }


def test_runs_a_damaged_best_is_named_never_replaced(run_dir: Path, tmp_path: Path):
    """Each command refuses (exit 2, one line naming the file and another way) rather than answer for an older
    checkpoint; only the commands with --which are told of it."""
    from tests.conftest import flip_data_byte

    relabel(run_dir / "step-00000010.safetensors", 0.01)  # the best is not the newest
    flip_data_byte(run_dir / "step-00000010.safetensors")
    before = snapshot(run_dir)
    for name, args in answering_commands(run_dir, tmp_path).items():
        result = invoke(*args)
        line = one_error_line(result, 2)
        assert "step-00000010.safetensors: checksum mismatch" in line and "best checkpoint" in line, name
        assert str(run_dir / "step-00000020.safetensors") in line, name
        assert ("--which latest" in line) == (name != "train --init-from"), name
        assert result.stdout == "" and snapshot(run_dir) == before, name
    assert not list(tmp_path.glob("*.html")) and not (tmp_path / "ft").exists()
    assert invoke("sample", run_dir, "--length", "5", "--which", "latest").exit_code == 0


def test_runs_a_damaged_latest_is_named_with_which_latest(run_dir: Path, tmp_path: Path):
    from tests.conftest import flip_data_byte

    flip_data_byte(run_dir / "step-00000020.safetensors")
    for name, args in answering_commands(run_dir, tmp_path, "--which", "latest").items():
        if name == "train --init-from":
            continue
        line = one_error_line(invoke(*args), 2)
        assert "step-00000020.safetensors: checksum mismatch" in line and "latest checkpoint" in line, name
        assert "--which latest" not in line and "step-00000010.safetensors" in line, name


def test_runs_an_unreadable_label_does_not_silently_change_the_best(run_dir: Path):
    """A file whose metadata cannot be read may have been the best: `best` names it rather than pick another."""
    from charnn.errors import CheckpointError
    from charnn.store.rundir import load_run

    relabel(run_dir / "step-00000010.safetensors", 0.01)
    path = run_dir / "step-00000010.safetensors"
    path.write_bytes(path.read_bytes()[:6])  # the header is gone with its validation loss
    with pytest.raises(
        CheckpointError,
        match=r"step-00000010.safetensors: not a charnn checkpoint.*best "
        r"checkpoint is unknown.*--which latest",
    ):
        load_run(run_dir)
    assert load_run(run_dir, which="latest").step == 20
    line = one_error_line(invoke("eval", run_dir), 2)
    assert "step-00000010" in line and "--which latest" in line


def test_runs_resume_still_falls_back_past_a_damaged_newest(run_dir: Path):
    """Continuing is the point of --resume: it alone takes an older checkpoint (with a warning)."""
    from tests.conftest import flip_data_byte

    flip_data_byte(run_dir / "step-00000020.safetensors")
    result = invoke(*T, "--resume", run_dir, "--max-iters", "12")
    assert result.exit_code == 0, result.output
    assert "checksum mismatch" in result.stderr and "falling back" in result.stderr


def test_runs_a_checkpoint_pruned_while_read_is_chosen_again(run_dir: Path, monkeypatch):
    """A training pruning the run between the listing and the load: the file vanished, it is not damaged."""
    import charnn.store.rundir as rundir

    relabel(run_dir / "step-00000010.safetensors", 5.0)
    relabel(run_dir / "step-00000020.safetensors", 1.0)
    real_load, real_meta = rundir.load_model, rundir.read_meta
    gone = []

    def pruned_then_load(path, **kw):  # the chosen file is pruned just before it is opened
        if not gone:
            gone.append(path.name)
            path.unlink()
        return real_load(path, **kw)

    monkeypatch.setattr(rundir, "load_model", pruned_then_load)
    assert rundir.load_run(run_dir).step == 10 and gone == ["step-00000020.safetensors"]
    monkeypatch.setattr(rundir, "load_model", real_load)

    shutil.copy(run_dir / "step-00000010.safetensors", run_dir / "step-00000030.safetensors")

    def pruned_then_meta(path):  # pruned while the labels are read
        if path.name == "step-00000010.safetensors":
            path.unlink()
        return real_meta(path)

    monkeypatch.setattr(rundir, "read_meta", pruned_then_meta)
    assert rundir.choose_checkpoint(run_dir).name == "step-00000030.safetensors"


def test_runs_an_interrupt_during_validation_keeps_the_best_label(run_dir: Path):
    """SIGINT/SIGTERM during a validation pass (or the checkpoint write after it) stops at the next poll; the
    checkpoint of that step keeps its validation loss; a resumed run interrupted at once rewrites nothing."""
    from charnn.errors import Interrupted
    from charnn.store.checkpoint import read_meta
    from charnn.training.train import train

    for during in ("eval", "checkpoint"):
        seen = []
        with pytest.raises(Interrupted) as err:
            train(
                corpus_of(run_dir),
                model_cfg=SMALL_MODEL,
                train_cfg=small_train(max_iters=60),
                out_dir=run_dir,
                resume=True,
                on_progress=lambda p, seen=seen: seen.append(p),
                should_stop=lambda seen=seen, during=during: 15 if any(p.kind == during for p in seen) else None,
            )
        evals = [p for p in seen if p.kind == "eval"]
        assert err.value.exit_code == 143 and len(evals) == 1
        assert read_meta(run_dir / f"step-{evals[0].step:08d}.safetensors").val_loss == evals[0].val_loss
    before = snapshot(run_dir)
    with pytest.raises(Interrupted, match="interrupted at step 40"):
        train(
            corpus_of(run_dir),
            model_cfg=SMALL_MODEL,
            train_cfg=small_train(max_iters=60),
            out_dir=run_dir,
            resume=True,
            should_stop=lambda: 2,
        )
    assert snapshot(run_dir) == before


def test_runs_sighup_stops_like_sigterm():
    """Closing the terminal: the flag is set (the loop saves and exits 128 + 1), in a forked child."""
    import os
    import signal

    from charnn.cli.run import StopFlag

    def hang_up() -> int:
        with StopFlag() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            return 0 if stop() == signal.SIGHUP else 3

    assert exit_code_in_child(hang_up) == 0


@pytest.mark.slow
def test_runs_sighup_saves_a_checkpoint_and_exits_129(tmp_path: Path):
    import signal
    import time

    from charnn.store.rundir import list_checkpoints
    from charnn.training.resume import latest_resumable

    corpus = tmp_path / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "charnn",
            *T,
            str(corpus),
            "--out",
            str(run),
            *SHORT,
            "--max-iters",
            "1000000",
            "--eval-every",
            "1000000",
            "--log-every",
            "1",
        ],
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted at step")
    assert len(list_checkpoints(run)) == 1 and latest_resumable(run)[0].step >= 3


def test_runs_a_locked_run_is_refused(run_dir: Path, tmp_path: Path):
    """A training holds RUN/.lock: a second `--resume RUN`, or a new run into the same --out, is refused."""
    from charnn.store.runlock import lock_run

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with lock_run(run_dir), lock_run(fresh):
        before = snapshot(run_dir)
        line = one_error_line(invoke(*T, "--resume", run_dir, "--max-iters", "25"), 2)
        assert "being trained by another process" in line and str(os.getpid()) in line
        assert snapshot(run_dir) == before and (run_dir / "metrics.jsonl").read_text().count("\n") > 0
        line = one_error_line(invoke(*T, corpus_of(run_dir), "--out", fresh, *SHORT), 2)
        assert "being trained by another process" in line and not list_names(fresh, "step-")
    result = invoke(*T, "--resume", run_dir, "--out", run_dir, "--max-iters", "22")  # released; --out the same
    assert result.exit_code == 0, result.output


def list_names(d: Path, prefix: str) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(prefix)]


def test_runs_user_files_are_never_touched(world: Path, run_dir: Path, tmp_path: Path):
    """--out of someone's directory is refused whole; a resume removes only charnn's own temp names."""
    from charnn.store.files import remove_stale_temps

    d = tmp_path / "mine"
    files = user_files(d)
    one_error_line(invoke(*T, world / "tiny.txt", "--out", d, *SHORT), 2)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == files
    dead = 4_194_399  # above any pid_max: no such process
    (run_dir / ".important.tmp").write_bytes(b"x")
    (run_dir / f".notes.txt.{dead}.tmp").write_bytes(b"x")  # charnn's pattern, a name charnn never writes here
    (run_dir / f".step-00000030.safetensors.{dead}.tmp").write_bytes(b"half")
    (run_dir / f".config.json.{dead}.tmp").write_bytes(b"half")
    (run_dir / f".report.html.{os.getppid()}.tmp").write_bytes(b"half")  # a live process is still writing it
    result = invoke(*T, "--resume", run_dir, "--max-iters", "21")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run_dir.glob(".*.tmp")) == [
        ".important.tmp",
        f".notes.txt.{dead}.tmp",
        f".report.html.{os.getppid()}.tmp",
    ]
    assert remove_stale_temps(run_dir) == [run_dir / f".notes.txt.{dead}.tmp"]  # the pattern alone, no owner


def test_runs_out_may_be_a_run_that_never_saved(tmp_path: Path, world: Path):
    """A training stopped before its first checkpoint leaves only charnn's files: the same --out is taken. A
    run's file names without a charnn config.json beside them are someone else's."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("1\n")
    (run / ".config.json.5.tmp").write_text("half")
    assert invoke(*T, world / "tiny.txt", "--out", run, *SHORT, "--max-iters", "2").exit_code == 0
    for sidecar in ("vocab.json", "metrics.jsonl", "report.html"):
        theirs = tmp_path / sidecar
        theirs.mkdir()
        (theirs / sidecar).write_text("theirs")
        line = one_error_line(invoke(*T, world / "tiny.txt", "--out", theirs, *SHORT), 2)
        assert f"holds {sidecar}, which is not a charnn run's" in line
        assert [p.name for p in theirs.iterdir()] == [sidecar]


# output: special files are never replaced -------------------------------------------------------------------


def test_output_special_files_survive(world: Path):
    """The refused writes above left the FIFO a FIFO and no temp file beside it."""
    import stat

    for name in ("output: report -o FIFO", "output: export -o FIFO --force", "output: export onnx -o FIFO"):
        args = next(c[1] for c in CATALOGUE if c[0] == name)
        invoke(*_argv(args, world))
    assert stat.S_ISFIFO(os.stat(world / "fifo").st_mode) and (world / "fifo_link").is_symlink()
    assert not list(world.glob(".*.tmp"))


def test_output_target_names_a_device_without_writing():
    """/dev/null is only examined (os.stat): it is never a write target here, as root it could be replaced."""
    from charnn.errors import OutputPathError
    from charnn.store.files import output_target

    with pytest.raises(OutputPathError, match="/dev/null is a character device"):
        output_target("/dev/null")


def test_output_atomic_write_refuses_fifo_and_directory_and_writes_through_links(tmp_path: Path):
    from charnn.errors import CheckpointWriteError, OutputPathError
    from charnn.store.files import LineLog, atomic_write

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for target in ("fifo", "dir"):
        with pytest.raises(OutputPathError) as info:  # exit 2, and still a CheckpointWriteError for its callers
            atomic_write(tmp_path / target, b"x")
        assert info.value.exit_code == 2 and isinstance(info.value, CheckpointWriteError)
    with pytest.raises(OutputPathError, match="FIFO"):
        LineLog(tmp_path / "fifo", what="metrics log")  # refused at once: opening a FIFO would wait for a reader
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    atomic_write(tmp_path / "link.json", b"new")  # a link to a regular file: written through, stays a link
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo", "link.json", "real.json"]


# output: disk full while logging ------------------------------------------------------------------------------


def test_output_log_write_failure_cuts_the_torn_line_back(tmp_path: Path, monkeypatch):
    """A write that gets half a line out and then meets a full disk leaves the file as it was."""
    import errno

    from charnn.errors import CheckpointWriteError
    from charnn.store import files

    log = files.LineLog(tmp_path / "metrics.jsonl", what="metrics log")
    log.write('{"step": 1}\n')
    real_write = os.write

    def full_disk(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))  # a partial write, as at the edge of a file-size limit
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "write", full_disk)
    with pytest.raises(CheckpointWriteError, match="metrics log write failed.*No space left") as info:
        log.write('{"step": 2}\n')
    assert info.value.exit_code == 4
    monkeypatch.undo()
    log.write('{"step": 3}\n')
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 3}\n'


@pytest.mark.slow
def test_output_log_full_disk_through_python_m_charnn(world: Path, tmp_path: Path):
    """`--log-every 1` into a file-size limit (a disk filling up): exit 4, one error line, every logged line whole,
    the run's checkpoint intact."""
    import json
    import resource

    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    checkpoint = (run / "step-00000010.safetensors").read_bytes()
    limit = (run / "metrics.jsonl").stat().st_size + 3000  # about 15 more lines; the checkpoints are larger

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = [
        "train",
        "--quiet",
        "--device",
        "cpu",
        "--resume",
        str(run),
        "--log-every",
        "1",
        "--max-iters",
        "200",
        "--eval-every",
        "1000",
    ]
    proc = subprocess.run(
        [PYTHON, "-m", "charnn", *args], env=cli_env(), capture_output=True, text=True, timeout=120, preexec_fn=cap
    )
    check_one_error(proc.returncode, proc.stdout, proc.stderr, 4, "metrics log write failed")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) > 10 and all(line.endswith("\n") and json.loads(line) for line in lines)
    assert (run / "step-00000010.safetensors").read_bytes() == checkpoint


def test_output_failed_model_write_leaves_no_orphan_state(world: Path, tmp_path: Path, monkeypatch):
    """The disk fills between a checkpoint's state file and its model file: the state goes too (no half
    checkpoint using the space), the earlier checkpoint stays."""
    from charnn.errors import CheckpointWriteError
    from charnn.store import checkpoint

    real = checkpoint.atomic_write

    def model_write_fails(path, data, **kw):
        if str(path).endswith("00000020.safetensors"):
            raise CheckpointWriteError(f"checkpoint write failed (disk full?): {path}: No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(checkpoint, "atomic_write", model_write_fails)
    with pytest.raises(CheckpointWriteError):
        train(
            world / "tiny.txt",
            model_cfg=ModelConfig(model="gru", layers=1, hidden=8, embed=4),
            train_cfg=TrainConfig(
                batch_size=2,
                seq_len=8,
                max_iters=20,
                eval_every=10,
                sample_length=0,
                warmup_iters=0,
                device="cpu",
                seed=1,
            ),
            out_dir=tmp_path / "run",
        )
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*")) == [
        "step-00000010.safetensors",
        "step-00000010.state.pt",
    ]


# output: stdout that cannot be written or encoded -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command,closed", [(["sample", "--length", "20000"], False), (["eval", "--json"], True)])
def test_output_stdout_full_or_closed(world: Path, command: list[str], closed: bool):
    """`charnn sample RUN > /dev/full` and `charnn eval RUN >&-`: exit 4 and one line, nothing at exit."""
    args = [command[0], str(world / "run"), *command[1:]]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [PYTHON, "-m", "charnn", *args],
            env=cli_env(),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            preexec_fn=(lambda: os.close(1)) if closed else None,
        )
    check_one_error(proc.returncode, "", proc.stderr, 4, "it is closed" if closed else "no space left")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["sample", "--help"]])
def test_output_help_and_version_to_a_full_device(args: list[str]):
    """What click writes itself, before a command runs: one line and exit 4 too, never a traceback."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [PYTHON, "-m", "charnn", *args], env=cli_env(), stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
        )
    check_one_error(proc.returncode, "", proc.stderr, 4, "cannot write the output: no space left")


def test_output_stdout_full_in_process(monkeypatch):
    import errno
    import io
    import sys

    from charnn.cli.output import echo
    from charnn.errors import CheckpointWriteError

    class Full(io.StringIO):
        def flush(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sys, "stdout", Full())
    with pytest.raises(CheckpointWriteError, match="cannot write to stdout: No space left on device") as info:
        echo('{"file": "x"}')
    assert info.value.exit_code == 4


def test_output_stdout_encoding_is_one_error_line(monkeypatch):
    import io
    import sys

    from charnn.cli.output import echo
    from charnn.errors import ConfigError

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    with pytest.raises(ConfigError, match=r"encoding \(ascii\) cannot write 'é' \(U\+00E9\).*PYTHONIOENCODING"):
        echo("caf\u00e9")


# output: samples on a terminal are escaped, to a file exact -----------------------------------------------------


class _Terminal:
    """A stdout that says it is a terminal and keeps what is written to it."""

    def __init__(self, encoding="utf-8"):
        import io

        self.buffer, self.encoding = io.BytesIO(), encoding

    def isatty(self):
        return True

    def write(self, text):
        self.buffer.write(text.encode(self.encoding))

    def flush(self):
        pass


def test_output_terminal_escapes_bytes_and_controls(monkeypatch):
    import sys

    from charnn.cli.output import SampleWriter
    from charnn.data import Vocab

    vocab = Vocab(tuple(range(256)), bytes_mode=True)
    term = _Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    out = SampleWriter(vocab, escape=True)
    for b in b"a\x1b[2J\x00b\xff\tc\xc3":  # one byte per step; the last starts a two-byte character
        out.write([b])
    out.write([0xA9])  # ... finished in the next step: shown as the character, not two escapes
    out.write_text("\n")
    out.flush()
    assert term.buffer.getvalue().decode() == "a\\x1b[2J\\x00b\\xff\tc\u00e9\n"

    from charnn.cli.output import write_beams

    term = _Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    out = SampleWriter(vocab, escape=True)
    beams = [
        type("Beam", (), {"prime": [], "ids": list(text), "logprob": -1.0, "per_char": -0.5})()
        for text in (b"x\xc3", b"y")
    ]  # the first ends inside a character
    write_beams(beams, out, say=lambda line: None)
    assert term.buffer.getvalue().decode() == "x\\xc3\n---------------\ny\n"  # not carried into the second

    text = Vocab(tuple(map(ord, "ab\x1b\r\u202e\u00e9\n")))
    ascii_term = _Terminal("ascii")
    monkeypatch.setattr(sys, "stdout", ascii_term)
    out = SampleWriter(text, escape=True)
    out.write(list(range(len(text))))
    out.flush()
    assert ascii_term.buffer.getvalue() == b"ab\\x1b\\r\\u202e\\xe9\n"  # a terminal that cannot show 'é'


def test_output_training_display_escapes_samples(capsys):
    from charnn.cli.progress import TrainDisplay
    from charnn.training.runstate import Progress

    TrainDisplay()(Progress("sample", 5, 10, 1.0, text="x\x1b]0;pwned\x07\x00y\nz"))
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x00" not in err and "x\\x1b]0;pwned\\x07\\x00y\nz" in err


@pytest.mark.slow
def test_output_bytes_sample_on_a_pty_escaped_and_in_a_file_exact(tmp_path: Path):
    """`charnn sample BYTES_RUN` on a real terminal (a pty) shows no ESC or NUL; redirected, the bytes are exact."""
    import pty
    import select

    corpus = tmp_path / "esc.bin"
    corpus.write_bytes(b"".join(bytes([65 + i % 26, (0x1B, 0x00, 0xFF, 0x07)[i % 4]]) for i in range(3000)))
    train(
        corpus,
        model_cfg=ModelConfig(model="gru", layers=1, hidden=16, embed=8),
        train_cfg=TrainConfig(
            batch_size=4, seq_len=16, max_iters=5, eval_every=5, sample_length=0, warmup_iters=0, device="cpu", seed=1
        ),
        out_dir=tmp_path / "run",
        data_cfg=_bytes_data(),
    )
    args = [PYTHON, "-m", "charnn", "sample", str(tmp_path / "run"), "--length", "2000", "--seed", "1"]
    exact = subprocess.run(args, env=cli_env(), capture_output=True, timeout=120).stdout
    assert b"\x1b" in exact and b"\x00" in exact  # the product: the model's bytes as they are
    main, sub = pty.openpty()
    proc = subprocess.Popen(args, env=cli_env(), stdout=sub, stderr=subprocess.DEVNULL)
    os.close(sub)
    seen = b""
    while True:
        ready, _, _ = select.select([main], [], [], 120)
        try:
            chunk = os.read(main, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(main)
    assert proc.returncode == 0 and len(seen) > 2000
    assert b"\x1b" not in seen and b"\x00" not in seen and b"\\x1b" in seen


def _bytes_data():
    from charnn.config import DataConfig

    return DataConfig(bytes_mode=True)


# resume and run files: training options that may change on resume, a hand-edited config.json, a crafted
# training state (each resume below starts from a copy of the session's 20-step run, checkpoints at 10 and 20)

# Every training option of `charnn train` with a value other than the run's: each may change on resume.
RESUME_CHANGES = {
    "batch_size": "8",
    "seq_len": "8",
    "lr": "0.005",
    "min_lr": "0.001",
    "warmup_iters": "2",
    "weight_decay": "0.1",
    "grad_clip": "0",
    "state_reset": "0.1",
    "reshuffle": "64",
    "average": "0.5",
    "max_iters": "22",
    "epochs": "3",
    "time_budget": "60",
    "seed": "3",
    "eval_every": "1",
    "sample_every": "1",
    "sample_length": "5",
    "log_every": "2",
    "keep_last": "1",
    "patience": "3",
    "device": "cpu",
    "precision": "fp32",
    "deterministic": None,
    "threads": "1",
    "calibrate": None,  # on by default: --no-calibrate
}


def test_every_training_option_is_tried_on_resume():
    from charnn.cli.options import TRAIN_CONFIGS

    options = {
        f.name
        for cls in TRAIN_CONFIGS
        if cls is TrainConfig
        for f in dataclasses.fields(cls)
        if f.metadata.get("panel")
    }
    assert options == set(RESUME_CHANGES)


@pytest.mark.parametrize("name", RESUME_CHANGES)
def test_a_training_option_may_change_on_resume(run_dir: Path, name: str):
    value = RESUME_CHANGES[name]
    flag = "--no-calibrate" if name == "calibrate" else "--" + name.replace("_", "-")
    stop = [] if name in ("max_iters", "epochs", "time_budget") else ["--max-iters", "22"]
    result = invoke("train", "--quiet", "--resume", run_dir, flag, *([value] if value else []), *stop)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error:" not in result.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) > 20  # it trained on from step 20
    laid_out_anew = "start from a zero state" in result.stderr
    assert laid_out_anew == (name in ("batch_size", "seq_len", "seed")), result.stderr


def test_a_new_batch_size_carries_a_state_of_the_new_shape(run_dir: Path):
    """The carried state is re-laid, not reused: after a resume with 8 streams instead of 4, the next
    checkpoint's streams are 8 rows of the model's state."""
    result = invoke("train", "--quiet", "--resume", run_dir, "--batch-size", "8", "--max-iters", "21")
    assert result.exit_code == 0, result.output
    state = load_state(run_dir / "step-00000021.state.pt")
    assert [tuple(h.shape) for h in state["hidden"]] == [(1, 8, 16), (1, 8, 16)]
    assert state["train_config"]["batch_size"] == 8


def _edit(key: str, value) -> Callable[[dict], object]:
    section, _, name = key.partition(".")

    def edit(saved: dict) -> dict:
        if name:
            saved[section][name] = value
        elif value is _DROP:
            del saved[section]
        else:
            saved[section] = value
        return saved

    return edit


_DROP = object()
CONFIG_EDITS = [  # (id, edit of config.json, a piece of the one error line)
    ("hidden '32'", _edit("model.hidden", "32"), 'model.hidden must be an integer, not "32"'),
    ("hidden 32.0", _edit("model.hidden", 32.0), "model.hidden must be an integer, not 32.0"),
    ("layers true", _edit("model.layers", True), "model.layers must be an integer, not true"),
    ("hidden null", _edit("model.hidden", None), "model.hidden must not be null"),
    ("dropout 2", _edit("model.dropout", 2), "model.dropout must be at most 0.9"),
    ("batch_size '8'", _edit("train.batch_size", "8"), "train.batch_size must be an integer"),
    ("lr '0.01'", _edit("train.lr", "0.01"), "train.lr must be a number"),
    ("lr NaN", _edit("train.lr", float("nan")), "train.lr must be a finite number"),
    ("eval_segment 100.5", _edit("train.eval_segment", 100.5), "train.eval_segment must be an integer"),
    ("max_iters '5'", _edit("train.max_iters", "5"), "train.max_iters must be an integer or null"),
    ("min_lr above lr", _edit("train.min_lr", 5.0), "--min-lr (5.0) must not exceed --lr"),
    ("precision fp8", _edit("train.precision", "fp8"), "train.precision must be one of"),
    ("encoding 5", _edit("data.encoding", 5), "data.encoding must be a string, not 5"),
    ("keep_newlines 1", _edit("data.keep_newlines", 1), "data.keep_newlines must be true or false"),
    ("train null", _edit("train", None), "train must be a JSON object, not null"),
    ("no train", _edit("train", _DROP), "train must be a JSON object"),
    ("model a list", _edit("model", []), "model must be a JSON object, not []"),
    ("the file []", lambda saved: [], "config.json: not a JSON object"),
    ("corpus 'x'", _edit("corpus", "x"), 'corpus must be a JSON object, not "x"'),
    ("no corpus", _edit("corpus", _DROP), "corpus must be a JSON object"),
    ("corpus path 5", _edit("corpus.path", 5), "corpus.path must be the corpus file's path"),
]


@pytest.mark.parametrize("name,edit,fragment", CONFIG_EDITS, ids=[c[0] for c in CONFIG_EDITS])
def test_hand_edited_config_json_is_one_error_line(run_dir: Path, name: str, edit, fragment: str):
    config = run_dir / "config.json"
    config.write_text(json.dumps(edit(json.loads(config.read_text()))))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    result = invoke("train", "--quiet", "--device", "cpu", "--resume", run_dir)
    check_one_error(result.exit_code, result.stdout, result.stderr, 2, fragment)
    assert f"{config}: " in result.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing written


def _rehash_state(run: Path, step: int, change: Callable[[dict], None]) -> None:
    """Rewrite a checkpoint's training state with `change` applied, and its model file with the new sha256:
    a state that verifies, whatever it holds."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save_meta

    model = run / f"step-{step:08d}.safetensors"
    path = model.with_name(model.stem + ".state.pt")
    state = torch.load(path, weights_only=True)
    change(state)
    blob = torch_save_bytes(state)
    path.write_bytes(blob)
    _, meta, _, _ = read_header(model)
    meta = {**meta, "state_sha256": _sha256(blob).hexdigest()}
    model.write_bytes(st_save_meta(st_load(model.read_bytes()), metadata=meta))


def _set(path: str, value) -> Callable[[dict], None]:
    *keys, last = path.split("/")

    def change(state: dict) -> None:
        target = state
        for k in keys:
            target = target[int(k) if k.isdigit() else k]
        if value is _DROP:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


STATE_CHANGES = [  # (id, change of the training state, a piece of the warning)
    ("no optimizer", _set("optimizer", _DROP), "no 'optimizer'"),
    ("no rng", _set("rng", _DROP), "no 'rng'"),
    ("step 'abc'", _set("step", "abc"), "step 'abc' is not a step number"),
    ("elapsed NaN", _set("elapsed", float("nan")), "elapsed nan"),
    ("best_step -1", _set("best_step", -1), "best_step -1"),
    ("optimizer a list", _set("optimizer", [1, 2]), "not an optimizer's"),
    ("rng torch a float", _set("rng/torch", torch.zeros(3)), "RNG state is not charnn's"),
    ("rng torch short", _set("rng/torch", torch.zeros(3, dtype=torch.uint8)), "unusable RNG"),
    ("rng python short", _set("rng/python", [3, [1, 2], None]), "unusable RNG"),
    (
        "hidden of 2 streams",
        lambda s: s.__setitem__("hidden", [h[:, :2] for h in s["hidden"]]),
        "does not fit this lstm of 4 streams",
    ),
    ("hidden one tensor", lambda s: s.__setitem__("hidden", s["hidden"][0]), "does not fit this lstm"),
    ("hidden 2-d", lambda s: s.__setitem__("hidden", [h[0] for h in s["hidden"]]), "hidden state is not"),
    ("train_config batch '4'", _set("train_config/batch_size", "4"), "does not fit"),
    (
        "optimizer moment of another shape",
        _set("optimizer/state/0/exp_avg", torch.zeros(3)),
        "optimizer state does not fit this model",
    ),
    (
        "optimizer one parameter",
        _set("optimizer/param_groups/0/params", [0]),
        "optimizer state does not fit this model",
    ),
    ("optimizer one group", lambda s: s["optimizer"]["param_groups"].pop(), "parameter groups"),
    ("scaler 5", _set("scaler", 5), "scaler is not a dictionary"),
]


@pytest.mark.parametrize("name,change,fragment", STATE_CHANGES, ids=[c[0] for c in STATE_CHANGES])
def test_a_crafted_training_state_falls_back_with_a_warning(run_dir: Path, name: str, change, fragment: str):
    _rehash_state(run_dir, 20, change)
    result = invoke("train", "--quiet", "--device", "cpu", "--resume", run_dir, "--max-iters", "11")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    (warning,) = (line for line in result.stderr.splitlines() if line.startswith("warning: "))
    assert warning.startswith(f"warning: {run_dir}/step-00000020.state.pt: ") and fragment in warning, warning
    assert "falling back to an earlier checkpoint" in warning


def test_crafted_training_states_everywhere_are_one_error_line(run_dir: Path):
    for step in (10, 20):
        _rehash_state(run_dir, step, _set("step", "abc"))
    result = invoke("train", "--quiet", "--device", "cpu", "--resume", run_dir, "--max-iters", "21")
    line = one_error_line(result, 2, alone=False)
    assert "no checkpoint to resume from" in line and "step 'abc' is not a step number" in line
    assert all(x.startswith("warning: ") for x in result.stderr.strip().splitlines()[:-1])


def test_a_changed_corpus_is_refused_at_once_not_fallen_back_from(run_dir: Path, tmp_path: Path):
    other = tmp_path / "other.txt"
    other.write_text(TINY_TEXT.replace("First", "Frist"), encoding="utf-8")
    result = invoke("train", "--quiet", "--device", "cpu", other, "--resume", run_dir, "--max-iters", "21")
    assert "corpus differs" in one_error_line(result, 2)


def _line(**fields) -> str:
    return json.dumps(
        {
            "kind": "train",
            "step": 21,
            "elapsed": 1.0,
            "train_loss": 3.0,
            "lr": 0.01,
            "grad_norm": 1.0,
            "clip_frac": 0.0,
            "chars_per_s": 100.0,
        }
        | fields
    )


SIDE_FILES = [  # (id, file, line appended or edit of config.json, the warning expected (None: none))
    ("loss NaN", "metrics.jsonl", _line(train_loss=float("nan")), None),
    ("loss a string", "metrics.jsonl", _line(train_loss="3"), "skipped 1 record(s) without a step or a loss"),
    ("step of 400 digits", "metrics.jsonl", _line(step=10**400), "skipped 1 record(s) without a step"),
    ("step -5", "metrics.jsonl", _line(step=-5), "skipped 1 record(s) without a step"),
    ("elapsed Infinity", "metrics.jsonl", _line(elapsed=float("inf")), None),
    ("elapsed NaN", "metrics.jsonl", _line(elapsed=float("nan")), None),
    ("elapsed of 400 digits", "metrics.jsonl", _line(elapsed=10**400), None),
    ("val_loss Infinity", "metrics.jsonl", _line(kind="eval", val_loss=float("inf")), None),
    ("a line nested 100,000 deep", "metrics.jsonl", "[" * 100_000, "skipped 1 unreadable line(s)"),
    ("sample step 'x'", "samples.jsonl", json.dumps({"step": "x", "text": "a"}), "skipped 1 record(s)"),
    ("sample step Infinity", "samples.jsonl", json.dumps({"step": float("inf"), "text": "a"}), "skipped 1 record"),
    ("sample elapsed 'x'", "samples.jsonl", json.dumps({"step": 3, "elapsed": "x", "val_loss": True, "text": 5}), None),
    ("config train [1]", "config.json", _edit("train", [1]), "section(s) that are not objects (train)"),
    ("config init_from 5", "config.json", _edit("init_from", 5), "section(s) that are not objects (init_from)"),
    ("config grad_clip Infinity", "config.json", _edit("train.grad_clip", float("inf")), None),
    ("config the file []", "config.json", lambda saved: [], "not a JSON object; left out of the report"),
]


@pytest.mark.parametrize("name,file,change,warning", SIDE_FILES, ids=[c[0] for c in SIDE_FILES])
def test_report_reads_damaged_side_files_with_a_warning(
    run_dir: Path, tmp_path: Path, name: str, file: str, change, warning: str | None
):
    """metrics.jsonl, samples.jsonl and config.json are the run's readable record, not its checkpoints: a line
    or a section that is not what training writes is left out of the page with one warning, never a traceback
    (a number a chart cannot place, NaN, infinite or of 400 digits, is left off its axis)."""
    path = run_dir / file
    if callable(change):
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    else:
        with open(path, "a", encoding="utf-8") as f:
            f.write(change + "\n")
    page = tmp_path / "page.html"
    result = invoke("report", run_dir, "-o", page)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error:" not in result.stderr
    warnings_seen = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("warning: ") and "report without passage sections" not in line
    ]  # config.json names the corpus
    if warning is None:
        assert warnings_seen == []
    else:
        assert len(warnings_seen) == 1 and f"{path}: " in warnings_seen[0] and warning in warnings_seen[0]
    assert 'id="loss-steps"' in page.read_text(encoding="utf-8")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_side_files_that_are_fifos_never_block(run_dir: Path, tmp_path: Path):
    """A FIFO in place of config.json or metrics.jsonl would block a read forever: resume refuses the run,
    the report leaves the file out with a warning."""
    for name in ("config.json", "metrics.jsonl"):
        (run_dir / name).unlink()
        os.mkfifo(run_dir / name)
    result = invoke("report", run_dir, "-o", tmp_path / "page.html")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("left out of the report") == 2 and "not a regular file" in result.stderr
    result = invoke("train", "--quiet", "--device", "cpu", "--resume", run_dir)
    assert "config.json missing or unreadable" in one_error_line(result, 2)


# Hostile inputs, round three: the server -----------------------------------------------------------------------
# Two tiny random models served in-process: a character model whose vocabulary has characters of 2, 3 and 4
# UTF-8 bytes, and a --bytes model (all 256 byte values, flushing every step so characters split across events).

SERVE_TEXT = TINY_TEXT + "\u00e9\u00df\u20ac\u4e2d\U0001f600"
SERVE_BODIES = {
    "/v1/generate": {"prime": "First", "length": 40, "seed": 3},
    "/v1/score": {"text": "First Citizen", "per_char": True},
    "/v1/next": {"text": "First", "k": 3},
}


def _served_model(tmp: Path, kind: str) -> Path:
    from charnn.config import DataConfig
    from charnn.data import Vocab
    from charnn.model import CharRNN
    from charnn.store.checkpoint import model_bytes

    byte_level = kind == "bytes"
    vocab = Vocab(tuple(range(256)), bytes_mode=True) if byte_level else Vocab(tuple(sorted(map(ord, set(SERVE_TEXT)))))
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(model="gru", layers=1, hidden=16, embed=8), len(vocab)).eval()
    path = tmp / f"{kind}.safetensors"
    path.write_bytes(
        model_bytes(model, vocab, DataConfig(bytes_mode=byte_level), step=1, val_loss=None, corpus_sha256="")
    )
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """kind ("chars", "bytes") -> a TestClient of that model's server, with `.loaded` its model."""
    pytest.importorskip("fastapi_offline")
    pytest.importorskip("httpx")
    from contextlib import ExitStack

    from fastapi.testclient import TestClient

    from charnn.serve import create_app
    from charnn.store.checkpoint import load_model

    tmp = tmp_path_factory.mktemp("served")
    clients = {}
    with ExitStack() as stack:
        for kind in ("chars", "bytes"):
            loaded = load_model(_served_model(tmp, kind))
            flush = 0.0 if kind == "bytes" else 0.02
            app = create_app(loaded, max_batch=4, max_length=600, max_body=8192, flush_every=flush)
            clients[kind] = stack.enter_context(TestClient(app, raise_server_exceptions=False))
            clients[kind].loaded = loaded
        yield clients


def _strict_json(text: str):
    """RFC 8259 JSON: no NaN, Infinity or -Infinity (Python's json.loads accepts them by default)."""

    def refuse(name):
        raise AssertionError(f"{name} in an answer")

    return json.loads(text, parse_constant=refuse)


def _refused(answer, status: int, fragment: str) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = _strict_json(answer.text)
    assert list(body) == ["error"] and "\n" not in body["error"] and fragment in body["error"], body
    return body["error"]


def _post(client, path: str, body: str | bytes, content_type: str = "application/json"):
    return client.post(path, content=body, headers={"Content-Type": content_type})


SURROGATES = ["\ud800", "\udcff", "a\udc00\ud800b", "\udfff"]  # high, low (surrogateescape's range), reversed


@pytest.mark.parametrize("kind", ["chars", "bytes"])
@pytest.mark.parametrize("lone", SURROGATES, ids=["high", "escape-range", "reversed-pair", "low"])
def test_serve_a_lone_surrogate_in_any_text_is_one_line_4xx(served, kind: str, lone: str):
    """Every string of every endpoint's body (each field, a key, a field of another type, whatever the model)
    is Unicode text: a lone surrogate is a 422 naming the field, never a 500, and the server goes on."""
    client = served[kind]
    for path, body in SERVE_BODIES.items():
        for field in [*body, "skip_unknown", "nonsense"]:
            sent = json.dumps({**body, field: lone})  # \ud800 escapes: the body itself is ASCII
            _refused(_post(client, path, sent), 422, f"{field}: lone surrogate")
        key = json.dumps({**body, lone: 1})
        _refused(_post(client, path, key), 422, "key: lone surrogate")
        assert client.post(path, json=body).status_code == 200


BAD_BODIES = [
    ("invalid byte", b'{"prime": "\xff"}', 400, "request body is not UTF-8 (byte 0xff at offset 11)"),
    ("overlong", b'{"prime": "\xc0\xaf"}', 400, "not UTF-8"),
    ("encoded surrogate", b'{"prime": "\xed\xa0\x80"}', 400, "not UTF-8"),
    ("utf-16", '{"prime": "a"}'.encode("utf-16"), 400, "not UTF-8"),
    ("duplicate key", b'{"length": 5, "length": 6}', 400, 'malformed JSON: duplicate key "length"'),
    ("NaN", b'{"temperature": NaN}', 400, "malformed JSON: NaN is not a JSON number"),
    ("Infinity", b'{"top_p": Infinity}', 400, "malformed JSON: Infinity is not a JSON number"),
    ("-Infinity", b'{"seed": -Infinity}', 400, "malformed JSON: -Infinity is not a JSON number"),
    ("huge float", b'{"temperature": 1e999}', 422, "temperature: number out of range (not finite)"),
    ("huge int", b'{"seed": ' + b"9" * 5000 + b"}", 400, "malformed JSON"),
    ("deep", b"[" * 3000 + b"]" * 3000, 400, "malformed JSON: nested too deeply"),
    ("trailing comma", b'{"length": 5,}', 400, "malformed JSON"),
]


@pytest.mark.parametrize("kind", ["chars", "bytes"])
@pytest.mark.parametrize(("name", "raw", "status", "fragment"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_serve_bodies_are_strict_json(served, kind: str, name: str, raw: bytes, status: int, fragment: str):
    """Every endpoint reads its body as RFC 8259 JSON in UTF-8 before any field: one line naming what is wrong."""
    for path in SERVE_BODIES:
        _refused(_post(served[kind], path, raw), status, fragment)


def test_serve_every_route_with_a_body_reads_it_strictly(served):
    """The strict reading is a property of the app, not of three routes: every route that takes a body (those
    added later included) is a StrictRoute (charnn.serve.bodies)."""
    from fastapi.routing import APIRoute

    from charnn.serve.bodies import StrictRoute

    for client in served.values():
        with_body = [r for r in client.app.routes if isinstance(r, APIRoute) and r.body_field is not None]
        assert len(with_body) >= 3 and all(isinstance(r, StrictRoute) for r in with_body), with_body


def test_serve_a_body_in_another_media_type_and_a_bom(served):
    client = served["chars"]
    for kind in ("application/x-www-form-urlencoded", "text/plain"):  # curl -d without -H, and a guess
        _refused(_post(client, "/v1/next", b'{"text": "a"}', kind), 415, "Content-Type: application/json")
    assert _post(client, "/v1/next", b'\xef\xbb\xbf{"text": "a"}').status_code == 200  # RFC 8259 8.1: may ignore


def _optional_fields():
    from charnn.serve.schemas import GenerateRequest, NextRequest, ScoreRequest

    for path, model in (("/v1/generate", GenerateRequest), ("/v1/score", ScoreRequest), ("/v1/next", NextRequest)):
        for name, field in model.model_fields.items():
            yield path, name, field.is_required()


@pytest.mark.parametrize(("path", "name", "required"), list(_optional_fields()))
def test_serve_null_is_the_default_of_every_optional_field(served, path: str, name: str, required: bool):
    """`"field": null` answers as the field left out, for every field with a default; a required one is a 422."""
    client = served["chars"]
    body = {**SERVE_BODIES[path]}
    if required:
        _refused(client.post(path, json={**body, name: None}), 422, f"{name}: ")
        return
    without = {k: v for k, v in body.items() if k != name}
    if path == "/v1/generate" and name == "length":
        without["num_samples"] = 1  # the default length, 500 characters, once
    nulled, left_out = client.post(path, json={**without, name: None}), client.post(path, json=without)
    assert nulled.status_code == left_out.status_code == 200, nulled.text
    if name == "seed":  # no seed: a fresh text each time
        assert len(nulled.json()["texts"][0]) == len(left_out.json()["texts"][0])
    else:
        assert nulled.json() == left_out.json()


def _sampled(loaded, prime: str | None, **options) -> list:
    """`charnn sample`'s samples without their prime: str for a character model, bytes for a --bytes one."""
    from charnn.config import SampleConfig
    from charnn.sampling.generate import sample_text

    samples = sample_text(loaded.model, loaded.vocab, SampleConfig(prime=prime, **options))
    echoed = len((prime or "").encode("utf-8")) if loaded.vocab.bytes_mode else len(prime or "")
    return [s[echoed:] if prime else s for s in samples]


def _events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event", "message"), _strict_json(fields["data"])))
    return events


@pytest.mark.parametrize("kind", ["chars", "bytes"])
@pytest.mark.parametrize("prime", [None, "First", "\u00e9\u20ac", "\u4e2d\U0001f600 "])
def test_serve_text_is_the_samplers_byte_for_byte(served, kind: str, prime: str | None):
    """JSON and SSE carry `charnn sample`'s output with the same seed: a character model's text as it is (2-, 3-
    and 4-byte characters included); a --bytes model's exact bytes as base64 (`bytes`) beside its text decoded
    (U+FFFD where the bytes are not UTF-8), its streamed events' bytes joining to the same bytes even where a
    character is split across events."""
    client, options = served[kind], {"length": 300, "seed": 11, "temperature": 1.5, "num_samples": 2}
    want = _sampled(client.loaded, prime, **options)
    body = {"prime": prime, **options}
    answer = client.post("/v1/generate", json=body)
    got = _strict_json(answer.text)
    if kind == "chars":
        assert got == {"texts": want, "chars": sum(map(len, want))}
    else:
        assert [base64.b64decode(b) for b in got["bytes"]] == want
        assert got["texts"] == [w.decode("utf-8", "replace") for w in want]
        assert any(w.decode("utf-8", "replace").encode() != w for w in want)  # there are non-UTF-8 bytes
    events = _events(client.post("/v1/generate", json={**body, "stream": True}).text)
    assert events[-1][0] == "done" and events[-1][1]["complete"] is True
    texts, data = ["", ""], [b"", b""]
    for name, event in events[:-1]:
        assert name == "message"
        texts[event["index"]] += event["text"]
        data[event["index"]] += base64.b64decode(event.get("bytes", ""))
    assert texts == got["texts"]
    if kind == "bytes":
        assert data == want
        assert any(e.get("bytes") and not e["text"] for _, e in events[:-1])  # a character split across events
    else:
        assert all("bytes" not in e for _, e in events)


def test_serve_next_candidates_are_told_apart(served):
    """/v1/next: a --bytes model's candidates each carry their byte (base64), and `char` only where the byte is a
    character by itself, so the bytes of one character are told apart; a character model's multi-byte characters
    are whole."""
    client = served["bytes"]
    answer = _strict_json(client.post("/v1/next", json={"text": "\u00e9", "k": 256}).text)["next"]
    assert sorted(a["symbol"] for a in answer) == list(range(256))
    for a in answer:
        assert base64.b64decode(a["bytes"]) == bytes([a["symbol"]])
        assert a["char"] == (chr(a["symbol"]) if a["symbol"] < 0x80 else None)
    ids = torch.tensor([list("\u00e9".encode())])
    with torch.no_grad():
        probs = client.loaded.model(ids)[0][0, -1].softmax(-1)
    assert [a["prob"] for a in answer] == pytest.approx(probs[[a["symbol"] for a in answer]].tolist(), abs=1e-6)
    chars = _strict_json(served["chars"].post("/v1/next", json={"text": "\u4e2d", "k": 1000}).text)["next"]
    assert {a["char"] for a in chars} == set(SERVE_TEXT) and all("bytes" not in a for a in chars)
    assert all(a["char"] == chr(a["symbol"]) for a in chars)


def _app_of(tmp: Path, change, **options):
    """A TestClient of a character model whose weights `change(state_dict)` alters."""
    from fastapi.testclient import TestClient

    from charnn.serve import create_app
    from charnn.store.checkpoint import load_model

    loaded = load_model(_served_model(tmp, "chars"))
    with torch.no_grad():
        change(loaded.model.state_dict())
    return TestClient(create_app(loaded, max_batch=2, max_length=600, **options), raise_server_exceptions=False)


def test_serve_answers_have_no_nan_infinity_or_negative_zero(served, tmp_path: Path):
    """A model sure of its next character scores it with 0 bits (never -0.0); one whose outputs overflow answers
    null where a number is not finite (never NaN), and its generation fails with one line; every answer is
    RFC 8259 JSON."""
    a = sorted(set(SERVE_TEXT)).index("a")

    def certain(state):
        state["head.weight"].zero_()
        state["head.bias"].zero_()
        state["head.bias"][a] = 200.0  # log_softmax gives exactly 0.0 for "a": its surprise -0.0 unless mended

    with _app_of(tmp_path, certain) as client:
        answer = client.post("/v1/score", json={"text": "aaaa", "per_char": True})
        assert "-0" not in answer.text and _strict_json(answer.text)["bits"] == [0.0, 0.0, 0.0]
        assert _strict_json(answer.text)["perplexity"] == 1.0

    def overflow(state):
        state["head.weight"].fill_(3e38)

    with _app_of(tmp_path, overflow) as client:
        for path, body in SERVE_BODIES.items():
            for stream in (False, True) if path == "/v1/generate" else (False,):
                answer = client.post(path, json={**body, **({"stream": True} if stream else {})})
                for block in answer.text.split("\n\n") if stream else [answer.text]:
                    data = block.split("data: ", 1)[-1]
                    if data.strip():
                        _strict_json(data)
                assert "NaN" not in answer.text and "Infinity" not in answer.text
        probs = [c["prob"] for c in client.post("/v1/next", json={"text": "First"}).json()["next"]]
        assert probs and all(p is None for p in probs)


def test_serve_errors_are_json_everywhere_and_head_works_where_get_does(served):
    client = served["chars"]
    _refused(client.get("/nowhere"), 404, "Not Found")
    _refused(client.get("/static-offline-docs/nothing.js"), 404, "Not Found")
    gets = sorted(r.path for r in client.app.routes if "GET" in getattr(r, "methods", ()) and "{" not in r.path)
    assert {"/", "/docs", "/redoc", "/healthz", "/v1/model", "/openapi.json"} <= set(gets)
    for path in gets:
        got, head = client.get(path), client.head(path)
        assert got.status_code == head.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        _refused(client.delete(path), 405, "Method Not Allowed")
    for path in SERVE_BODIES:
        _refused(client.get(path), 405, "Method Not Allowed")
        head = client.head(path)  # its status and headers, no body
        assert head.status_code == 405 and head.headers["content-type"] == "application/json" and not head.content
    assert client.head("/static-offline-docs/swagger-ui.css").status_code == 200


def test_serve_docs_work_offline(served):
    """/docs and /redoc load their scripts and styles from this server (an installed package), not a CDN."""
    client = served["chars"]
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        linked = re.findall(r'(?:src|href)="([^"]*)"', html) + re.findall(r"url: '([^']*)'", html)
        assert linked and "http" not in html.split("</head>")[0].lower().replace("http-equiv", ""), html
        for url in linked:
            assert url.startswith("/") and client.get(url).status_code == 200, url


def test_serve_max_length_counts_what_the_model_reads(served):
    """--max-length (600 here) counts the symbols the model reads: characters after CRLF becomes LF (as `eval`
    reads a file), and bytes for a --bytes model."""
    assert served["chars"].post("/v1/score", json={"text": "a\r\n" * 300}).json()["chars"] == 599
    _refused(served["chars"].post("/v1/score", json={"text": "a\n" * 301}), 422, "602 characters is over")
    _refused(served["bytes"].post("/v1/next", json={"text": "\u00e9" * 301}), 422, "text: 602 bytes is over")
    _refused(served["bytes"].post("/v1/generate", json={"prime": "\u20ac" * 201}), 422, "prime: 603 bytes is over")
    assert served["bytes"].post("/v1/generate", json={"prime": "\u20ac" * 200, "length": 1}).status_code == 200


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real uvicorn serving the --bytes model in this process, with a route that has a bug: (host, port)."""
    pytest.importorskip("fastapi_offline")
    import socket
    import threading

    import uvicorn

    from charnn.serve import create_app
    from charnn.store.checkpoint import load_model

    app = create_app(load_model(_served_model(tmp_path_factory.mktemp("live"), "bytes")), max_batch=2)

    @app.get("/bug")
    async def bug() -> dict:
        return {"x": 1 / 0}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.05)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(10)


def test_serve_a_refusal_or_a_bug_keeps_the_keep_alive_connection(live):
    """The case as it was found: a --bytes model, a lone surrogate, then another request on the same connection;
    a bug (a 500 with its traceback in the log) keeps the connection too."""
    import http.client

    conn = http.client.HTTPConnection(*live, timeout=10)
    sent = [
        ("POST", "/v1/generate", '{"prime": "\\ud800", "length": 5}', 422),
        ("POST", "/v1/score", '{"text": "\\ud800"}', 422),
        ("POST", "/v1/next", '{"text": "\\ud800"}', 422),
        ("GET", "/bug", None, 500),
        ("HEAD", "/v1/model", None, 200),
        ("POST", "/v1/generate", '{"prime": "ok", "length": 5}', 200),
    ]
    sockets = set()
    for method, path, body, status in sent:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        data = answer.read()
        assert answer.status == status and (method == "HEAD" or _strict_json(data.decode())), (path, data)
        sockets.add(id(conn.sock))
        assert conn.sock is not None and not answer.will_close, path
    assert len(sockets) == 1  # one connection throughout
    conn.close()


def test_serve_sigterm_lets_generations_finish_for_the_grace_then_ends_the_rest(tmp_path: Path):
    """`charnn serve --grace 4` on SIGTERM: no new requests (refused, or the socket closed), a short generation
    running finishes complete, an endless one is ended after the grace with its final event; exit 0. With a
    non-loopback --host and --port 0 the warning names the port actually listened on."""
    pytest.importorskip("fastapi_offline")
    import signal
    import threading

    import httpx

    from tests.test_serve import start_server, wait_until

    proc, url, lines = start_server(
        _served_model(tmp_path, "chars"), "--grace", "4", "--host", "0.0.0.0", "--max-length", "10000000"
    )
    try:
        assert f"on port {url.rsplit(':', 1)[1]} can use" in lines[0], lines[0]
        ends: dict[str, list] = {}

        def stream(name: str, length: int) -> None:
            with httpx.stream("POST", f"{url}/v1/generate", json={"length": length, "stream": True}, timeout=30) as a:
                ends[name] = _events(a.read().decode())

        threads = [threading.Thread(target=stream, args=a) for a in (("endless", 10**7), ("short", 6000))]
        for t in threads:
            t.start()
        assert wait_until(lambda: httpx.get(f"{url}/healthz").json()["streams"] == 2, 10)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            late = httpx.post(f"{url}/v1/generate", json={"length": 5}, timeout=5)
            _refused(late, 503, "shutting down")
        except httpx.TransportError:
            pass  # the listening socket is closed: refused as well
        for t in threads:
            t.join(30)
        assert proc.wait(timeout=20) == 0
        took = time.monotonic() - started
        assert ends["short"][-1] == ("done", {"chars": 6000, "complete": True})  # it ran at the signal
        final = ends["endless"][-1]
        assert final[0] == "done" and final[1]["complete"] is False and "shutting down" in final[1]["reason"]
        assert 3.5 < took < 12, took
    finally:
        proc.kill()
        proc.wait()


def test_serve_docs_render_in_a_browser_with_the_network_blocked(live, tmp_path: Path):
    """/docs and /redoc render their reference in headless Chromium that can reach nothing but this server."""
    from tests.test_export import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium")
    for page, rendered in (("docs", 'class="opblock'), ("redoc", "/v1/generate")):
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
        args += [f"--user-data-dir={tmp_path / page}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
        url = "http://{}:{}/{}".format(*live, page)
        args += ["--virtual-time-budget=20000", "--dump-dom", url]
        res = subprocess.run([CHROMIUM, *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and rendered in res.stdout, (page, res.stderr[-2000:])


# Hostile inputs, round three: the command line ------------------------------------------------------------------

TINY_ARGS = ["--hidden", "8", "--layers", "1", "--embed", "8", "--batch-size", "4", "--seq-len", "16"]
QUICK = ["--device", "cpu", "--threads", "1", "--sample-length", "0"]


def _files_of(directory: Path) -> dict[str, str]:
    """name -> sha256 of every file in a directory: what a refused write must leave as it was."""
    return {p.name: _sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _clobber_cases() -> list[tuple[str, Callable[[Path, Path], list]]]:
    """(id, args from (run, tmp)) of every command asked to write over a file it reads or into a run."""
    best = "step-00000020.safetensors"

    def link(tmp: Path, name: str, to: Path, *, hard: bool = False) -> Path:
        (os.link if hard else os.symlink)(to, tmp / name)
        return tmp / name

    def loose(tmp: Path, run: Path) -> Path:
        shutil.copy(run / best, tmp / "loose.safetensors")
        return tmp / "loose.safetensors"

    def text(tmp: Path) -> Path:
        (tmp / "text.txt").write_text(TINY_TEXT, encoding="utf-8")
        return tmp / "text.txt"

    return [
        ("export over the best checkpoint --force", lambda r, t: ["export", r, "-o", r / best, "--force"]),
        ("export over the best checkpoint", lambda r, t: ["export", r, "-o", r / best]),
        (
            "export over the state file --force",
            lambda r, t: ["export", r, "-o", r / "step-00000020.state.pt", "--force"],
        ),
        ("export over config.json --force", lambda r, t: ["export", r, "-o", r / "config.json", "--force"]),
        ("export a new name inside the run", lambda r, t: ["export", r, "-o", r / "page.html"]),
        (
            "export through a link into the run",
            lambda r, t: ["export", r, "-o", link(t, "l.html", r / best), "--force"],
        ),
        (
            "export over a hard link of its input",
            lambda r, t: ["export", r, "-o", link(t, "h.html", r / best, hard=True), "--force"],
        ),
        ("export a loose checkpoint over itself", lambda r, t: ["export", (m := loose(t, r)), "-o", m, "--force"]),
        (
            "export a loose checkpoint over its hard link",
            lambda r, t: ["export", (m := loose(t, r)), "-o", link(t, "h.html", m, hard=True), "--force"],
        ),
        ("export into a linked run directory", lambda r, t: ["export", r, "-o", link(t, "d", r) / "x.html"]),
        ("report over a checkpoint", lambda r, t: ["report", r, "-o", r / best]),
        ("report over metrics.jsonl", lambda r, t: ["report", r, "-o", r / "metrics.jsonl"]),
        ("report a new name inside the run", lambda r, t: ["report", r, "-o", r / "other.html"]),
        ("report over its --text", lambda r, t: ["report", r, "--text", (x := text(t)), "-o", x]),
        (
            "report over a hard link of its --text",
            lambda r, t: ["report", r, "--text", (x := text(t)), "-o", link(t, "h.html", x, hard=True)],
        ),
        (
            "report over a link to its --text",
            lambda r, t: ["report", r, "--text", (x := text(t)), "-o", link(t, "s.html", x)],
        ),
        (
            "train a new run inside a run",
            lambda r, t: [*T, text(t), "--out", r / "sub", "--max-iters", "1", *TINY_ARGS],
        ),
        ("train a --plan inside a run", lambda r, t: ["train", text(t), "--plan", "--out", r / "sub", *TINY_ARGS]),
        (
            "train with the corpus cache inside a run",
            lambda r, t: [*T, text(t), "--cache-dir", r / "c", "--out", t / "o", "--max-iters", "1", *TINY_ARGS],
        ),
        (
            "train with the corpus cache in a run",
            lambda r, t: [*T, text(t), "--cache-dir", r, "--out", t / "o", "--max-iters", "1", *TINY_ARGS],
        ),
    ]


CLOBBER = _clobber_cases()


@pytest.mark.parametrize("name,args", CLOBBER, ids=[c[0] for c in CLOBBER])
def test_no_command_writes_over_its_input_or_into_a_run(run_dir: Path, tmp_path: Path, name: str, args):
    """`--force` replaces the file the user named, never a file the command reads (by any name: links and hard
    links included) nor a file of a run directory but through that run's own writer: one line, exit 2, and the
    run and the inputs as they were."""
    work = tmp_path / "work"
    work.mkdir()
    argv = args(run_dir, work)
    before, inputs = _files_of(run_dir), _files_of(work)
    line = one_error_line(invoke(*argv), 2)
    assert "is an input of this command" in line or "is inside the run directory" in line, line
    assert _files_of(run_dir) == before and not (run_dir / "sub").exists() and not (run_dir / "c").exists()
    assert {k: v for k, v in _files_of(work).items() if k in inputs} == inputs


def test_a_run_still_writes_its_own_report_and_resumes(run_dir: Path, tmp_path: Path):
    """The run's own writers are not refused: its report.html (by default or named), and resuming it."""
    assert invoke("report", run_dir).exit_code == 0
    assert invoke("report", run_dir, "-o", run_dir / "report.html").exit_code == 0
    res = invoke(*T, "--resume", run_dir, "--max-iters", "22", "--report")
    assert res.exit_code == 0, res.output
    assert (run_dir / "step-00000022.safetensors").exists() and (run_dir / "report.html").exists()


PLAN_CASES = [  # (id, the corpus text, extra options): the plan must refuse what training refuses, alike
    ("a 1-character file", "a", []),
    ("a 10-character file", "abcdefghij", []),
    ("a 1-character file, --init-from", "a", ["--init-from", "{run}"]),
    ("a 10-character file, --init-from", "abcdefghij", ["--init-from", "{run}"]),
    ("a batch larger than the text", TINY_TEXT, ["--batch-size", "1000"]),
    ("--patience without a validation split", TINY_TEXT, ["--val-frac", "0", "--patience", "3"]),
    ("--out holding a run", TINY_TEXT, ["--out", "{run}"]),
    ("--out inside a run", TINY_TEXT, ["--out", "{run}/sub"]),
    ("--out a file", TINY_TEXT, ["--out", "{tmp}/corpus.txt"]),
]


@pytest.mark.parametrize("name,text,extra", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_the_plan_refuses_what_training_refuses(run_dir: Path, tmp_path: Path, name: str, text: str, extra):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    extra = [e.format(run=run_dir, tmp=tmp_path) for e in extra]
    if "--out" not in extra:
        extra += ["--out", str(tmp_path / "new")]
    planned = one_error_line(invoke("train", corpus, "--plan", *extra), 2)
    as_json = invoke("train", corpus, "--plan", "--json", *extra)
    assert one_error_line(as_json, 2) == planned and as_json.stdout == ""
    trained = invoke(*T, corpus, *extra, "--max-iters", "1", "--threads", "1")
    assert one_error_line(trained, 2) == planned
    assert not (tmp_path / "new").exists() and not (run_dir / "sub").exists()


def _constant_validation(monkeypatch) -> None:
    """Every validation scores the same loss: no evaluation after the first is a new best."""
    import charnn.training.loop as loop
    from charnn.evaluate import EvalResult

    def constant(model, ids, scales=(), **kw):
        n = len(ids) - 1
        return EvalResult(n, 2.0 * n, scaled_nats=dict.fromkeys(scales, 2.0 * n) if scales else None)

    monkeypatch.setattr(loop, "evaluate_ids", constant)


STOPS = [  # (id, options, CHARNN_STEP_SECONDS, constant validation, the reason in the done line, a plan fragment)
    ("--max-iters", ["--max-iters", "6"], "0", False, "(step limit reached)", "up to 6 steps"),
    ("--epochs", ["--epochs", "0.1"], "0", False, "(0.1 epochs done)", "for 0.1 epochs"),
    (
        "--max-iters before --epochs",
        ["--max-iters", "5", "--epochs", "1"],
        "0",
        False,
        "(step limit reached)",
        "until 5 steps",
    ),
    (
        "--epochs before --max-iters",
        ["--max-iters", "500", "--epochs", "0.1"],
        "0",
        False,
        "(0.1 epochs done)",
        "or 0.1 epochs, whichever comes first",
    ),
    (
        "--time-budget before --max-iters",
        ["--time-budget", "0.3", "--max-iters", "1000000"],
        "0",
        False,
        "(time budget reached)",
        "or 0.3 s, whichever comes first",
    ),
    (
        "--max-iters before --time-budget",
        ["--time-budget", "60", "--max-iters", "4"],
        "0",
        False,
        "(step limit reached)",
        "until 4 steps",
    ),
    (
        "--epochs before --time-budget",
        ["--time-budget", "60", "--epochs", "0.1"],
        "0",
        False,
        "(0.1 epochs done)",
        "until 0.1 epochs or 60 s",
    ),
    ("the plan's length", ["--patience", "0"], "0", False, "(the plan's ", "up to "),
    ("the plan's cap", ["--patience", "0"], "30", False, "(the plan's cap of ", "capped at "),
    (
        "--patience",
        ["--max-iters", "40", "--eval-every", "2", "--patience", "1"],
        "0",
        True,
        "(no new best validation loss in 1 evaluation)",
        "stops after 1 validation without",
    ),
    (
        "--patience spent at the last step",
        ["--max-iters", "4", "--eval-every", "2", "--patience", "1"],
        "0",
        True,
        "(step limit reached)",
        "up to 4 steps",
    ),
    (
        "--patience with --epochs",
        ["--epochs", "1", "--eval-every", "2", "--patience", "2"],
        "0",
        True,
        "(no new best validation loss in 2 evaluations)",
        "for 1 epochs",
    ),
    (
        "--patience after --time-budget",
        ["--time-budget", "0.3", "--max-iters", "1000000", "--eval-every", "100000", "--patience", "1"],
        "0",
        True,
        "(time budget reached)",
        "or 0.3 s",
    ),
]


@pytest.mark.parametrize("name,args,step_seconds,constant,reason,plan", STOPS, ids=[c[0] for c in STOPS])
def test_every_reason_printed_is_the_true_one(
    tiny_corpus: Path, tmp_path: Path, monkeypatch, name, args, step_seconds, constant, reason, plan
):
    """The plan's lines say which rules will end the run, the done line which one did, and the early-stop line
    appears exactly when --patience ended it."""
    monkeypatch.setenv("CHARNN_STEP_SECONDS", step_seconds)
    if constant:
        _constant_validation(monkeypatch)
    corpus = tiny_corpus
    if name == "the plan's length":  # a short text: the plan's own schedule is a few dozen steps
        corpus.write_text(TINY_TEXT[:300], encoding="utf-8")
    res = invoke("train", corpus, "--out", tmp_path / "run", *TINY_ARGS, *QUICK, *args)
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    (done,) = (line for line in lines if line.startswith("done: "))
    assert reason in done, done
    assert any(line.startswith("plan: ") and plan in line for line in lines), res.stderr
    early = [line for line in lines if "early stop: " in line]
    assert len(early) == (1 if "no new best" in reason else 0), res.stderr
    if early:
        assert reason.strip("()") in early[0]


@pytest.mark.parametrize("rule", [["--max-iters", "50"], ["--epochs", "2"], ["--time-budget", "60"]])
def test_a_signal_is_the_reason_whatever_the_rule(tiny_corpus: Path, tmp_path: Path, monkeypatch, rule):
    import signal

    from charnn.cli.run import StopFlag

    monkeypatch.setattr(StopFlag, "__call__", lambda self: signal.SIGTERM)
    res = invoke("train", tiny_corpus, "--out", tmp_path / "run", *TINY_ARGS, *QUICK, *rule)
    line = one_error_line(res, 143, alone=False)
    assert line.startswith("error: interrupted at step 0 by SIGTERM; saved ")
    assert "done: " not in res.stderr


def test_the_plan_names_every_stopping_rule_given():
    from charnn.config import TrainConfig
    from charnn.training.timing import run_length

    assert run_length(TrainConfig(max_iters=120), 52) == "up to 120 steps (2.3 epochs)"
    assert run_length(TrainConfig(max_iters=3), 52) == "up to 3 steps (0.058 epochs)"
    assert run_length(TrainConfig(epochs=3.0), 52) == "for 3 epochs"
    assert run_length(TrainConfig(time_budget=60.0), 52) == "for 60 s"
    assert run_length(TrainConfig(), 52) == "up to 52 steps (1.0 epochs)"
    assert run_length(TrainConfig(max_iters=120, epochs=3.0, time_budget=60.0), 52) == (
        "until 120 steps (2.3 epochs), 3 epochs or 60 s, whichever comes first"
    )


PATH_ARGS = [  # (id, the command with {p} where the path goes, whether it names an output directory)
    ("train CORPUS", ["train", "{p}", "--plan"], False),
    ("train --init-from", ["train", "{corpus}", "--init-from", "{p}", "--plan"], False),
    ("train --resume", [*T, "--resume", "{p}"], False),
    ("train --out", [*T, "{corpus}", "--out", "{p}", "--max-iters", "1", *TINY_ARGS], True),
    (
        "train --cache-dir",
        [*T, "{corpus}", "--cache-dir", "{p}", "--out", "{tmp}/o", "--max-iters", "1", *TINY_ARGS],
        True,
    ),
    ("sample RUN", ["sample", "{p}", "--length", "5"], False),
    ("sample --prime-file", ["sample", "{run}", "--prime-file", "{p}", "--length", "5"], False),
    ("eval RUN", ["eval", "{p}"], False),
    ("eval FILE", ["eval", "{run}", "{p}"], False),
    ("report RUN", ["report", "{p}", "-o", "{tmp}/r.html"], False),
    ("report --text", ["report", "{run}", "--text", "{p}", "-o", "{tmp}/r.html"], False),
    ("report -o", ["report", "{run}", "-o", "{p}"], None),
    ("export RUN", ["export", "{p}", "-o", "{tmp}/e.html"], False),
    ("export -o", ["export", "{run}", "-o", "{p}"], None),
]
PATH_KINDS = ["dangling link", "link to a missing directory", "missing parent", "read-only parent", "name too long"]


def _bad_path(tmp: Path, kind: str) -> Path:
    if kind == "dangling link":
        (tmp / "dangling").symlink_to(tmp / "nowhere")
        return tmp / "dangling"
    if kind == "link to a missing directory":
        (tmp / "to_missing").symlink_to(tmp / "nodir" / "x")
        return tmp / "to_missing"
    if kind == "missing parent":
        return tmp / "nodir" / "x"
    if kind == "read-only parent":
        (tmp / "ro").mkdir(mode=0o555)
        return tmp / "ro" / "x"
    return tmp / ("x" * 300)


@pytest.mark.parametrize("kind", PATH_KINDS)
@pytest.mark.parametrize("name,argv,directory", PATH_ARGS, ids=[c[0] for c in PATH_ARGS])
def test_path_mistakes_are_exit_2(run_dir: Path, tiny_corpus: Path, tmp_path: Path, name, argv, directory, kind):
    """Every path argument: a path the user must change is one line and exit 2, never a traceback or exit 4
    (exit 4 is a real write failure: a full disk, a file too large, an I/O error). Where it is not a mistake,
    the command works: an output link to a missing file is written through (the shell's `>` does so), and a
    missing parent of an output directory is made (`mkdir -p`)."""
    if kind == "read-only parent" and os.geteuid() == 0:
        pytest.skip("permissions do not apply to root")
    work = tmp_path / "work"
    work.mkdir()
    bad = _bad_path(work, kind)
    res = invoke(*(a.format(p=bad, corpus=tiny_corpus, run=run_dir, tmp=work) for a in argv))
    works = (directory is None and kind == "dangling link") or (directory and kind == "missing parent")
    if works:
        assert res.exit_code == 0, res.output
    else:
        one_error_line(res, 2, alone=False)


JSON_INPUTS = [  # (id, the file's bytes, eval options): each is valid JSON with exit 0, or one line and no stdout
    ("two characters", b"Fi", []),
    ("one character", b"F", []),
    ("empty", b"", []),
    ("all unknown", "\u00e9\u00e9\u00e9".encode(), ["--skip-unknown"]),
    ("all unknown but one", "F\u00e9\u00e9".encode(), ["--skip-unknown"]),
    ("one character and unknown ones", "Fi\u00e9".encode(), ["--skip-unknown"]),
]


@pytest.mark.parametrize("name,data,extra", JSON_INPUTS, ids=[c[0] for c in JSON_INPUTS])
def test_eval_json_is_valid_json_or_one_error_line(run_dir: Path, tmp_path: Path, name: str, data: bytes, extra):
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    res = invoke("eval", run_dir, path, "--json", *extra)
    if res.exit_code == 0:
        row = _strict_json(res.stdout)
        assert row["chars"] >= 1 and all(math.isfinite(row[k]) for k in ("nats_per_char", "perplexity"))
    else:
        one_error_line(res, 2)
        assert res.stdout == ""
    assert (res.exit_code == 0) == (name in ("two characters", "one character and unknown ones"))


def test_a_run_without_a_validation_split(tiny_corpus: Path, tmp_path: Path):
    """--val-frac 0: the plan says there is no validation, training says it has no loss, eval refuses to make
    one up (no NaN with exit 0), and the plan's JSON is valid."""
    plan = invoke("train", tiny_corpus, "--plan", "--json", "--val-frac", "0", *TINY_ARGS)
    assert plan.exit_code == 0 and _strict_json(plan.stdout)["stopping"]["patience"] is None
    assert "no validation split (--val-frac 0)" in invoke("train", tiny_corpus, "--plan", "--val-frac", "0").stdout
    res = invoke(*T, tiny_corpus, "--val-frac", "0", "--max-iters", "3", "--out", tmp_path / "run", *TINY_ARGS)
    assert res.exit_code == 0 and "no validation loss" in res.stderr and "nan" not in res.stderr.lower()
    line = one_error_line(invoke("eval", tmp_path / "run", "--json"), 2)
    assert "has no validation split to score" in line and "pass a FILE" in line


def test_plan_json_is_valid_json(run_dir: Path, tiny_corpus: Path, monkeypatch):
    for step_seconds in ("0", "0.01", "30"):
        monkeypatch.setenv("CHARNN_STEP_SECONDS", step_seconds)
        for extra in ([], ["--init-from", str(run_dir)], ["--time-budget", "5"], ["--epochs", "2", "--max-iters", "9"]):
            res = invoke("train", tiny_corpus, "--plan", "--json", *extra)
            assert res.exit_code == 0, res.output
            _strict_json(res.stdout)


def test_a_loss_of_zero_never_prints_as_minus_zero(tmp_path: Path):
    """A one-symbol vocabulary predicts every character with certainty: 0 nats, never "-0.0000"."""
    corpus = tmp_path / "a.txt"
    corpus.write_text("a" * 3000, encoding="utf-8")
    res = invoke(*T, corpus, "--max-iters", "3", "--out", tmp_path / "run", *TINY_ARGS)
    assert res.exit_code == 0 and "-0.0" not in res.stderr
    shown = invoke("eval", tmp_path / "run")
    assert shown.exit_code == 0 and "-0" not in shown.stdout and "0.0000 nats/char" in shown.stdout
    row = _strict_json(invoke("eval", tmp_path / "run", "--json").stdout)
    assert math.copysign(1.0, row["nats_per_char"]) == 1.0 and math.copysign(1.0, row["bits_per_char"]) == 1.0


EXPORT_SUFFIXES = [  # (-o, --format, what is written: None for refused)
    ("m.onnx", None, "onnx"),
    ("m.ONNX", None, "onnx"),
    ("m.html", None, "html"),
    ("m.bin", None, "html"),
    ("m.bin", "onnx", "onnx"),
    ("m.onnx", "html", None),
    ("m.html", "onnx", None),
]


@pytest.mark.parametrize("name,fmt,kind", EXPORT_SUFFIXES)
def test_export_follows_the_suffix(run_dir: Path, tmp_path: Path, name: str, fmt, kind):
    from charnn.cli.tools import ExportFormat, export_format
    from charnn.errors import ConfigError

    given = ExportFormat(fmt) if fmt else None
    if kind is None:
        with pytest.raises(ConfigError, match="drop --format or rename the output"):
            export_format(Path(name), given)
        line = one_error_line(invoke("export", run_dir, "-o", tmp_path / name, "--format", fmt), 2)
        assert "drop --format or rename" in line and not (tmp_path / name).exists()
    else:
        assert export_format(Path(name), given) is ExportFormat(kind)


def test_init_from_conflicts_read_like_flags(run_dir: Path, tiny_corpus: Path):
    line = one_error_line(invoke("train", tiny_corpus, "--init-from", run_dir, "--tie-weights", "--plan"), 2)
    assert "--tie-weights conflicts with the model of --init-from, trained with --no-tie-weights" in line
    assert "True" not in line and "tie_weights=" not in line
    line = one_error_line(invoke("train", tiny_corpus, "--init-from", run_dir, "--hidden", "64", "--plan"), 2)
    assert "--hidden 64 conflicts with the model of --init-from, trained with --hidden 16" in line


def test_unknown_characters_are_counted_distinct_and_as_occurrences(run_dir: Path, tmp_path: Path):
    path = tmp_path / "held.txt"
    path.write_text("First \u00e9\u00e9\u00e9 Citizen\u2603", encoding="utf-8")
    line = one_error_line(invoke("eval", run_dir, path), 2)
    assert "2 characters (4 occurrences) not in the model's vocabulary" in line
    res = invoke("eval", run_dir, path, "--skip-unknown")
    assert "skipped 2 characters (4 occurrences) not in the model's vocabulary" in res.stderr
    prime = tmp_path / "prime.txt"
    prime.write_text("\u00e9", encoding="utf-8")
    assert "1 character not in this model's vocabulary" in one_error_line(
        invoke("sample", run_dir, "--prime-file", prime)
    )


def test_training_into_a_log_writes_plain_progress_lines(tiny_corpus: Path, tmp_path: Path):
    """stderr that is not a terminal (CliRunner's, `2> train.log`) gets no carriage-return frames: a `train:`
    line each tenth of the run."""
    res = invoke(
        "train", tiny_corpus, "--out", tmp_path / "run", "--max-iters", "40", "--log-every", "2", *TINY_ARGS, *QUICK
    )
    assert res.exit_code == 0 and "\r" not in res.stderr
    progress = [line for line in res.stderr.splitlines() if line.startswith("train: ")]
    assert progress[0].startswith("train: 4/40 steps (10%), loss ") and progress[-1].startswith(
        "train: 40/40 steps (100%)"
    )
    assert len(progress) == 10


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the path of stdout is read from /proc")
def test_stdout_redirected_into_a_run_or_onto_an_input(run_dir: Path, tmp_path: Path):
    """`>>` onto a run's log or onto the file a command scores is refused like an `-o` there: one line, exit 2,
    the file as it was."""
    held = tmp_path / "held.txt"
    held.write_text(TINY_TEXT[:200], encoding="utf-8")
    for argv, target in (
        (["sample", run_dir, "--length", "5"], run_dir / "samples.jsonl"),
        (["eval", run_dir, held], held),
    ):
        before = target.read_bytes()
        with open(target, "ab") as out:
            res = subprocess.run(
                [PYTHON, "-m", "charnn", *map(str, argv)],
                stdout=out,
                stderr=subprocess.PIPE,
                env=cli_env(),
                timeout=120,
            )
        err = res.stderr.decode()
        assert res.returncode == 2 and err.startswith("error: stdout ") and len(err.splitlines()) == 1, err
        assert target.read_bytes() == before
