"""Fine-tuning from a run: the vocabulary extends the run's, old rows are copied bit-exactly, new symbols get
fresh rows, the plan picks a fine-tuning schedule, the run records where it started, and it resumes exactly."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from charnn.config import ModelConfig, SampleConfig
from charnn.data import Vocab, encode_file, extend_vocab
from charnn.errors import ConfigError, VocabularyError
from charnn.evaluate import evaluate_validation
from charnn.model import CharRNN
from charnn.report.record import config_tables
from charnn.sampling.generate import sample_text
from charnn.store.rundir import load_run
from charnn.training.choices import FINETUNE_LR_FACTOR
from charnn.training.finetune import load_start, start_corpus, start_weights
from charnn.training.plan import CorpusFacts, Hardware, PlanRequest, make_plan
from charnn.training.train import train
from tests.conftest import TINY_TEXT, invoke, tiny_configs

CPU = Hardware("cpu", cores=2)
BASE = ModelConfig(model="lstm", layers=2, hidden=32, embed=16)
NEW_TEXT = ("Élan vital? Qué tal?\n" + TINY_TEXT[:400]) * 8  # 'Q', 'É' and 'é' are not in TINY_TEXT


@pytest.fixture
def new_corpus(tmp_path):
    path = tmp_path / "new.txt"
    path.write_text(NEW_TEXT, encoding="utf-8")
    return path


# --- the vocabulary --------------------------------------------------------------------------------------


def test_extended_vocabulary_keeps_old_ids_and_appends_new_symbols_sorted():
    base = Vocab(tuple(map(ord, "abz")))
    new = Vocab(tuple(map(ord, "Ybcy")))
    ext = extend_vocab(base, new)
    assert ext.symbols == tuple(map(ord, "abzYcy"))  # not sorted: ids are positions
    assert ext.encode("zaYy").tolist() == [2, 0, 3, 5]
    assert ext.decode([5, 1]) == "yb" and Vocab.from_json(ext.to_json()) == ext
    with pytest.raises(VocabularyError, match="unique"):
        Vocab((97, 98, 97))
    with pytest.raises(VocabularyError, match="--bytes must match"):
        extend_vocab(base, Vocab((1, 2), bytes_mode=True))


def test_corpus_in_an_extended_vocabulary_decodes_to_the_same_text(new_corpus, tmp_path):
    from charnn.store.corpus_cache import load_corpus

    own = load_corpus(new_corpus, encode_file(new_corpus, _data()).data, cache_dir=tmp_path / "cache")  # memmap
    base = Vocab(tuple(map(ord, "zyx \n")))
    ext = own.in_vocab(extend_vocab(base, own.vocab))
    assert ext.vocab.symbols[:5] == base.symbols and ext.vocab.decode(ext.ids) == NEW_TEXT
    assert isinstance(ext.ids, np.ndarray) and ext.sha256 == own.sha256


def _data():
    from charnn.config import DataConfig

    return DataConfig()


# --- the plan --------------------------------------------------------------------------------------------


def test_plan_fine_tunes_with_a_fraction_of_the_lr_a_short_warmup_and_early_stopping():
    facts = CorpusFacts(45_000, 5_000, 70)
    scratch = make_plan(facts, CPU)
    tuned = make_plan(facts, CPU, PlanRequest(init_model=BASE))
    assert tuned.model == BASE  # the starting model's shape and options, not the tier's
    assert tuned.train.lr == pytest.approx(scratch.train.lr * FINETUNE_LR_FACTOR) and FINETUNE_LR_FACTOR < 1
    assert tuned.train.lr == pytest.approx(1e-3)  # the CPU rate docs/finetune.md measured, whatever the new model's
    assert tuned.train.warmup_iters <= 10 < scratch.train.warmup_iters
    assert tuned.train.patience is not None and tuned.train.max_iters < scratch.train.max_iters
    assert (tuned.train.batch_size, tuned.train.seq_len) == (scratch.train.batch_size, scratch.train.seq_len)
    assert "fine-tuning the trained LSTM 2x32" in tuned.lines[0]
    assert not {"model", "hidden", "layers", "embed", "dropout"} & set(tuned.chosen)


def test_plan_fine_tune_flags_win_and_a_conflicting_model_flag_is_refused():
    facts = CorpusFacts(45_000, 5_000, 70)
    tuned = make_plan(
        facts, CPU, PlanRequest(model={"hidden": 32, "dropout": 0.2}, train={"lr": 5e-4}, init_model=BASE)
    )
    assert tuned.train.lr == 5e-4 and tuned.model == dataclasses.replace(BASE, dropout=0.2)
    with pytest.raises(ConfigError) as err:
        make_plan(facts, CPU, PlanRequest(model={"hidden": 64}, init_model=BASE))
    assert str(err.value) == (
        "--hidden 64 conflicts with the model of --init-from, trained with --hidden 32;"
        " a fine-tuned run keeps its model"
    )
    with pytest.raises(ConfigError, match="--preset cannot be combined with --init-from"):
        make_plan(facts, CPU, PlanRequest(preset="tiny", init_model=BASE))


# --- the weights ---------------------------------------------------------------------------------------------


def test_old_rows_are_copied_bit_exactly_and_new_rows_are_fresh(tiny_run, new_corpus):
    start = load_start(tiny_run)
    data = start_corpus(encode_file(new_corpus, _data()), start)
    old_v = len(start.loaded.vocab)
    assert data.vocab.symbols[:old_v] == start.loaded.vocab.symbols
    assert [chr(c) for c in data.vocab.symbols[old_v:]] == ["Q", "É", "é"]
    torch.manual_seed(0)
    model = CharRNN(start.loaded.model_cfg, len(data.vocab))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    start_weights(model, start)
    old, new = start.loaded.model.state_dict(), model.state_dict()
    for name, value in old.items():
        rows = value.shape[0]
        assert torch.equal(new[name][:rows], value), name
        assert torch.equal(new[name][rows:], fresh[name][rows:]), name  # the new symbols' rows: CharRNN's init
    assert new["embed.weight"].shape[0] == old_v + 3
    assert new["head.bias"][old_v:].abs().sum() == 0 and new["embed.weight"][old_v:].std() > 0.3


def test_fine_tuned_run_records_its_start_and_samples_a_new_character(tiny_run, new_corpus, tmp_path):
    model_cfg, cfg, data = tiny_configs(
        max_iters=1,
        lr=1e-8,
        weight_decay=0.0,
        sample_length=0,
        eval_every=1,
        calibrate=False,  # weights as trained
    )
    out = tmp_path / "ft"
    train(new_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=out, init_from=tiny_run)
    base, tuned = load_run(tiny_run), load_run(out)
    old_v = len(base.vocab)
    assert tuned.vocab.symbols[:old_v] == base.vocab.symbols and len(tuned.vocab) == old_v + 3
    # one step of AdamW at lr 1e-8 moves a weight by about 1e-8: the old rows are the base's, the new ones fresh
    a, b = base.model.state_dict(), tuned.model.state_dict()
    assert all(torch.allclose(b[k][: a[k].shape[0]], a[k], atol=1e-6) for k in a)
    config = json.loads((out / "config.json").read_text())
    record = config["init_from"]
    assert record["run"] == str(tiny_run.resolve()) and record["step"] == base.step
    assert record["checkpoint"] == base.path.name and len(record["sha256"]) == 64
    assert json.loads((out / "vocab.json").read_text())["symbols"] == list(tuned.vocab.symbols)
    assert "init_from" in config_tables(config) and record["sha256"] in config_tables(config)
    text = sample_text(tuned.model, tuned.vocab, SampleConfig(prime="Qué", length=20, seed=1))[0]
    assert text.startswith("Qué") and len(text) == 23
    # the validation split is scored in the model's ids, not the corpus's own
    assert evaluate_validation(tuned).loss == pytest.approx(tuned.val_loss, rel=1e-4)


def test_a_corpus_the_run_already_covers_keeps_the_same_ids(tiny_run, tmp_path):
    sub = tmp_path / "sub.txt"
    sub.write_text("All:\nSpeak, speak.\n" * 60, encoding="utf-8")
    own = encode_file(sub, _data())
    base = load_run(tiny_run)
    assert own.vocab != base.vocab  # its own ids would mean other characters (torch-rnn#147)
    model_cfg, cfg, data = tiny_configs(max_iters=2, sample_length=0, eval_every=2)
    train(sub, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "ft", init_from=tiny_run)
    assert load_run(tmp_path / "ft").vocab == base.vocab


def test_resume_of_a_fine_tuned_run_is_exact(tiny_run, new_corpus, tmp_path):
    model_cfg, cfg, data = tiny_configs(max_iters=12, min_lr=1e-2, eval_every=6, sample_length=0)
    train(new_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "a", init_from=tiny_run)
    first = dataclasses.replace(cfg, max_iters=7)
    train(new_corpus, model_cfg=model_cfg, train_cfg=first, data_cfg=data, out_dir=tmp_path / "b", init_from=tiny_run)
    res = invoke("train", "--resume", tmp_path / "b", "--max-iters", 12, "--quiet", "--cache-dir", tmp_path / "c")
    assert res.exit_code == 0, res.output
    a = load_run(tmp_path / "a", which="latest")
    b = load_run(tmp_path / "b", which="latest")
    assert a.step == b.step == 12 and a.vocab == b.vocab
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())
    assert json.loads((tmp_path / "b" / "config.json").read_text())["init_from"]["step"] == load_run(tiny_run).step


# --- the command line -----------------------------------------------------------------------------------


def test_cli_conflicting_model_flag_is_one_error_line(tiny_run, new_corpus, tmp_path):
    res = invoke("train", new_corpus, "--init-from", tiny_run, "--hidden", 64, "--out", tmp_path / "x", "--quiet")
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        "error: --hidden 64 conflicts with the model of --init-from, trained with --hidden 32;"
        " a fine-tuned run keeps its model"
    )
    assert not (tmp_path / "x").exists()
    res = invoke("train", new_corpus, "--init-from", tiny_run, "--resume", tiny_run, "--quiet")
    assert res.exit_code == 2 and res.stderr.startswith("error: --init-from starts a new run")


def test_cli_plan_and_train_from_a_run(tiny_run, new_corpus, tmp_path):
    res = invoke("train", new_corpus, "--init-from", tiny_run, "--hidden", 32, "--plan")
    assert res.exit_code == 0, res.output
    assert "fine-tuning the trained LSTM 2x32" in res.stdout
    res = invoke(
        "train",
        new_corpus,
        "--init-from",
        tiny_run,
        "--out",
        tmp_path / "ft",
        "--max-iters",
        3,
        "--eval-every",
        3,
        "--sample-length",
        0,
        "--device",
        "cpu",
        "--no-cache",
    )
    assert res.exit_code == 0, res.output
    assert "plan: starting from" in res.stderr and "3 new symbol(s): 'Q', 'É', 'é'" in res.stderr
    res = invoke("sample", tmp_path / "ft", "--prime", "É", "--length", 5, "--seed", 2)
    assert res.exit_code == 0 and res.stdout.startswith("É")
