"""The model file with the options of issue 5: tied weights, layer norm and locked dropout survive a save and
load exactly, a tied file whose two copies disagree is refused, and files that predate the options still load."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from charnn.checkpoint import load_model, model_bytes
from charnn.cli import app
from charnn.config import DataConfig, ModelConfig, to_dict
from charnn.data import Vocab
from charnn.errors import CheckpointError
from charnn.model import CharRNN

VOCAB = Vocab(tuple(map(ord, "\n abcdef")))
B, T, H = 2, 7, 6


def _save(tmp_path, model, **extra):
    path = tmp_path / "step-00000001.safetensors"
    path.write_bytes(model_bytes(model, VOCAB, DataConfig(), step=1, val_loss=None, corpus_sha256="",
                                 extra=extra or None))
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
