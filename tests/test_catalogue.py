"""The catalogue of bad inputs: every one gets its exit code, exactly one `error: ...` line on
stderr, nothing on stdout, and no traceback. In-process through CliRunner; a few also through `python -m charnn`.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from charnn.config import ModelConfig, TrainConfig
from charnn.train import train
from tests.conftest import PYTHON, TINY_TEXT, cli_env, invoke, torch_save_bytes

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
    train(corpus, model_cfg=ModelConfig(model="gru", layers=1, hidden=16, embed=8),
          train_cfg=TrainConfig(batch_size=4, seq_len=16, max_iters=10, eval_every=10, sample_length=0,
                                warmup_iters=0, device="cpu", seed=1), out_dir=w / "run")
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
    os.mkfifo(w / "fifo")  # no writer ever opens it: reading it would wait forever
    return w


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
    ("sample: unknown prime characters", ["sample", "{w}/run", "--prime", "caf\u00e9\u2603"], 2,
     "not in this model's vocabulary"),
    ("sample: --temperature 0", ["sample", "{w}/run", "--temperature", "0"], 2, "--temperature"),
    ("sample: --temperature -1", ["sample", "{w}/run", "-t", "-1"], 2, "--temperature"),
    ("sample: --top-k 0", ["sample", "{w}/run", "--top-k", "0"], 2, "--top-k"),
    ("sample: --top-p 2", ["sample", "{w}/run", "--top-p", "2"], 2, "--top-p"),
    ("sample: --length -1", ["sample", "{w}/run", "--length", "-1"], 2, "--length"),
    ("sample: --num-samples 0", ["sample", "{w}/run", "--num-samples", "0"], 2, "--num-samples"),
    ("sample: --seed -1", ["sample", "{w}/run", "--seed", "-1"], 2, "--seed"),
    ("sample: --which middle", ["sample", "{w}/run", "--which", "middle"], 2, "--which"),
    ("sample: --device tpu", ["sample", "{w}/run", "--device", "tpu"], 2, "--device"),
    ("sample: --temperature 1e-40", ["sample", "{w}/run", "-t", "1e-40", "--length", "5"], 2, "--temperature"),
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
    ("eval: model file outside a run, no FILE", ["eval", "{w}/not_a_run/step-00000010.safetensors"], 2,
     "pass a FILE to score"),
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


@pytest.mark.parametrize("name,args,code,fragment", [*CATALOGUE, *KNOWN_BUGS],
                         ids=[c[0] for c in CATALOGUE] + [p.values[0] for p in KNOWN_BUGS])
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
    proc = subprocess.run([PYTHON, "-m", "charnn", *_argv(args, world)], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    check_one_error(proc.returncode, proc.stdout, proc.stderr, code, fragment)
    assert not (world / "PWNED").exists()


# --- data and eval: what a model file may not choose, damaged caches, files that change, memory ------------

def _crafted_model(src: Path, dst: Path, **meta) -> Path:
    """`src` re-saved with metadata fields replaced (a valid file: the tensor checksums still hold)."""
    from charnn.checkpoint import load_model, model_bytes

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
    inside = _crafted_model(good, run / "step-00000011.safetensors", corpus_path="/etc/passwd",
                            corpus_cache=str(leak))
    result = invoke("eval", inside, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chars"] > 0
    assert not leak.exists() and not (tmp_path / ".cache").exists() and not (world / ".cache").exists()


def test_eval_uses_a_sound_cache_read_only_and_scores_past_a_damaged_one(tmp_path: Path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TINY_TEXT)
    out, cache = tmp_path / "checkpoints" / "run", tmp_path / "checkpoints" / ".cache"
    train(corpus, model_cfg=ModelConfig(model="gru", layers=1, hidden=16, embed=8), cache_dir=cache, out_dir=out,
          train_cfg=TrainConfig(batch_size=4, seq_len=16, max_iters=10, eval_every=10, sample_length=0,
                                warmup_iters=0, device="cpu", seed=1))
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
    for args in (["--segment", str(len(TINY_TEXT))], ["--segment", "1000000000000"],
                 ["--segment", "64"], ["--segment", "64", "--batch-size", "1000000000"]):
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
    from charnn.runtime import available_ram

    if available_ram() is None:
        pytest.skip("no /proc/meminfo here")
    result = invoke(*T, world / "tiny.txt", "--hidden", "16384", "--layers", "16", "--out", world / "big")
    check_one_error(*_run(result), 5, "RAM free here")
    assert not (world / "big").exists()


def test_cpu_allocation_failure_exits_5(world: Path, tmp_path: Path):
    """Under `ulimit -v` the CPU allocator fails (no OOM killer): exit 5 and one line, not its traceback."""
    limit = 3 << 30  # room for torch's libraries; a 16384-wide layer's 4 GB weight matrix cannot fit

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([PYTHON, "-m", "charnn", *T, str(world / "tiny.txt"), "--hidden", "16384", "--layers", "1",
                           "--out", str(tmp_path / "r")], env=cli_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=cap)
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
    proc = subprocess.run([PYTHON, "-m", "charnn", "eval", str(world / "run"), "/dev/stdin"], env=cli_env(),
                          input="First Citizen:\n", capture_output=True, text=True, timeout=120)
    check_one_error(proc.returncode, proc.stdout, proc.stderr, 2, "pipe (FIFO)")


def _run(result) -> tuple[int, str, str]:
    return result.exit_code, result.stdout, result.stderr


def test_cpu_allocation_failures_are_out_of_memory():
    from charnn.errors import OutOfMemoryError
    from charnn.runtime import user_device_error

    torch_cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                             "memory: you tried to allocate 22716547072 bytes. Error code 12 (Cannot allocate memory)")
    err = user_device_error(torch_cpu)
    assert isinstance(err, OutOfMemoryError) and "22.7 GB in RAM" in str(err) and "alloc_cpu" not in str(err)
    assert isinstance(user_device_error(MemoryError()), OutOfMemoryError)
    assert user_device_error(RuntimeError("expected scalar type Float")) is None
