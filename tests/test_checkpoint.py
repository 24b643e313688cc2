"""The model file: tied weights, layer norm and locked dropout survive a save and load exactly, a tied file
whose two copies disagree is refused, files that predate the options still load; the metadata record writes
the keys files have always had, reads them back, and refuses crafted values. Loading never executes code (no
unpickling on the sample and eval paths; the resume state is read with weights_only), and a tampered file
(flipped data byte, crafted header, non-finite weights, mistyped metadata) is refused before it is used; each
of those tests was checked once to fail with its requirement broken."""

import ast
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from charnn.config import DataConfig, ModelConfig, TrainConfig, to_dict
from charnn.data import Vocab
from charnn.errors import CharnnWarning, CheckpointError
from charnn.model import CharRNN
from charnn.store.checkpoint import load_model, model_bytes, read_header
from charnn.store.meta import FORMAT, CheckpointMeta, meta_strings, parse_meta
from charnn.store.trainstate import load_state
from charnn.training.train import train
from tests.conftest import (
    REPO,
    SMALL_MODEL,
    TINY_TEXT,
    corpus_of,
    flip_data_byte,
    invoke,
    one_error_line,
    small_train,
    torch_save_bytes,
)

VOCAB = Vocab(tuple(map(ord, "\n abcdef")))
B, T, H = 2, 7, 6


def _save(tmp_path, model, **changes):
    """A model file, its metadata strings then changed by `changes` (checksums stay those of the tensors)."""
    path = tmp_path / "step-00000001.safetensors"
    path.write_bytes(model_bytes(model, VOCAB, DataConfig(), step=1, val_loss=None, corpus_sha256=""))
    if changes:
        _rewrite_meta(path, **changes)
    return path


@pytest.mark.parametrize(
    "options",
    [
        {"tie_weights": True},
        {"layer_norm": True},
        {"locked_dropout": 0.4},
        {"tie_weights": True, "layer_norm": True, "locked_dropout": 0.4, "model": "gru"},
    ],
)
def test_saved_and_loaded_model_gives_identical_logits(tmp_path, options):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, hidden=H, embed=H, **options)
    model = CharRNN(cfg, len(VOCAB))
    if cfg.layer_norm:
        with torch.no_grad():  # away from the identity init, so a norm dropped on load would show
            model.ln.weight.uniform_(0.5, 2.0)
            model.ln.bias.uniform_(-1.0, 1.0)
    loaded = load_model(_save(tmp_path, model))
    assert loaded.model_cfg == cfg
    x = torch.randint(len(VOCAB), (B, T))
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[0], loaded.model(x)[0])
    if cfg.tie_weights:  # the tie is restored: one Parameter, not two equal copies
        assert loaded.model.head.weight is loaded.model.embed.weight
        assert len(list(loaded.model.parameters())) == len(list(model.parameters()))


def test_tied_file_whose_two_copies_differ_is_refused(tmp_path):
    cfg = ModelConfig(layers=1, hidden=H, embed=H)
    untied = CharRNN(cfg, len(VOCAB))
    untied.cfg = dataclasses.replace(cfg, tie_weights=True)  # the metadata claims a tie the weights lack
    path = _save(tmp_path, untied)  # valid checksums: only the tie check can catch it
    with pytest.raises(CheckpointError, match="tied embedding and output weights differ"):
        load_model(path)
    res = invoke("sample", path, "--length", "5")
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        f"error: {path}: the tied embedding and output weights differ (the file was altered)"
    ]


def test_file_that_predates_the_options_loads_with_their_defaults(tmp_path):
    cfg = ModelConfig(layers=1, hidden=H, embed=4)
    model = CharRNN(cfg, len(VOCAB))
    old = {k: v for k, v in to_dict(cfg).items() if k not in ("tie_weights", "layer_norm", "locked_dropout")}
    loaded = load_model(_save(tmp_path, model, model_config=json.dumps(old)))
    assert (loaded.model_cfg.tie_weights, loaded.model_cfg.layer_norm, loaded.model_cfg.locked_dropout) == (
        False,
        False,
        0.0,
    )
    x = torch.randint(len(VOCAB), (B, T))
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[0], loaded.model(x)[0])


def test_layer_norm_file_without_its_tensors_is_refused(tmp_path):
    model = CharRNN(ModelConfig(layers=1, hidden=H, embed=4), len(VOCAB))
    meta = json.dumps(to_dict(ModelConfig(layers=1, hidden=H, embed=4, layer_norm=True)))
    with pytest.raises(CheckpointError, match="tensors do not match"):
        load_model(_save(tmp_path, model, model_config=meta))


def test_metadata_keys_on_disk_and_their_round_trip(tmp_path):
    cfg = ModelConfig(layers=1, hidden=H, embed=4)
    train_cfg = TrainConfig(eval_segment=77, lr=0.01)
    blob = model_bytes(
        CharRNN(cfg, len(VOCAB)),
        VOCAB,
        DataConfig(),
        step=5,
        val_loss=1.25,
        corpus_sha256="ab",
        corpus_path="/data/c.txt",
        corpus_cache="",
        train_cfg=train_cfg,
        state_sha256="cd",
    )
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    _, strings, _, _ = read_header(path)
    assert set(strings) == {
        "format",
        "charnn_version",
        "torch_version",
        "model_config",
        "data_config",
        "vocab",
        "corpus_sha256",
        "step",
        "val_loss",
        "checksums",
        "corpus_path",
        "corpus_cache",
        "train_config",
        "state_sha256",
    }
    assert (strings["step"], strings["val_loss"], strings["corpus_cache"]) == ("5", "1.25", "")
    assert json.loads(strings["train_config"]) == to_dict(train_cfg)  # the same JSON inside as always
    loaded = load_model(path)
    want = CheckpointMeta(
        cfg,
        DataConfig(),
        VOCAB,
        step=5,
        val_loss=1.25,
        corpus_sha256="ab",
        corpus_path="/data/c.txt",
        corpus_cache="",
        train_cfg=train_cfg,
        state_sha256="cd",
    )
    assert loaded.meta == want and loaded.eval_segment == 77 and loaded.step == 5
    assert {k: v for k, v in strings.items() if k != "checksums"} == meta_strings(want)


def test_file_without_the_optional_keys_reads_with_defaults(tmp_path):
    path = _save(tmp_path, CharRNN(ModelConfig(layers=1, hidden=H, embed=4), len(VOCAB)))
    _, strings, _, _ = read_header(path)
    assert not {"corpus_path", "corpus_cache", "train_config", "state_sha256"} & set(strings)
    meta = load_model(path).meta
    assert (meta.corpus_path, meta.train_cfg, meta.state_sha256, meta.val_loss) == (None, None, None, None)
    assert meta.eval_segment == 4096


@pytest.mark.parametrize(
    "train_config, message",
    [
        ('{"eval_segment": 1e11}', r"TrainConfig\.eval_segment must be an integer, not 1"),
        ('{"eval_segment": "x"}', r'TrainConfig\.eval_segment must be an integer, not "x"'),
        ('{"eval_segment": 0}', "invalid checkpoint metadata .*eval_segment must be at least 2"),
        ('{"lr": true}', r"TrainConfig\.lr must be a number, not true"),
        ("[1]", "unreadable train_config in the checkpoint metadata"),
        ("not json", "unreadable train_config in the checkpoint metadata"),
    ],
)
def test_crafted_train_config_is_refused(tmp_path, train_config, message):
    path = _save(tmp_path, CharRNN(ModelConfig(layers=1, hidden=H, embed=4), len(VOCAB)), train_config=train_config)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_implausible_eval_segment_is_refused_where_it_is_used(tmp_path):
    """A segment TrainConfig allows but scoring will not allocate: the model still loads (to sample, to resume);
    asking for its segment is the error."""
    model = CharRNN(ModelConfig(layers=1, hidden=H, embed=4), len(VOCAB))
    path = _save(tmp_path, model, train_config=json.dumps(to_dict(TrainConfig(eval_segment=(1 << 20) + 1))))
    loaded = load_model(path)
    with pytest.raises(CheckpointError, match="implausible eval_segment 1048577 in the checkpoint metadata"):
        _ = loaded.eval_segment


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("step", "five", "invalid checkpoint metadata"),
        ("val_loss", "low", "invalid checkpoint metadata"),
        ("model_config", "{", "'model_config' is missing or unreadable"),
        ("data_config", '{"encoding": 5}', r"DataConfig\.encoding must be a string, not 5"),
        ("vocab", "[]", "invalid checkpoint metadata"),
    ],
)
def test_crafted_metadata_is_refused(key, value, message):
    strings = meta_strings(CheckpointMeta(ModelConfig(), DataConfig(), VOCAB))
    with pytest.raises(CheckpointError, match=message):
        parse_meta({**strings, key: value}, Path("f.safetensors"))


# --- loading never executes code; tampered files are refused -------------------------------------------


def test_sample_and_eval_never_unpickle(run_dir: Path, tmp_path: Path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("unpickling on a sample/eval path")

    class NoUnpickler:
        def __init__(self, *a, **k):
            refuse()

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    held_out = tmp_path / "held.txt"
    held_out.write_text(TINY_TEXT[:300], encoding="utf-8")
    res = invoke("sample", str(run_dir), "--length", "20", "--seed", "1", "--prime", "First")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("First")
    res = invoke("eval", str(run_dir), str(held_out), "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["chars"] == 299


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_pickle_payload_under_checkpoint_name_is_refused(tmp_path: Path, command: str):
    marker = tmp_path / "pwned"
    for name, writer in (
        ("step-00000010.safetensors", pickle.dumps),
        ("step-00000020.safetensors", lambda obj: torch_save_bytes({"x": obj})),
    ):
        evil = tmp_path / name
        evil.write_bytes(writer(_Payload(marker)))
        res = invoke(command, str(evil), *(["--length", "5"] if command == "sample" else ["--device", "cpu"]))
        assert res.exit_code == 2
        assert "not a charnn checkpoint" in one_error_line(res)
        assert not marker.exists()


def test_resume_state_with_payload_is_refused(run_dir: Path, tmp_path: Path):
    """The state file is read with weights_only=True: a payload whose sha256 the attacker also wrote is refused."""
    marker = tmp_path / "pwned"
    for model_path in sorted(run_dir.glob("step-*.safetensors")):
        state_path = model_path.with_name(model_path.stem + ".state.pt")
        blob = torch_save_bytes({"step": 10, "x": _Payload(marker)})
        state_path.write_bytes(blob)
        _rewrite_meta(model_path, state_sha256=hashlib.sha256(blob).hexdigest())
        with pytest.raises(CheckpointError, match="unreadable training state"):
            load_state(state_path, hashlib.sha256(blob).hexdigest())
    with pytest.warns(CharnnWarning), pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(
            corpus_of(run_dir), model_cfg=SMALL_MODEL, train_cfg=small_train(max_iters=30), out_dir=run_dir, resume=True
        )
    assert not marker.exists()


def _rewrite_meta(path: Path, **changes: str) -> None:
    """Rewrite a model file's metadata (checksums stay those of the unchanged tensors)."""
    from safetensors.torch import load, save

    header, meta, _, _ = read_header(path)
    tensors = load(path.read_bytes())
    meta.update(changes)
    path.write_bytes(save(tensors, metadata=meta))


def test_every_torch_load_is_weights_only():
    """A scan of the package source: each torch.load call passes weights_only=True (no unsafe fallback)."""
    calls = 0
    for source in sorted((REPO / "charnn").rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert all(a.name != "load" for a in node.names), f"{source}: imports torch.load by name"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = node.func.value
                if isinstance(base, ast.Name) and base.id == "torch":
                    calls += 1
                    kw = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, (
                        f"{source}:{node.lineno}: torch.load without weights_only=True"
                    )
    assert calls >= 1  # the resume state is read somewhere: the scan must have seen it


def test_torch_is_recent_enough_for_weights_only():
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert (major, minor) >= (2, 10)
    assert '"torch>=2.10"' in (REPO / "pyproject.toml").read_text()


def test_resume_state_holds_only_tensors_and_primitives(run_dir: Path):
    path = sorted(run_dir.glob("*.state.pt"))[-1]
    state = load_state(path)

    def walk(obj, where="state"):
        if isinstance(obj, dict):
            for k, v in obj.items():
                assert isinstance(k, (str, int)), where
                walk(v, f"{where}[{k!r}]")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")
        else:
            assert obj is None or isinstance(obj, (torch.Tensor, int, float, str, bool)), (
                f"{where} is a {type(obj).__name__}"
            )

    walk(state)
    assert {"step", "optimizer", "rng", "hidden"} <= set(state)
    assert {"python", "torch"} <= set(state["rng"]) and "numpy" not in state["rng"]


def _crafted_file(path: Path, *, hidden: int, layers: int = 1, embed: int = 8, vocab_size: int = 4) -> None:
    """A small file whose header claims a huge model with consistent shapes (the data is not there)."""
    cfg = {"model": "lstm", "layers": layers, "hidden": hidden, "embed": embed, "dropout": 0.0}
    shapes = {"embed.weight": [vocab_size, embed], "head.weight": [vocab_size, hidden], "head.bias": [vocab_size]}
    for layer in range(layers):
        inp = embed if layer == 0 else hidden
        shapes |= {
            f"rnn.weight_ih_l{layer}": [4 * hidden, inp],
            f"rnn.weight_hh_l{layer}": [4 * hidden, hidden],
            f"rnn.bias_ih_l{layer}": [4 * hidden],
            f"rnn.bias_hh_l{layer}": [4 * hidden],
        }
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {
        "format": FORMAT,
        "model_config": json.dumps(cfg),
        "data_config": json.dumps({}),
        "vocab": Vocab(tuple(range(97, 97 + vocab_size))).to_json(),
        "step": "1",
        "val_loss": "none",
        "checksums": json.dumps({k: "0" * 64 for k in shapes}),
        "corpus_sha256": "",
    }
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 64)


@pytest.mark.parametrize("hidden,layers", [(2**20, 1), (16384, 16)])
def test_crafted_huge_header_fails_fast_without_allocating(tmp_path: Path, hidden: int, layers: int):
    """2**20 is out of bounds; 16384 x 16 layers is in bounds (137 GB of weights): both fail before allocating."""
    path = tmp_path / "step-00000001.safetensors"
    _crafted_file(path, hidden=hidden, layers=layers, embed=16384 if layers > 1 else 8)
    import resource

    with torch.device("meta"):  # the first meta-device use imports torch's meta kernels (seconds, once)
        CharRNN(SMALL_MODEL, 2)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError):
        load_model(path)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200_000  # < 200 MB more at peak
    assert path.stat().st_size < 20_000


def test_one_flipped_data_byte_is_a_checksum_mismatch(run_dir: Path):
    path = sorted(run_dir.glob("*.safetensors"))[-1]
    load_model(path)
    for where in (0.0, 0.37, 0.999):
        blob = path.read_bytes()
        flip_data_byte(path, where)
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            load_model(path)
        path.write_bytes(blob)
    res = invoke("sample", str(path), "--length", "5")  # the CLI says so too, exit 2
    assert res.exit_code == 0
    flip_data_byte(path)
    res = invoke("sample", str(path), "--length", "5")
    assert res.exit_code == 2 and "checksum mismatch" in one_error_line(res)


def test_non_finite_weights_with_valid_checksums_are_refused(tmp_path: Path):
    """A file that verifies but holds NaN weights would sample garbage (or crash): refused on load."""
    model = CharRNN(SMALL_MODEL, 3)
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    path = tmp_path / "step-00000001.safetensors"
    path.write_bytes(model_bytes(model, Vocab((97, 98, 99)), DataConfig(), step=1, val_loss=None, corpus_sha256=""))
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(path)


def test_mistyped_config_in_metadata_is_a_checkpoint_error(run_dir: Path):
    path = sorted(run_dir.glob("*.safetensors"))[-1]
    header, meta, _, _ = read_header(path)
    for field, bad in (("hidden", "16"), ("hidden", 16.0), ("layers", True), ("model", 3), ("dropout", "0")):
        cfg = json.loads(meta["model_config"])
        cfg[field] = bad
        copy = path.with_name("step-00000099.safetensors")
        shutil.copy(path, copy)
        _rewrite_meta(copy, model_config=json.dumps(cfg))
        with pytest.raises(CheckpointError):
            load_model(copy)
    data_cfg = json.loads(meta["data_config"]) | {"encoding": 5}
    _rewrite_meta(copy, model_config=meta["model_config"], data_config=json.dumps(data_cfg))
    with pytest.raises(CheckpointError):
        load_model(copy)
