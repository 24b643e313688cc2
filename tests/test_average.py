"""--average: the weights' moving average is what a run validates, saves and samples; the weights as trained
travel in the training state, so a resumed run continues exactly; without it nothing changes."""

import dataclasses
import json
import math

import torch

from charnn.config import ModelConfig
from charnn.evaluate import evaluate_validation
from charnn.model import CharRNN
from charnn.store.checkpoint import load_model
from charnn.store.rundir import list_checkpoints, load_run
from charnn.store.trainstate import load_state, state_path
from charnn.training.average import WeightAverage
from charnn.training.train import train
from tests.conftest import straight_and_resumed, tiny_configs


def test_the_average_follows_its_decay_with_a_warmup():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(layers=1, hidden=4, embed=3), 5)
    average = WeightAverage(model, 0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))  # 0.1, 0.18, ... then 0.9 from step 80: the warmup holds here
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    for got, want in zip(average.tensors, expected, strict=True):
        torch.testing.assert_close(got, want)
    trained = [p.detach().clone() for p in model.parameters()]
    with average.applied(model) as weights:
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), average.tensors, strict=True))
        assert all(torch.equal(w, t) for w, t in zip(weights.values(), trained, strict=True))
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained, strict=True))  # given back


def test_a_run_saves_and_validates_the_average_and_keeps_the_trained_weights(tmp_path, tiny_corpus):
    model_cfg, cfg, data = tiny_configs(average=0.9)
    result = train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "a")
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["val_loss"] for r in rows if r["kind"] == "eval"}
    for path in list_checkpoints(result.run_dir):
        loaded = load_model(path)
        assert math.isclose(evaluate_validation(loaded).loss, logged[loaded.step], rel_tol=1e-6)
        trained = load_state(state_path(path))["trained"]
        saved = loaded.model.state_dict()
        assert set(trained) == set(saved)
        assert not all(torch.equal(trained[k], saved[k]) for k in saved)  # the file holds the average
    plain = dataclasses.replace(cfg, average=0.0)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=plain, data_cfg=data, out_dir=tmp_path / "b")
    path = list_checkpoints(tmp_path / "b")[-1]
    assert load_state(state_path(path))["trained"] is None  # without the option, the file holds the weights


def test_resume_with_the_average_equals_uninterrupted(tmp_path, tiny_corpus):
    a, b = (load_run(d, which="latest") for d in straight_and_resumed(tmp_path, tiny_corpus, average=0.8))
    assert all(torch.equal(a.model.state_dict()[k], b.model.state_dict()[k]) for k in a.model.state_dict())
    ta, tb = (load_state(state_path(x.path))["trained"] for x in (a, b))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
