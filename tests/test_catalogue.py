"""The catalogue of bad inputs: every one gets its exit code, exactly one `error: ...` line on
stderr, nothing on stdout, and no traceback. In-process through CliRunner; a few also through `python -m charnn`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable
from hashlib import sha256 as _sha256
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from charnn.checkpoint import load_state, read_header
from charnn.config import ModelConfig, TrainConfig
from charnn.train import train
from tests.conftest import PYTHON, TINY_TEXT, cli_env, invoke, one_error_line, torch_save_bytes

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


# resume and run files: training options that may change on resume, a hand-edited config.json, a crafted
# training state (each resume below starts from a copy of the session's 20-step run, checkpoints at 10 and 20)

# Every training option of `charnn train` with a value other than the run's: each may change on resume.
RESUME_CHANGES = {
    "batch_size": "8", "seq_len": "8", "lr": "0.005", "min_lr": "0.001", "warmup_iters": "2", "weight_decay": "0.1",
    "grad_clip": "0", "max_iters": "22", "epochs": "3", "time_budget": "60", "seed": "3", "eval_every": "1",
    "sample_every": "1", "sample_length": "5", "log_every": "2", "keep_last": "1", "patience": "3", "device": "cpu",
    "precision": "fp32", "deterministic": None, "threads": "1",
}


def test_every_training_option_is_tried_on_resume():
    from charnn.cli_options import TRAIN_CONFIGS

    options = {f.name for cls in TRAIN_CONFIGS if cls is TrainConfig for f in dataclasses.fields(cls)
               if f.metadata.get("panel")}
    assert options == set(RESUME_CHANGES)


@pytest.mark.parametrize("name", RESUME_CHANGES)
def test_a_training_option_may_change_on_resume(run_dir: Path, name: str):
    value = RESUME_CHANGES[name]
    flag = "--" + name.replace("_", "-")
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


def test_an_eval_segment_scoring_cannot_allocate_is_refused_before_training(run_dir: Path):
    config = run_dir / "config.json"
    config.write_text(json.dumps(_edit("train.eval_segment", 10**12)(json.loads(config.read_text()))))
    result = invoke("train", "--quiet", "--device", "cpu", "--resume", run_dir, "--max-iters", "21")
    check_one_error(result.exit_code, result.stdout, result.stderr, 2, "eval_segment 1000000000000 is above")


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
    ("hidden of 2 streams", lambda s: s.__setitem__("hidden", [h[:, :2] for h in s["hidden"]]),
     "does not fit this lstm of 4 streams"),
    ("hidden one tensor", lambda s: s.__setitem__("hidden", s["hidden"][0]), "does not fit this lstm"),
    ("hidden 2-d", lambda s: s.__setitem__("hidden", [h[0] for h in s["hidden"]]), "hidden state is not"),
    ("train_config batch '4'", _set("train_config/batch_size", "4"), "does not fit"),
    ("optimizer moment of another shape", _set("optimizer/state/0/exp_avg", torch.zeros(3)),
     "optimizer state does not fit this model"),
    ("optimizer one parameter", _set("optimizer/param_groups/0/params", [0]),
     "optimizer state does not fit this model"),
    ("optimizer one group", lambda s: s["optimizer"]["param_groups"].pop(), "parameter groups"),
    ("scaler 5", _set("scaler", 5), "scaler is not a dictionary"),
]


@pytest.mark.parametrize("name,change,fragment", STATE_CHANGES, ids=[c[0] for c in STATE_CHANGES])
def test_a_crafted_training_state_falls_back_with_a_warning(run_dir: Path, name: str, change, fragment: str):
    _rehash_state(run_dir, 20, change)
    result = invoke("train", "--quiet", "--device", "cpu", "--resume", run_dir, "--max-iters", "11")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warning, = (line for line in result.stderr.splitlines() if line.startswith("warning: "))
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
    return json.dumps({"kind": "train", "step": 21, "elapsed": 1.0, "train_loss": 3.0, "lr": 0.01,
                       "grad_norm": 1.0, "clip_frac": 0.0, "chars_per_s": 100.0} | fields)


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
    ("sample elapsed 'x'", "samples.jsonl", json.dumps({"step": 3, "elapsed": "x", "val_loss": True, "text": 5}),
     None),
    ("config train [1]", "config.json", _edit("train", [1]), "section(s) that are not objects (train)"),
    ("config init_from 5", "config.json", _edit("init_from", 5), "section(s) that are not objects (init_from)"),
    ("config grad_clip Infinity", "config.json", _edit("train.grad_clip", float("inf")), None),
    ("config the file []", "config.json", lambda saved: [], "not a JSON object; left out of the report"),
]


@pytest.mark.parametrize("name,file,change,warning", SIDE_FILES, ids=[c[0] for c in SIDE_FILES])
def test_report_reads_damaged_side_files_with_a_warning(run_dir: Path, tmp_path: Path, name: str, file: str,
                                                        change, warning: str | None):
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
    warnings_seen = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
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
    assert result.stderr.count("not a regular file; left out of the report") == 2
    result = invoke("train", "--quiet", "--device", "cpu", "--resume", run_dir)
    assert "config.json missing or unreadable" in one_error_line(result, 2)
