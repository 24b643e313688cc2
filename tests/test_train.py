"""Training: it learns, it logs, it checkpoints, it resumes exactly; a non-finite loss skips the step (and
ten in a row stop the run, exit 3) and running out of memory exits 5, both leaving the checkpoints as
they were."""

import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.errors import CheckpointError, DeviceError, NonFiniteLossError
from charnn.evaluate import evaluate_validation
from charnn.model import CharRNN
from charnn.runtime import native_bf16_cpu
from charnn.sampling.generate import sample_text
from charnn.store.checkpoint import load_model
from charnn.store.rundir import list_checkpoints, load_run
from charnn.training.step import load_optimizer_state, make_optimizer
from charnn.training.train import learning_rate, resume_configs, train
from tests.conftest import (
    REPO,
    SMALL_MODEL,
    corpus_of,
    invoke,
    one_error_line,
    small_train,
    snapshot,
    straight_and_resumed,
    tiny_configs,
    weights_of,
)

setup_mod = sys.modules["charnn.training.setup"]  # where a run builds its optimizer
step_mod = sys.modules["charnn.training.step"]  # where the training step calls lm_loss


def test_learns_a_periodic_text_and_greedy_sampling_reproduces_it(tmp_path):
    period = "abcdefgh\n"
    corpus = tmp_path / "periodic.txt"
    corpus.write_text(period * 300)
    cfg = TrainConfig(
        batch_size=8,
        seq_len=16,
        lr=1e-2,
        warmup_iters=0,
        max_iters=150,
        eval_every=150,
        sample_length=0,
        device="cpu",
        seed=0,
    )
    result = train(corpus, model_cfg=ModelConfig(layers=1, hidden=32, embed=8), train_cfg=cfg, out_dir=tmp_path / "run")
    assert result.final_val_loss < 0.05
    loaded = load_run(result.run_dir)
    text = sample_text(loaded.model, loaded.vocab, SampleConfig(prime="abc", greedy=True, length=36))[0]
    assert text == ("abcdefgh\n" * 5)[:39]


def test_run_directory_metrics_and_samples(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "vocab.json", "metrics.jsonl", "samples.jsonl"} <= names
    assert [p.name for p in list_checkpoints(tiny_run)] == ["step-00000010.safetensors", "step-00000020.safetensors"]
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert all({"elapsed", "train_loss", "lr", "grad_norm", "chars_per_s"} <= set(r) for r in train_rows)
    samples = [json.loads(line) for line in (tiny_run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [10, 20] and all(len(s["text"]) == 20 for s in samples)


def test_eval_of_the_run_equals_the_logged_val_loss(tiny_run):
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["val_loss"] for r in rows if r["kind"] == "eval"}
    for path in list_checkpoints(tiny_run):
        loaded = load_model(path)
        assert math.isclose(evaluate_validation(loaded).loss, logged[loaded.step], rel_tol=1e-6)


def test_saved_and_loaded_model_gives_identical_logits(tiny_run):
    loaded = load_run(tiny_run, which="latest")
    again = load_model(loaded.path)
    x = torch.randint(len(loaded.vocab), (2, 9))
    assert torch.equal(loaded.model(x)[0], again.model(x)[0])


def test_resume_after_n_steps_equals_uninterrupted(tmp_path, tiny_corpus):
    straight, resumed = straight_and_resumed(tmp_path, tiny_corpus)
    a = load_run(straight, which="latest").model.state_dict()
    b = load_run(resumed, which="latest").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_state_resets_equals_uninterrupted(tmp_path, tiny_corpus):
    """--state-reset zeroes streams drawn from (seed, step): a resumed run zeroes the same ones at the same steps."""
    straight_and_resumed(tmp_path, tiny_corpus, state_reset=0.3)
    model_cfg, cfg, data = tiny_configs(max_iters=12, min_lr=1e-2, eval_every=6, sample_length=0, state_reset=0.3)
    plain = dataclasses.replace(cfg, state_reset=0.0)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=plain, data_cfg=data, out_dir=tmp_path / "c")
    a, b, c = (load_run(tmp_path / d, which="latest").model.state_dict() for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the resets changed what was learnt


def test_resume_with_reshuffle_equals_uninterrupted(tmp_path, tiny_corpus):
    """--reshuffle draws each epoch's order from (seed, epoch): a resumed run reads the same text at the same steps.
    At 16 x 64 the tiny corpus is two steps an epoch, so the 12 steps cross five epochs."""
    shape = dict(batch_size=16, seq_len=64, reshuffle=64)
    straight_and_resumed(tmp_path, tiny_corpus, **shape)
    model_cfg, cfg, data = tiny_configs(max_iters=12, min_lr=1e-2, eval_every=6, sample_length=0, **shape)
    plain = dataclasses.replace(cfg, reshuffle=0)
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=plain, data_cfg=data, out_dir=tmp_path / "c")
    a, b, c = (load_run(tmp_path / d, which="latest").model.state_dict() for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the new orders changed what was learnt


def _longest_run(text: str) -> int:
    """The longest run of one character in `text`."""
    return max(len(m.group()) for m in re.finditer(r"(.)\1*", text, re.DOTALL))


def test_with_state_resets_greedy_text_after_a_prime_never_repeats_one_character(tmp_path):
    """A model that learnt to start from the zero state continues a prime sensibly. The same training without
    --state-reset (seed 4, fp32) fell into runs of one character ('&' 188-194 times) after 5 of these 8 primes:
    started cold, it had never seen that state since its first step."""
    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text((REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000])
    cfg = TrainConfig(
        batch_size=16,
        seq_len=64,
        lr=3e-3,
        warmup_iters=20,
        max_iters=400,
        eval_every=400,
        sample_length=0,
        device="cpu",
        precision="fp32",
        seed=4,
        state_reset=0.1,
    )
    model_cfg = ModelConfig(layers=1, hidden=128, embed=32)
    loaded = load_run(train(corpus, model_cfg=model_cfg, train_cfg=cfg, out_dir=tmp_path / "run").run_dir)
    for prime in ("KING", "QUEEN", "DUKE", "ROMEO", "GLOUCESTER", "LADY", "ROMEO:", "CLAUDIO:"):
        text = sample_text(loaded.model, loaded.vocab, SampleConfig(prime=prime, greedy=True, length=200))[0]
        assert _longest_run(text[len(prime) :]) < 8, (prime, text)


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=10)
    assert learning_rate(cfg, 0, 0.0) == 0.1 and learning_rate(cfg, 9, 0.0) == 1.0
    assert math.isclose(learning_rate(cfg, 50, 0.5), 0.55) and math.isclose(learning_rate(cfg, 99, 1.0), 0.1)


def test_time_budget_stops_and_keeps_a_checkpoint(tmp_path, tiny_corpus):
    model_cfg, cfg, data = tiny_configs(max_iters=None, time_budget=1.5, eval_every=10**6, sample_length=0)
    result = train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "r")
    assert result.steps > 0 and result.elapsed < 15 and result.latest.exists()
    assert result.final_val_loss is not None


@pytest.mark.hw
def test_resume_may_change_precision(tmp_path, tiny_corpus):
    """bf16 autocast hands back a bf16 hidden state; the saved state is fp32 so an fp32 resume runs. A CPU
    without native bf16 refuses the bf16 run before making its directory (tests/test_precision.py: each way)."""
    model_cfg, cfg, data = tiny_configs(max_iters=6, eval_every=6, sample_length=0, precision="bf16")
    if not native_bf16_cpu():
        with pytest.raises(DeviceError, match="this CPU has no native bf16"):
            train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "r")
        assert not (tmp_path / "r").exists()
        return
    train(tiny_corpus, model_cfg=model_cfg, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "r")
    more = cfg.__class__(**{**cfg.__dict__, "max_iters": 9, "precision": "fp32"})
    result = train(tiny_corpus, model_cfg=model_cfg, train_cfg=more, data_cfg=data, out_dir=tmp_path / "r", resume=True)
    assert result.steps == 9 and math.isfinite(result.final_val_loss)


def test_validation_of_a_run_without_cache_builds_none(tiny_run, monkeypatch):
    import charnn.store.corpus_cache

    def refuse(*args, **kwargs):
        raise AssertionError("a run trained without a cache must not get one at eval time")

    monkeypatch.setattr(charnn.store.corpus_cache, "load_corpus", refuse)
    assert math.isfinite(evaluate_validation(load_run(tiny_run)).loss)


def test_optimizer_sees_a_tied_matrix_once_and_decays_matrices_only():
    model = CharRNN(ModelConfig(layers=1, hidden=8, embed=8, tie_weights=True, layer_norm=True), 5)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1, device="cpu"), torch.device("cpu"))
    decay, no_decay = ([id(p) for p in g["params"]] for g in opt.param_groups)
    assert len(decay + no_decay) == len(set(decay + no_decay)) == len(list(model.parameters()))
    assert id(model.embed.weight) in decay  # the tied matrix: a matrix, decayed like the untied ones
    assert {id(model.ln.weight), id(model.ln.bias), id(model.head.bias)} <= set(no_decay)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_resume_of_a_run_whose_config_predates_the_model_options(tmp_path):
    old = {
        "model": {"model": "lstm", "layers": 1, "hidden": 8, "embed": 4, "dropout": 0.0},
        "train": {"max_iters": 5},
        "data": {},
        "corpus": {"path": "x.txt"},
    }
    (tmp_path / "config.json").write_text(json.dumps(old))
    model_cfg, train_cfg, _, _ = resume_configs(
        tmp_path, model_overrides={"layer_norm": False, "tie_weights": None}, train_overrides={}, data_overrides={}
    )
    assert (model_cfg.tie_weights, model_cfg.layer_norm, model_cfg.locked_dropout) == (False, False, 0.0)
    assert train_cfg.state_reset == 0.0 != TrainConfig().state_reset  # it trained without resets; it goes on so
    assert train_cfg.average == 0.0 != TrainConfig().average  # and kept no average of its weights
    _, given, _, _ = resume_configs(
        tmp_path, model_overrides={}, train_overrides={"state_reset": 0.2}, data_overrides={}
    )
    assert given.state_reset == 0.2


def test_patience_stops_when_validation_stops_improving(tmp_path):
    """Train on one repeated pattern, validate on another: validation gets worse as training succeeds, so
    --patience 2 stops the run two evaluations after the best, long before max_iters; the best is kept."""
    import random

    rng = random.Random(0)
    corpus = tmp_path / "shift.txt"
    tail = "".join(rng.choice("abcdefgh") for _ in range(2000))
    corpus.write_text("abcdefgh" * 2250 + tail)  # nanoGPT's split: the random tail is the validation text
    cfg = TrainConfig(
        batch_size=8,
        seq_len=16,
        lr=1e-2,
        warmup_iters=0,
        max_iters=400,
        eval_every=10,
        sample_length=0,
        device="cpu",
        seed=0,
        patience=2,
    )
    result = train(corpus, model_cfg=ModelConfig(layers=1, hidden=32, embed=8), train_cfg=cfg, out_dir=tmp_path / "run")
    assert result.stopped_early and result.steps < 400
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in rows if r["kind"] == "eval"]
    best = evals.index(min(evals))
    assert len(evals) == best + 1 + 2  # stopped at the second evaluation without a new best
    assert [r["kind"] for r in rows][-1] == "stop" and rows[-1]["step"] == result.steps
    assert load_run(tmp_path / "run").val_loss == min(evals)  # `best` is still the best one
    state = torch.load(list_checkpoints(tmp_path / "run")[-1].with_suffix(".state.pt"), weights_only=True)
    assert state["evals_since_best"] == 2  # carried into a resume


def test_patience_off_by_default_runs_to_max_iters(tiny_corpus, tmp_path):
    model, cfg, data = tiny_configs()
    assert cfg.patience is None
    result = train(tiny_corpus, model_cfg=model, train_cfg=cfg, data_cfg=data, out_dir=tmp_path / "run")
    assert not result.stopped_early and result.steps == cfg.max_iters


def test_a_resumed_optimizer_keeps_this_devices_fused_kernel():
    """A run saved unfused (MPS, or a CPU run of an earlier version) and resumed where the optimizer is fused
    (CUDA, the CPU) steps with the fused kernel and its found_inf skip."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(layers=1, hidden=8, embed=4), 5)
    saved_from = make_optimizer(model, TrainConfig(device="cpu"), torch.device("mps"))
    assert not any(g["fused"] for g in saved_from.param_groups)
    cpu = make_optimizer(model, TrainConfig(device="cpu"), torch.device("cpu"))
    assert all(g["fused"] for g in cpu.param_groups)  # the CPU's own optimizer is the fused one
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    saved_from.step()
    fused = torch.optim.AdamW(saved_from.param_groups[0]["params"], fused=True)
    fused.add_param_group({"params": saved_from.param_groups[1]["params"]})
    load_optimizer_state(fused, saved_from.state_dict())
    assert all(g["fused"] for g in fused.param_groups)
    assert [g["weight_decay"] for g in fused.param_groups] == [g["weight_decay"] for g in saved_from.param_groups]
    before = [p.detach().clone() for p in model.parameters()]
    fused.found_inf, fused.grad_scale = torch.ones(()), None  # what the CUDA loop sets on a non-finite step
    fused.step()  # unfused, this raised "Expected grad_scale and found_inf to be None"
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))  # the step was skipped
    fused.found_inf = torch.zeros(())
    fused.step()
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_an_optimizer_state_of_another_shape_is_one_clear_error():
    model = CharRNN(ModelConfig(layers=1, hidden=8, embed=4), 5)
    optimizer = make_optimizer(model, TrainConfig(device="cpu"), torch.device("cpu"))
    one_group = torch.optim.AdamW(model.parameters()).state_dict()
    with pytest.raises(CheckpointError, match="2 parameter groups|1 parameter groups"):
        load_optimizer_state(optimizer, one_group)


def test_the_cuda_guard_skips_bad_steps_on_the_device_and_stops_at_a_log_line():
    """CUDA's non-finite guard reads nothing per step: the fused AdamW skips a bad update (found_inf), the bad
    step's streams are zeroed, and the run of bad steps is read at log lines only. The branch follows the device
    argument, so it runs here on CPU tensors with the CPU's fused AdamW."""
    from charnn.training.step import StepStats, _guarded_update

    w = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([w], lr=0.1, fused=True)
    stats = StepStats.on(torch.device("cpu"))
    cfg = TrainConfig(log_every=4, max_bad_steps=2, device="cpu")

    def step(i: int, ok: bool):
        w.grad = torch.full_like(w, 1.0 if ok else math.nan)
        return _guarded_update(
            optimizer, torch.tensor(ok), torch.ones(1, 1, 2), stats, cfg=cfg, device=torch.device("cuda"), step=i
        )

    step(0, True)
    before = w.detach().clone()
    taken, hidden = step(1, False)
    assert taken and torch.equal(w.detach(), before) and not hidden.any()
    step(2, False)  # two bad steps in a row: read at the next log line (4 steps done), not before
    with pytest.raises(NonFiniteLossError, match="2 steps in a row before step 4"):
        step(3, True)


@pytest.mark.parametrize("foreach", [True, False])
def test_an_optimizer_without_the_device_skip_is_guarded_on_the_host(foreach):
    """MPS's AdamW (the for-loop one; foreach alike) has no found_inf skip (PyTorch refuses one): its bad steps
    are caught on the host as on the CPU, not taken, the weights untouched. On CPU tensors, the device argument
    naming MPS."""
    from charnn.training.step import StepStats, _guarded_update, make_optimizer, skips_on_device

    mps = torch.device("mps")
    assert not skips_on_device(make_optimizer(CharRNN(ModelConfig(layers=1, hidden=8, embed=4), 5), TrainConfig(), mps))
    w = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([w], lr=0.1, foreach=foreach)
    assert not skips_on_device(optimizer)
    stats = StepStats.on(torch.device("cpu"))
    cfg = TrainConfig(log_every=4, max_bad_steps=2, device="cpu")

    def step(i: int, ok: bool):
        w.grad = torch.full_like(w, 1.0 if ok else math.nan)
        return _guarded_update(optimizer, torch.tensor(ok), torch.ones(1, 1, 2), stats, cfg=cfg, device=mps, step=i)

    assert step(0, True)[0]
    before = w.detach().clone()
    taken, hidden = step(1, False)
    assert not taken and hidden is None and torch.equal(w.detach(), before)
    with pytest.raises(NonFiniteLossError, match="2 steps in a row at step 2"):
        step(2, False)


# --- failures at run time ------------------------------------------------------------------------------


def test_nan_loss_skips_steps_then_exits_3_leaving_checkpoints(run_dir: Path, monkeypatch):
    before = snapshot(run_dir)
    weights_before = weights_of(run_dir / "step-00000020.safetensors")
    calls = []
    real = step_mod.lm_loss

    def nan_loss(logits, targets, **kw):
        calls.append(1)
        return real(logits, targets, **kw) * float("nan")

    monkeypatch.setattr(step_mod, "lm_loss", nan_loss)
    res = invoke("train", "--resume", str(run_dir), "--max-iters", "100", "--eval-every", "5")
    assert res.exit_code == 3
    line = one_error_line(res, 3, alone=False)
    assert "not finite for 10 steps" in line
    assert len(calls) == 10  # ten skipped steps, then the stop
    assert snapshot(run_dir) == before  # no new checkpoint, none rewritten
    after = weights_of(run_dir / "step-00000020.safetensors")
    assert all(torch.equal(after[k], weights_before[k]) for k in after)


def test_a_few_nan_losses_are_skipped_without_touching_the_weights(run_dir: Path, monkeypatch):
    real = step_mod.lm_loss
    calls = []

    def some_nan(logits, targets, **kw):
        calls.append(1)
        loss = real(logits, targets, **kw)
        return loss * float("nan") if len(calls) <= 3 else loss

    seen = []

    def record(p):
        if p.kind == "warning":
            seen.append(p.step)

    monkeypatch.setattr(step_mod, "lm_loss", some_nan)
    stepped_after = []  # how many losses had been computed when the optimizer stepped
    real_make = setup_mod.make_optimizer

    def counting_optimizer(*a, **k):
        opt = real_make(*a, **k)
        real_step = opt.step
        opt.step = lambda *sa, **sk: (stepped_after.append(len(calls)), real_step(*sa, **sk))[1]
        return opt

    monkeypatch.setattr(setup_mod, "make_optimizer", counting_optimizer)
    train(
        corpus_of(run_dir),
        model_cfg=SMALL_MODEL,
        train_cfg=small_train(max_iters=25),
        out_dir=run_dir,
        resume=True,
        on_progress=record,
    )
    assert seen == [20, 21, 22]
    assert stepped_after == [4, 5]  # the optimizer never stepped on a NaN loss


def test_out_of_memory_exits_5_with_the_batch_shape(run_dir: Path, monkeypatch):
    before = snapshot(run_dir)

    def oom(self, x, hidden=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CharRNN, "forward", oom)
    res = invoke("train", "--resume", str(run_dir), "--max-iters", "30")
    assert res.exit_code == 5
    line = one_error_line(res, 5, alone=False)
    assert "batch size 4" in line and "sequence length 16" in line and "lower --batch-size" in line
    assert snapshot(run_dir) == before


# --- the plan's measurement of this device's speed ------------------------------------------------------------


def test_the_plans_speed_measurement_is_short_and_leaves_the_random_state():
    from charnn.training.speed import measure_speed, validation_seconds

    before, started = torch.get_rng_state(), time.perf_counter()
    speed = measure_speed(SMALL_MODEL, small_train(), 20, torch.device("cpu"), val_chars=3000, seconds=1.0)
    assert time.perf_counter() - started < 5.0  # about a second, on a busy machine a few
    assert speed.step_seconds > 0 and (speed.eval_seconds is None or speed.eval_seconds > 0)  # None: no time left
    assert torch.equal(torch.get_rng_state(), before)  # the run's stream of random numbers is untouched
    assert validation_seconds(CharRNN(SMALL_MODEL, 20), 3000, 4096) > 0


def test_one_slow_step_does_not_set_the_measured_speed(monkeypatch):
    """The median of the timed steps: a step that the machine's other work held up is not the run's speed."""
    import charnn.training.speed as speed

    calls = []

    def step(*args, **kwargs):  # the warm-up, then one step 50x slower than the others
        calls.append(kwargs["step"])
        time.sleep(0.1 if len(calls) == 2 else 0.002)
        return None, None

    monkeypatch.setattr(speed, "optimisation_step", step)
    got = speed.measure_speed(SMALL_MODEL, small_train(), 20, torch.device("cpu"), seconds=1e9)  # MOST_STEPS ends it
    assert len(calls) >= 4 and calls[:3] == [0, 1, 2]
    assert got.step_seconds < 0.02  # the mean would be above (0.1 + 0.002 n) / n


def test_the_plans_speed_measurement_leaves_an_explicit_run_unchanged(tmp_path, tiny_corpus, monkeypatch):
    from charnn.training.plan import PlanRequest

    request = PlanRequest(
        model={"layers": 1, "hidden": 16, "embed": 8},
        train={"batch_size": 4, "seq_len": 16, "max_iters": 12, "eval_every": 6, "sample_length": 0, "seed": 0},
    )
    runs = {}
    for name, seconds in (("measured", None), ("unmeasured", "0")):
        if seconds is None:
            monkeypatch.delenv("CHARNN_STEP_SECONDS", raising=False)
        else:
            monkeypatch.setenv("CHARNN_STEP_SECONDS", seconds)
        events = []
        train(tiny_corpus, request=request, out_dir=tmp_path / name, on_progress=events.append)
        runs[name] = [
            {k: v for k, v in json.loads(line).items() if k not in ("elapsed", "chars_per_s")}
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]
        runs[name + " plan"] = events[0].text
    assert runs["measured"] == runs["unmeasured"]  # the same losses, bit for bit
    assert "a step); not capped to 5 min: --max-iters given" in runs["measured plan"]
    assert "measured" not in runs["unmeasured plan"]
    for a, b in zip(list_checkpoints(tmp_path / "measured"), list_checkpoints(tmp_path / "unmeasured"), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(weights_of(a).values(), weights_of(b).values(), strict=True))


def test_the_plans_step_time_from_the_environment_must_be_a_number(tiny_corpus, monkeypatch):
    monkeypatch.setenv("CHARNN_STEP_SECONDS", "fast")
    line = one_error_line(invoke("train", tiny_corpus, "--plan"))
    assert line == "error: CHARNN_STEP_SECONDS='fast': give seconds per step (a positive number), or 0 for none"
