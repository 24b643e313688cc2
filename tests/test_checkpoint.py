"""The model file: tied weights, layer norm and locked dropout survive a save and load exactly, a tied file
whose two copies disagree is refused, files that predate the options still load; the metadata record writes
the keys files have always had, reads them back, and refuses crafted values."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from charnn.checkpoint import load_model, model_bytes, read_header
from charnn.cli import app
from charnn.config import DataConfig, ModelConfig, TrainConfig, to_dict
from charnn.data import Vocab
from charnn.errors import CheckpointError
from charnn.meta import CheckpointMeta, meta_strings, parse_meta
from charnn.model import CharRNN

VOCAB = Vocab(tuple(map(ord, "\n abcdef")))
B, T, H = 2, 7, 6


def _save(tmp_path, model, **changes):
    """A model file, its metadata strings then changed by `changes` (checksums stay those of the tensors)."""
    from safetensors.torch import load, save

    path = tmp_path / "step-00000001.safetensors"
    path.write_bytes(model_bytes(model, VOCAB, DataConfig(), step=1, val_loss=None, corpus_sha256=""))
    if changes:
        _, strings, _, _ = read_header(path)
        path.write_bytes(save(load(path.read_bytes()), metadata={**strings, **changes}))
    return path


@pytest.mark.parametrize("options", [
    {"tie_weights": True}, {"layer_norm": True}, {"locked_dropout": 0.4},
    {"tie_weights": True, "layer_norm": True, "locked_dropout": 0.4, "model": "gru"},
])
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
    res = CliRunner().invoke(app, ["sample", str(path), "--length", "5"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        f"error: {path}: the tied embedding and output weights differ (the file was altered)"]


def test_file_that_predates_the_options_loads_with_their_defaults(tmp_path):
    cfg = ModelConfig(layers=1, hidden=H, embed=4)
    model = CharRNN(cfg, len(VOCAB))
    old = {k: v for k, v in to_dict(cfg).items() if k not in ("tie_weights", "layer_norm", "locked_dropout")}
    loaded = load_model(_save(tmp_path, model, model_config=json.dumps(old)))
    assert (loaded.model_cfg.tie_weights, loaded.model_cfg.layer_norm, loaded.model_cfg.locked_dropout) == (
        False, False, 0.0)
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
    blob = model_bytes(CharRNN(cfg, len(VOCAB)), VOCAB, DataConfig(), step=5, val_loss=1.25, corpus_sha256="ab",
                       corpus_path="/data/c.txt", corpus_cache="", train_cfg=train_cfg, state_sha256="cd")
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    _, strings, _, _ = read_header(path)
    assert set(strings) == {"format", "charnn_version", "torch_version", "model_config", "data_config", "vocab",
                            "corpus_sha256", "step", "val_loss", "checksums", "corpus_path", "corpus_cache",
                            "train_config", "state_sha256"}
    assert (strings["step"], strings["val_loss"], strings["corpus_cache"]) == ("5", "1.25", "")
    assert json.loads(strings["train_config"]) == to_dict(train_cfg)  # the same JSON inside as always
    loaded = load_model(path)
    want = CheckpointMeta(cfg, DataConfig(), VOCAB, step=5, val_loss=1.25, corpus_sha256="ab",
                          corpus_path="/data/c.txt", corpus_cache="", train_cfg=train_cfg, state_sha256="cd")
    assert loaded.meta == want and loaded.eval_segment == 77 and loaded.step == 5
    assert {k: v for k, v in strings.items() if k != "checksums"} == meta_strings(want)


def test_file_without_the_optional_keys_reads_with_defaults(tmp_path):
    path = _save(tmp_path, CharRNN(ModelConfig(layers=1, hidden=H, embed=4), len(VOCAB)))
    _, strings, _, _ = read_header(path)
    assert not {"corpus_path", "corpus_cache", "train_config", "state_sha256"} & set(strings)
    meta = load_model(path).meta
    assert (meta.corpus_path, meta.train_cfg, meta.state_sha256, meta.val_loss) == (None, None, None, None)
    assert meta.eval_segment == 4096


@pytest.mark.parametrize("train_config, message", [
    ('{"eval_segment": 1e11}', r"TrainConfig\.eval_segment = 1"),
    ('{"eval_segment": "x"}', r"TrainConfig\.eval_segment = 'x'"),
    ('{"eval_segment": 0}', "invalid checkpoint metadata .*eval-segment must be at least 2"),
    ('{"lr": true}', r"TrainConfig\.lr = True"),
    ("[1]", "unreadable train_config in the checkpoint metadata"),
    ("not json", "unreadable train_config in the checkpoint metadata"),
])
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


@pytest.mark.parametrize("key, value, message", [
    ("step", "five", "invalid checkpoint metadata"),
    ("val_loss", "low", "invalid checkpoint metadata"),
    ("model_config", "{", "'model_config' is missing or unreadable"),
    ("data_config", '{"encoding": 5}', r"DataConfig\.encoding = 5"),
    ("vocab", "[]", "invalid checkpoint metadata"),
])
def test_crafted_metadata_is_refused(key, value, message):
    strings = meta_strings(CheckpointMeta(ModelConfig(), DataConfig(), VOCAB))
    with pytest.raises(CheckpointError, match=message):
        parse_meta({**strings, key: value}, Path("f.safetensors"))
