"""The models shipped in the package (charnn/store/bundled.py, benchmarks/starter.py): the starter's file against its
manifest (sha256, size, 16-bit weights, validation loss recomputed), model files with 16-bit weights, the name
resolver (an existing path wins), `charnn models`, and fine-tuning from the starter."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from charnn.config import DataConfig, ModelConfig
from charnn.data import Vocab, encode_file
from charnn.errors import CheckpointError
from charnn.evaluate import evaluate_ids
from charnn.model import CharRNN
from charnn.store.bundled import bundled_models, bundled_path
from charnn.store.checkpoint import load_model, model_bytes, read_header
from charnn.store.rundir import load_run
from charnn.training.choices import CPU_LR
from tests.conftest import REPO, invoke, one_error_line, tiny_configs

MAX_BYTES = 2_500_000


@pytest.fixture(scope="module")
def starter():
    (found,) = [m for m in bundled_models() if m.name == "shakespeare"]
    return found


def test_the_starter_file_is_the_one_its_manifest_describes(starter):
    blob = starter.path.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == starter.sha256
    assert len(blob) == starter.bytes <= MAX_BYTES
    header, _, _, _ = read_header(starter.path)
    assert {entry["dtype"] for entry in header.values()} == {"F16"}
    assert starter.build == "python benchmarks/starter.py" and (REPO / "benchmarks" / "starter.py").exists()


def test_the_starter_scores_its_recorded_validation_loss(starter):
    """Recomputed on the bundled corpus's validation split, exactly as benchmarks/starter.py scored it."""
    loaded = load_run("shakespeare")
    corpus = encode_file(REPO / "data" / "tinyshakespeare.txt", loaded.data_cfg)
    assert corpus.sha256 == loaded.corpus_sha256 and corpus.vocab == loaded.vocab
    assert len(corpus.ids) == starter.corpus_chars and loaded.step == starter.steps
    torch.set_num_threads(2)
    try:
        val = evaluate_ids(loaded.model, corpus.split()[1], segment=loaded.eval_segment, precision="fp32").loss
    finally:
        torch.set_num_threads(1)
    assert val == pytest.approx(starter.val_loss, abs=1e-4)
    assert loaded.val_loss == pytest.approx(starter.val_loss, abs=1e-6) and val < 1.7
    assert loaded.meta.corpus_path is None and loaded.meta.state_sha256 is None  # nothing of the building machine


@pytest.mark.parametrize("dtype, name", [(torch.float16, "F16"), (torch.bfloat16, "BF16"), (torch.float32, "F32")])
def test_a_model_file_with_16_bit_weights_loads_them_as_fp32(tmp_path, dtype, name):
    torch.manual_seed(0)
    cfg = ModelConfig(model="gru", layers=2, hidden=6, embed=4)
    model = CharRNN(cfg, 5)
    vocab = Vocab(tuple(map(ord, "abcde")))
    path = tmp_path / "m.safetensors"
    path.write_bytes(model_bytes(model, vocab, DataConfig(), step=3, val_loss=1.5, corpus_sha256="x", dtype=dtype))
    assert {entry["dtype"] for entry in read_header(path)[0].values()} == {name}
    loaded = load_model(path)
    for key, value in model.state_dict().items():
        got = loaded.model.state_dict()[key]
        assert got.dtype == torch.float32 and torch.equal(got, value.to(dtype).float()), key
    assert loaded.step == 3 and loaded.val_loss == 1.5


def test_a_16_bit_tensor_with_the_offsets_of_fp32_is_refused(tmp_path):
    cfg = ModelConfig(model="rnn", layers=1, hidden=4, embed=4)
    blob = model_bytes(
        CharRNN(cfg, 3), Vocab(tuple(map(ord, "abc"))), DataConfig(), step=0, val_loss=None, corpus_sha256=""
    )
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["head.bias"]["dtype"] = "F16"  # the bytes are still 4 a weight: the offsets no longer fit the dtype
    raw = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + blob[8 + n :])
    with pytest.raises(CheckpointError, match="bad data offsets"):
        load_model(path)


def test_an_existing_path_wins_over_a_bundled_name(tmp_path, tiny_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_run("shakespeare").path == bundled_path("shakespeare")
    tiny_run.rename(tmp_path / "shakespeare")
    assert load_run("shakespeare").path.parent.resolve() == (tmp_path / "shakespeare").resolve()


def test_an_unknown_name_is_one_error_line_naming_charnn_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["sample", "shakespear"], ["eval", "shakespear"], ["train", "x.txt", "--init-from", "shakespear"]):
        if args[0] == "train":
            (tmp_path / "x.txt").write_text("abc " * 50)
        line = one_error_line(invoke(*args))
        assert line == (
            "error: shakespear: no such run directory, checkpoint file or bundled model (`charnn models` lists them)"
        )


def test_eval_of_a_bundled_model_asks_for_a_file(tmp_path):
    line = one_error_line(invoke("eval", "shakespeare"), None)
    assert line == "error: shakespeare is a model shipped with charnn, not a run; pass a FILE to score"
    (tmp_path / "t.txt").write_text("ROMEO:\nWhat say you?\n")
    res = invoke("eval", "shakespeare", tmp_path / "t.txt", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["chars"] == 20


def test_charnn_models_lists_the_starter(starter):
    res = invoke("models")
    assert res.exit_code == 0 and res.stderr == ""
    (line,) = res.stdout.splitlines()
    assert line.startswith("shakespeare  LSTM ") and f"validation {starter.val_loss:.4f} nats/char" in line
    row = json.loads(invoke("models", "--json").stdout)
    assert row["sha256"] == starter.sha256 and row["model"].startswith("LSTM")


def test_charnn_sample_shakespeare_needs_no_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here
    res = invoke("sample", "shakespeare", "--prime", "ROMEO:", "--length", "40", "--seed", "1")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("ROMEO:") and len(res.stdout.rstrip("\n")) == 46


def test_fine_tuning_from_the_starter_extends_its_vocabulary(tmp_path):
    from charnn.training.train import train

    corpus = tmp_path / "new.txt"
    corpus.write_text("Caf\u00e9 au lait, s'il vous pla\u00eet. " * 40, encoding="utf-8")
    _, cfg, data = tiny_configs(max_iters=2, eval_every=2, sample_length=0)
    starter = load_run("shakespeare")
    train(
        corpus,
        model_cfg=starter.model_cfg,
        train_cfg=cfg,
        data_cfg=data,
        out_dir=tmp_path / "ft",
        init_from="shakespeare",
    )
    tuned = load_run(tmp_path / "ft")
    old = len(starter.vocab)
    assert tuned.vocab.symbols[:old] == starter.vocab.symbols
    assert [chr(c) for c in tuned.vocab.symbols[old:]] == ["\u00e9", "\u00ee"]
    record = json.loads((tmp_path / "ft" / "config.json").read_text())["init_from"]
    assert record["sha256"] == hashlib.sha256(bundled_path("shakespeare").read_bytes()).hexdigest()


def test_the_wheel_ships_every_bundled_file():
    """pyproject's package data names each file under charnn/store/models/ (a wheel without them has no starter)."""
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["charnn"]
    folder = REPO / "charnn" / "store" / "models"
    shipped = {p for pattern in globs for p in (REPO / "charnn").glob(pattern)}
    assert set(folder.iterdir()) <= shipped and len(list(folder.iterdir())) >= 2


def test_the_plan_hints_at_the_starter_for_a_small_corpus_in_its_characters():
    from charnn.training.plan import CorpusFacts, Hardware, PlanRequest, make_plan

    def hint(facts, request=None):
        lines = make_plan(facts, Hardware(), request or PlanRequest()).lines
        return [line for line in lines if line.startswith("hint:")]

    (line,) = hint(CorpusFacts(45_000, 5_000, 60, starter_coverage=0.9995))
    assert line.startswith("hint: the bundled starter knows 99.9% of these characters") and "--init-from" in line
    (line,) = hint(CorpusFacts(45_000, 5_000, 60, starter_coverage=1.0))
    assert line.startswith("hint: the bundled starter knows 100% of these characters")
    assert hint(CorpusFacts(45_000, 5_000, 60, starter_coverage=0.9)) == []  # another alphabet
    assert hint(CorpusFacts(45_000, 5_000, 60)) == []  # not looked at
    assert hint(CorpusFacts(450_000, 50_000, 60, starter_coverage=1.0)) == []  # not small
    for request in (
        PlanRequest(preset="tiny"),
        PlanRequest(model={"hidden": 64}),
        PlanRequest(init_model=ModelConfig()),
    ):
        assert hint(CorpusFacts(45_000, 5_000, 60, starter_coverage=1.0), request) == []


def test_starter_coverage_counts_the_training_characters(tmp_path):
    from charnn.training.finetune import starter_coverage

    path = tmp_path / "t.txt"
    path.write_text("abc" * 30 + "\u00e9" * 10, encoding="utf-8")  # 90 of 100 in tiny shakespeare's alphabet
    corpus = encode_file(path, DataConfig())
    assert starter_coverage(corpus.ids, corpus) == pytest.approx(0.9)
    in_bytes = encode_file(path, DataConfig(bytes_mode=True))
    assert starter_coverage(in_bytes.ids, in_bytes) is None  # a vocabulary of bytes: another kind of model


def test_charnn_train_plan_shows_the_hint_and_never_switches(tiny_corpus):
    res = invoke("train", tiny_corpus, "--plan", "--json")
    plan = json.loads(res.stdout)
    assert plan["lines"][-1].startswith("hint: the bundled starter knows 100% of these characters")
    assert "fine-tuning" not in plan["lines"][0] and plan["schedule"]["lr"] == CPU_LR  # a new model, as without it
