"""The engine's lone-stream path (charnn.serve.lone): one stream alone steps as `charnn sample` steps one, the same
arithmetic as the batched step to the bit, so a request keeps its seed's text when others join and leave around it;
cancelling, a failed draw, draining and closing while a stream is alone."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from charnn.config import SampleConfig
from charnn.errors import SamplingError
from charnn.sampling.draw import NON_FINITE
from charnn.sampling.generate import sample_text
from charnn.sampling.stepper import MEASURED, Tuning
from charnn.serve import lone
from charnn.serve.engine import Engine
from charnn.serve.jobs import ServerBusy
from charnn.serve.rows import RowBatch, warm
from tests.test_serve import VOCAB, Collector, job_of, model_of, run_jobs

TUNINGS = {
    "measured": MEASURED,
    "split": Tuning(split_min_weight=0),  # the upper layers' weights in two halves, in alternating order
    "packed": Tuning(pack_min_weight=0, pack_min_rows=1),  # oneDNN's packed weights, where it has them
}


def charnn_sample(model, cfg: SampleConfig) -> list[str]:
    """`charnn sample`'s texts for `cfg`, the echoed prime cut off."""
    return [text[len(cfg.prime or "") :] for text in sample_text(model, VOCAB, cfg)]


@pytest.mark.hw
@pytest.mark.parametrize("tuning", TUNINGS.values(), ids=TUNINGS.keys())
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@torch.inference_mode()
def test_step_one_equals_the_batched_step_to_the_bit(kind, tuning):
    model = model_of(kind)
    alone, batched = (RowBatch(model, (1, 2), tuning=tuning) for _ in range(2))
    _, hidden = warm(model, [[0, 5, 9]])
    for rows in (alone, batched):
        rows.add(hidden, torch.tensor([3]))
    for i in torch.randint(len(VOCAB), (400,), generator=torch.Generator().manual_seed(0)).tolist():
        assert alone.alone
        batched.feed(torch.tensor([i]))
        assert torch.equal(alone.step_one(i), batched.step())


def test_one_request_alone_takes_the_one_stream_path():
    model = model_of()
    cfg = SampleConfig(length=500, seed=3, temperature=0.8, prime="First")
    for sizes, alone_steps in (((1, 2, 4), cfg.length - 1), ((2,), 0)):  # no one-row stepper: the batched path
        sink, steps = Collector(), []
        engine = Engine(model, VOCAB, sink, max_batch=4, sizes=sizes, on_step=steps.append)
        job = job_of(cfg)
        run_jobs(engine, [job])
        assert sink.texts[id(job)] == charnn_sample(model, cfg) and sink.ends[id(job)] == "complete"
        assert engine.alone_steps == alone_steps and len(steps) == cfg.length - 1  # the first from the prime


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_lone_stream_keeps_its_text_while_another_joins_and_leaves(kind):
    """Alone, then batched with a request that joins mid-generation, then alone again: each gets the text it gets
    alone with its seed."""
    model = model_of(kind)
    first = SampleConfig(length=20_000, seed=4, temperature=0.9, prime="First")
    second = SampleConfig(length=300, seed=7, top_k=5, prime="You", num_samples=2)
    sink, steps = Collector(), []
    engine = Engine(model, VOCAB, sink, max_batch=8, on_step=steps.append)
    jobs = [job_of(first), job_of(second)]
    run_jobs(engine, jobs, stagger=True)
    for cfg, job in zip((first, second), jobs, strict=True):
        assert sink.texts[id(job)] == charnn_sample(model, cfg) and sink.ends[id(job)] == "complete", cfg
    assert [size for size, _ in itertools.groupby(steps)] == [1, 3, 1]  # alone, with the second's 2 rows, alone
    assert engine.alone_steps == steps.count(1) and steps.count(3) == second.length - 1


def start_alone(engine: Engine, sink: Collector, *jobs) -> None:
    """Start the engine, submit the jobs, wait for the first one's first text."""
    engine.start()
    for job in jobs:
        engine.submit(job)
    assert sink.first.wait(10)


def test_a_cancelled_lone_stream_ends_and_the_next_request_runs():
    model = model_of()
    sink = Collector()
    engine = Engine(model, VOCAB, sink, max_batch=4)
    endless = job_of(SampleConfig(length=10**7, seed=1))
    try:
        start_alone(engine, sink, endless)
        time.sleep(0.1)
        endless.cancelled = True
        assert endless.handle.wait(2) and sink.ends[id(endless)] == "cancelled"
        assert engine.streams == 0 and engine.alone_steps > 0
        cfg = SampleConfig(length=200, seed=2)
        after = job_of(cfg)
        engine.submit(after)
        assert after.handle.wait(10) and sink.texts[id(after)] == charnn_sample(model, cfg)
    finally:
        engine.close()
        engine.join(5)


def test_a_failed_draw_alone_ends_that_request_with_its_error(monkeypatch):
    calls = itertools.count()

    def overflowing(running, logits):
        if next(calls) == 50:
            raise SamplingError(NON_FINITE)
        return draw(running, logits)

    draw = lone.draw_one
    monkeypatch.setattr(lone, "draw_one", overflowing)
    model = model_of()
    sink = Collector()
    failing, cfg = job_of(SampleConfig(length=10**6, seed=1)), SampleConfig(length=100, seed=2)
    after = job_of(cfg)
    run_jobs(Engine(model, VOCAB, sink, max_batch=1), [failing, after])
    assert sink.ends[id(failing)] == "error" and len(sink.texts[id(failing)][0]) == 51  # the prime's, then 50
    assert sink.ends[id(after)] == "complete" and sink.texts[id(after)] == charnn_sample(model, cfg)


def test_draining_lets_a_lone_stream_finish_and_closing_ends_one():
    model = model_of()
    sink = Collector()
    engine = Engine(model, VOCAB, sink, max_batch=1)
    cfg = SampleConfig(length=20_000, seed=5, temperature=0.8)
    running, waiting = job_of(cfg), job_of(SampleConfig(length=10, seed=6))
    try:
        start_alone(engine, sink, running, waiting)  # the second waits for the only row
        engine.drain()
        assert waiting.handle.wait(2) and sink.ends[id(waiting)] == "shutdown"
        assert running.handle.wait(20) and sink.ends[id(running)] == "complete"
        assert sink.texts[id(running)] == charnn_sample(model, cfg) and engine.alone_steps == cfg.length - 1
        with pytest.raises(ServerBusy, match="shutting down"):
            engine.submit(job_of(SampleConfig(length=5)))
    finally:
        engine.close()
        engine.join(5)
    sink = Collector()
    engine = Engine(model, VOCAB, sink, max_batch=1)
    endless = job_of(SampleConfig(length=10**7, seed=1))
    start_alone(engine, sink, endless)
    time.sleep(0.1)
    started = time.monotonic()
    engine.close()
    engine.join(5)
    assert endless.handle.is_set() and sink.ends[id(endless)] == "shutdown" and time.monotonic() - started < 1
