"""The catalogue of bad inputs: every one gets its exit code, exactly one `error: ...` line on
stderr, nothing on stdout, and no traceback. In-process through CliRunner; a few also through `python -m charnn`.
"""

from __future__ import annotations

import os
import pickle
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
    os.mkfifo(w / "fifo")  # output: special files (a device is never a write target in a test: we may be root)
    (w / "fifo_link").symlink_to(w / "fifo")
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
    # output: an output path that is not a regular file is refused, never replaced (more below the table)
    ("output: report -o FIFO", ["report", "{w}/run", "-o", "{w}/fifo"], 2, "is a FIFO"),
    ("output: report -o link to FIFO", ["report", "{w}/run", "-o", "{w}/fifo_link"], 2, "a link to"),
    ("output: export -o FIFO", ["export", "{w}/run", "-o", "{w}/fifo"], 2, "is a FIFO"),
    ("output: export -o FIFO --force", ["export", "{w}/run", "-o", "{w}/fifo", "--force"], 2, "is a FIFO"),
    ("output: export onnx -o FIFO", ["export", "{w}/run", "--format", "onnx", "-o", "{w}/fifo_link", "--force"], 2,
     "is a FIFO"),
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
    from charnn.files import output_target

    with pytest.raises(OutputPathError, match="/dev/null is a character device"):
        output_target("/dev/null")


def test_output_atomic_write_refuses_fifo_and_directory_and_writes_through_links(tmp_path: Path):
    from charnn.errors import CheckpointWriteError, OutputPathError
    from charnn.files import LineLog, atomic_write

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

    from charnn import files
    from charnn.errors import CheckpointWriteError

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

    args = ["train", "--quiet", "--device", "cpu", "--resume", str(run), "--log-every", "1", "--max-iters", "200",
            "--eval-every", "1000"]
    proc = subprocess.run([PYTHON, "-m", "charnn", *args], env=cli_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=cap)
    check_one_error(proc.returncode, proc.stdout, proc.stderr, 4, "metrics log write failed")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) > 10 and all(line.endswith("\n") and json.loads(line) for line in lines)
    assert (run / "step-00000010.safetensors").read_bytes() == checkpoint


def test_output_failed_model_write_leaves_no_orphan_state(world: Path, tmp_path: Path, monkeypatch):
    """The disk fills between a checkpoint's state file and its model file: the state goes too (no half
    checkpoint using the space), the earlier checkpoint stays."""
    from charnn import rundir
    from charnn.errors import CheckpointWriteError

    real = rundir.atomic_write

    def model_write_fails(path, data, **kw):
        if str(path).endswith("00000020.safetensors"):
            raise CheckpointWriteError(f"checkpoint write failed (disk full?): {path}: No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(rundir, "atomic_write", model_write_fails)
    with pytest.raises(CheckpointWriteError):
        train(world / "tiny.txt", model_cfg=ModelConfig(model="gru", layers=1, hidden=8, embed=4),
              train_cfg=TrainConfig(batch_size=2, seq_len=8, max_iters=20, eval_every=10, sample_length=0,
                                    warmup_iters=0, device="cpu", seed=1), out_dir=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*")) == [
        "step-00000010.safetensors", "step-00000010.state.pt"]


# output: stdout that cannot be written or encoded -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command,closed", [(["sample", "--length", "20000"], False), (["eval", "--json"], True)])
def test_output_stdout_full_or_closed(world: Path, command: list[str], closed: bool):
    """`charnn sample RUN > /dev/full` and `charnn eval RUN >&-`: exit 4 and one line, nothing at exit."""
    args = [command[0], str(world / "run"), *command[1:]]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([PYTHON, "-m", "charnn", *args], env=cli_env(), stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, preexec_fn=(lambda: os.close(1)) if closed else None)
    check_one_error(proc.returncode, "", proc.stderr, 4, "it is closed" if closed else "no space left")


def test_output_stdout_full_in_process(monkeypatch):
    import errno
    import io
    import sys

    from charnn.cli_output import echo
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

    from charnn.cli_output import echo
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

    from charnn.cli_output import SampleWriter
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

    text = Vocab(tuple(map(ord, "ab\x1b\r\u202e\u00e9\n")))
    ascii_term = _Terminal("ascii")
    monkeypatch.setattr(sys, "stdout", ascii_term)
    out = SampleWriter(text, escape=True)
    out.write(list(range(len(text))))
    out.flush()
    assert ascii_term.buffer.getvalue() == b"ab\\x1b\\r\\u202e\\xe9\n"  # a terminal that cannot show 'é'


def test_output_training_display_escapes_samples(capsys):
    from charnn.progress import TrainDisplay
    from charnn.trainloop import Progress

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
    train(corpus, model_cfg=ModelConfig(model="gru", layers=1, hidden=16, embed=8),
          train_cfg=TrainConfig(batch_size=4, seq_len=16, max_iters=5, eval_every=5, sample_length=0,
                                warmup_iters=0, device="cpu", seed=1), out_dir=tmp_path / "run",
          data_cfg=_bytes_data())
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
