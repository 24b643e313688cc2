"""The catalogue of bad inputs: every one gets its exit code, exactly one `error: ...` line on
stderr, nothing on stdout, and no traceback. In-process through CliRunner; a few also through `python -m charnn`.
"""

from __future__ import annotations

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
    # sampling: --prime-file (read as a corpus is, checked against the model's vocabulary)
    ("sample: --prime-file missing", ["sample", "{w}/run", "--prime-file", "{w}/nope.txt"], 2, "no such file"),
    ("sample: --prime-file directory", ["sample", "{w}/run", "--prime-file", "{w}/adir"], 2, "is a directory"),
    ("sample: --prime-file empty", ["sample", "{w}/run", "--prime-file", "{w}/empty.txt"], 2, "empty (0 bytes)"),
    ("sample: --prime-file binary", ["sample", "{w}/run", "--prime-file", "{w}/binary.bin"], 2, "binary file"),
    ("sample: --prime-file invalid utf-8", ["sample", "{w}/run", "--prime-file", "{w}/bad_utf8.txt"], 2,
     "not valid utf-8 at byte 6"),
    ("sample: --prime-file unknown characters", ["sample", "{w}/run", "--prime-file", "{w}/unknown.txt"], 2,
     "unknown.txt: 2 character(s) not in this model's vocabulary"),
    ("sample: --prime-file and --prime", ["sample", "{w}/run", "--prime-file", "{w}/changed.txt", "--prime", "a"],
     2, "--prime and --prime-file"),
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
