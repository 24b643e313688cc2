"""The engine's batched windows (charnn.serve.window): a job reads its uniforms a window at a time and a symbol at a
time in any mix and gets `charnn sample`'s, across the blocks they are drawn in; long batched requests keep their
seed's text; a failed draw ends its request with the text drawn before it, and the others run on."""

from __future__ import annotations

import itertools

import pytest
import torch

from charnn.config import SampleConfig
from charnn.errors import SamplingError
from charnn.sampling import draw as drawing
from charnn.serve import window
from charnn.serve.engine import Engine
from charnn.serve.jobs import Job, Running
from tests.test_serve import VOCAB, Collector, job_of, model_of, run_jobs
from tests.test_serve_lone import charnn_sample


def test_uniforms_read_in_windows_and_singly_are_charnn_samples_blocks():
    length, n = 2 * drawing.UNIFORM_BLOCK + 700, 2
    gen = drawing.seeded_generator(11)
    want, left = [], length
    while left:
        want.append(drawing.uniforms(gen, left, n))
        left -= want[-1].shape[0]
    want = torch.cat(want)  # (length, n)
    running = Running(Job(SampleConfig(length=length, seed=11, num_samples=n), [0]), VOCAB)
    sizes = itertools.cycle([1, 32, 7, 4000, 5, 3000, 2])
    while running.done < length:
        size = next(sizes)
        if size == 1:  # a symbol alone, as a lone stream reads it
            got = torch.tensor([running.next_uniforms()])
        else:
            got = running.uniforms(size)
        assert got.shape == (min(size, length - running.done), n)
        assert torch.equal(got, want[running.done : running.done + got.shape[0]])
        running.extend([[0] * got.shape[0]] * n)
    assert len(running.blocks) <= 2  # the blocks behind done are let go


def test_long_batched_requests_cross_uniform_blocks_with_their_seeds_text():
    model = model_of()
    configs = [
        SampleConfig(length=drawing.UNIFORM_BLOCK + 300, seed=3, temperature=0.9, num_samples=2, prime="First"),
        SampleConfig(length=drawing.UNIFORM_BLOCK + 50, seed=4, top_k=4),
        SampleConfig(length=500, seed=5, top_p=0.8, num_samples=3),
    ]
    sink = Collector()
    jobs = [job_of(cfg) for cfg in configs]
    run_jobs(Engine(model, VOCAB, sink, max_batch=8), jobs)
    for cfg, job in zip(configs, jobs, strict=True):
        assert sink.texts[id(job)] == charnn_sample(model, cfg) and sink.ends[id(job)] == "complete", cfg


@pytest.mark.parametrize("others", [0, 1])
def test_a_failed_batched_draw_ends_that_request_with_its_text_so_far(monkeypatch, others):
    failing_cfg = SampleConfig(length=10**6, seed=1, top_k=3, num_samples=2)
    calls = itertools.count()

    def overflowing(cfg, logits, uniform, *, out=None):
        if cfg == failing_cfg and next(calls) == 49:  # the 50th batched draw: the 51st symbol
            raise SamplingError(drawing.NON_FINITE)
        return draw(cfg, logits, uniform, out=out)

    draw = window.draw
    monkeypatch.setattr(window, "draw", overflowing)
    model = model_of()
    cfg = SampleConfig(length=300, seed=2, temperature=0.8)
    failing, after = job_of(failing_cfg), job_of(cfg)
    sink = Collector()
    run_jobs(Engine(model, VOCAB, sink, max_batch=3 if others else 2), [failing, after])
    assert sink.ends[id(failing)] == "error" and sink.texts[id(failing)] == [
        text[:50] for text in charnn_sample(model, SampleConfig(length=50, seed=1, top_k=3, num_samples=2))
    ]  # the first from the prime, then 49 batched
    assert sink.ends[id(after)] == "complete" and sink.texts[id(after)] == charnn_sample(model, cfg)
