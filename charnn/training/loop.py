"""The named steps `charnn.training.train.train` strings together: stop checks, one optimisation step on the next
batch, log lines, evaluation with a checkpoint, early stopping and samples, each reported as a `Progress` event.
Not what the loop works with (`charnn.training.runstate`), the preparation of a run (`charnn.training.train`) nor the
arithmetic of a step (`charnn.training.step`).
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

from charnn.calibration import best_scale, can_fold, candidates, scaled
from charnn.config import SampleConfig
from charnn.distributed import all_max, barrier, gather_rows
from charnn.errors import Interrupted
from charnn.evaluate import EvalResult, evaluate_ids
from charnn.model import zero_streams
from charnn.sampling.generate import sample_text
from charnn.store.rundir import save_checkpoint
from charnn.store.trainstate import training_state
from charnn.training.average import averaged
from charnn.training.runstate import LoopState, Progress, Run, emit
from charnn.training.schedule import steps_rule
from charnn.training.step import optimisation_step, set_lr


def progress_made(run: Run, s: LoopState) -> float:
    """How far the run has gone, 0 -> 1: by the clock under --time-budget, else by steps."""
    if run.cfg.time_budget:
        return s.elapsed() / run.cfg.time_budget
    return s.step / max(run.total_steps or 1, 1)


def end_reason(run: Run, s: LoopState) -> str:
    """Why the loop ended when a stopping rule did: the time budget, or the rule that set the run's steps
    (--max-iters or a preset's, the plan's length or its cap, --epochs, one epoch when none is given)."""
    cfg = run.cfg
    if run.total_steps is None or s.step < run.total_steps:
        return "time budget reached"
    rule = steps_rule(cfg, run.batcher.batches_per_epoch)
    if rule == "epochs":
        return f"{cfg.epochs:g} epochs done"
    if rule is None:
        return "one epoch done (no --max-iters, --epochs or --time-budget)"
    if run.plan is not None and "max_iters" in run.plan.chosen:
        if run.plan.longest is not None and cfg.max_iters < run.plan.longest:  # cut to fit, maybe fitted again
            return f"the plan's cap of {cfg.max_iters:,} steps reached"
        return f"the plan's {cfg.max_iters:,} steps done"
    return "step limit reached"


def reached_the_end(run: Run, s: LoopState, progress: float) -> bool:
    return (run.total_steps is not None and s.step >= run.total_steps) or bool(run.cfg.time_budget and progress >= 1.0)


def stop_if_asked(run: Run, s: LoopState) -> None:
    """A signal (Ctrl-C, SIGTERM) ends the run between steps, with a checkpoint to resume from."""
    signum = run.should_stop()
    if run.dist.enabled and s.step % run.sync_every == 0:
        signum = all_max(run.dist, signum or 0) or None  # one rank's signal stops every rank here
    if signum:
        # A checkpoint of this very step (one the signal came during, its validation included) is kept as
        # written: rewriting it unevaluated would take the validation loss that makes it the best away.
        latest = s.latest if s.saved_step == s.step else checkpoint_step(run, s, None)
        raise Interrupted(
            f"interrupted at step {s.step} by {signal_name(signum)}; saved {latest}; continue with --resume "
            f"{run.run_dir}",
            exit_code=128 + signum,
        )


def train_step(run: Run, s: LoopState, lr: float) -> bool:
    """One optimisation step on the next batch; False when it was skipped as non-finite (on the CPU)."""
    set_lr(run.optimizer, lr)
    epoch, k = run.batcher.position(s.step)
    if k == 0:
        s.hidden = None  # a new epoch starts the streams afresh (at a new offset)
    else:  # --state-reset: some streams start this batch cold, as sampling and evaluation start
        s.hidden = zero_streams(s.hidden, run.batcher.fresh_streams(s.step, run.cfg.state_reset))
    taken, s.hidden = optimisation_step(
        run.net,
        run.optimizer,
        run.batcher.batch(s.step),
        s.hidden,
        s.stats,
        cfg=run.cfg,
        device=run.device,
        step=s.step,
        scaler=run.scaler,
    )
    if not taken:
        run.report(Progress("warning", s.step, run.total_steps, s.elapsed(), text="non-finite loss; step skipped"))
    elif s.average is not None:
        s.average.update(run.model, s.step)
    s.step += 1
    return taken


def log_window(run: Run, s: LoopState, lr: float) -> None:
    """One metrics line for the steps since the last: mean loss over every rank, gradient norm, speed."""
    mean, grad_norm, clip_frac, rate = s.stats.read_window(run.dist, run.cfg.batch_size * run.cfg.seq_len)
    log_record(
        run,
        {
            "kind": "train",
            "step": s.step,
            "elapsed": round(s.elapsed(), 3),
            "train_loss": mean,
            "lr": lr,
            "grad_norm": grad_norm,
            "clip_frac": clip_frac,
            "chars_per_s": rate,
        },
    )
    emit(run, s, "log", train_loss=mean, lr=lr, grad_norm=grad_norm, chars_per_s=rate)
    s.last_train = mean
    s.stats.new_window()


def evaluate_and_checkpoint(run: Run, s: LoopState) -> None:
    """Score the whole validation split (rank 0), track the best for --patience, then save a checkpoint."""
    started = time.perf_counter()
    _evaluate_and_checkpoint(run, s)
    s.eval_seconds += time.perf_counter() - started
    s.validations += 1


def _evaluate_and_checkpoint(run: Run, s: LoopState) -> None:
    val = None
    if len(run.val_ids) >= 2 and run.dist.is_main:
        calibrate = run.cfg.calibrate and can_fold(run.model.cfg)
        with averaged(run.model, s.average):
            res = evaluate_ids(
                run.model,
                run.val_ids,
                segment=run.cfg.eval_segment,
                precision=run.cfg.precision,
                scales=candidates(s.scale_centre) if calibrate else (),
            )
        saved = res  # the model as it is saved: with --calibrate, its logits times the best scale
        if calibrate:
            s.logit_scale = best_scale(res.scaled_nats)
            if s.step % run.cfg.eval_every == 0:  # not a run's extra last one: a resumed run fits as a straight one
                s.scale_centre = s.logit_scale
            saved = EvalResult(res.chars, res.scaled_nats[s.logit_scale])
        else:  # saved as trained from here on (a resume may turn it off)
            s.logit_scale = s.scale_centre = 1.0
        val = saved.loss
        if math.isfinite(val) and val < s.best_val:
            s.best_val, s.best_step, s.evals_since_best, s.warned = val, s.step, 0, False
        else:
            s.evals_since_best += 1
        calibration = {"val_loss_uncalibrated": res.loss, "calibrated_temperature": round(1 / s.logit_scale, 4)}
        log_record(
            run,
            {
                "kind": "eval",
                "step": s.step,
                "elapsed": round(s.elapsed(), 3),
                "val_loss": val,
                "val_bpc": saved.bpc,
                "val_chars": res.chars,
                **(calibration if calibrate else {}),
            },
        )
        emit(run, s, "eval", val_loss=val, train_loss=s.last_train)
        _watch_overfitting(run, s, val)
    s.last_val = val
    s.latest = checkpoint_step(run, s, val)


def checkpoint_step(run: Run, s: LoopState, val: float | None) -> Path | None:
    """Save the weights (their average, with --average) and the training state; rank 0 writes, every rank sends
    its streams' hidden state."""
    hidden = gather_rows(s.hidden, run.dist)
    with averaged(run.model, s.average) as trained, scaled(run.model, s.logit_scale) as unscaled:
        state = training_state(
            s.step,
            s.elapsed(),
            s.best_val,
            run.optimizer,
            hidden,
            run.cfg,
            s.evals_since_best,
            s.best_step,
            run.scaler,
            trained,
            logit_scale=s.logit_scale,
            scale_centre=s.scale_centre,
            unscaled=unscaled,
        )
        path = _save(run, s, val, state)
    barrier(run.dist)  # no rank runs ahead of a checkpoint being written
    s.saved_step = s.step
    return path


def _save(run: Run, s: LoopState, val: float | None, state: dict[str, Any]) -> Path | None:
    path = None
    if run.dist.is_main:
        data, cfg, cache_dir = run.data, run.cfg, run.cache_dir
        path = save_checkpoint(
            run.run_dir,
            run.model,
            data.vocab,
            data.data,
            step=s.step,
            val_loss=val,
            corpus_sha256=data.sha256,
            state=state,
            keep_last=cfg.keep_last,
            corpus_path=str(Path(data.path).resolve()),
            corpus_cache=str(Path(cache_dir).resolve()) if cache_dir else "",
            train_cfg=cfg,
        )
        emit(run, s, "checkpoint", text=str(path))
    return path


def overfitting(curve: list[tuple[float, float]], *, rises: int = 3) -> bool:
    """Validation rose at each of the last `rises` evaluations while the training loss fell over them: the
    model has started to memorise its training text. `curve` holds (train loss, val loss) per evaluation.
    Three rises, not one or two: a small validation split is noisy enough to rise twice by chance."""
    if len(curve) <= rises:
        return False
    window = curve[-rises - 1 :]
    vals = [v for _, v in window]
    return all(b > a for a, b in zip(vals, vals[1:], strict=False)) and window[-1][0] < window[0][0]


def _watch_overfitting(run: Run, s: LoopState, val: float) -> None:
    """One warning when validation turns up while training still improves (again after a new best): the loss of
    the model as saved (with --calibrate, its temperature holds off part of a rise)."""
    if s.last_train is None or not math.isfinite(val):
        return
    s.curve.append((s.last_train, val))
    if not s.warned and overfitting(s.curve):
        s.warned = True
        emit(
            run,
            s,
            "warning",
            text=f"validation loss is rising ({val:.4f}) while training loss falls: the model is memorising its "
            f"text; the best checkpoint (step {s.best_step}, {s.best_val:.4f}) is kept",
        )


def patience_spent(run: Run, s: LoopState) -> bool:
    """--patience evaluations without a new best; every rank stops together (only rank 0 evaluates). At the
    run's last step the step limit ends it, and is the reason given."""
    if run.total_steps is not None and s.step >= run.total_steps:
        return False
    return bool(run.cfg.patience and all_max(run.dist, int(s.evals_since_best >= run.cfg.patience)))


def stop_early(run: Run, s: LoopState) -> None:
    s.stopped_early = True
    n = run.cfg.patience
    s.stop_reason = f"no new best validation loss in {n} evaluation{'s' if n != 1 else ''}"
    best = f"best {s.best_val:.4f} nats/char at step {s.best_step}" if s.best_step is not None else "none finite"
    msg = f"early stop: {s.stop_reason} ({best})"
    log_record(run, {"kind": "stop", "step": s.step, "elapsed": round(s.elapsed(), 3), "reason": msg})
    emit(run, s, "stop", text=msg)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def draw_sample(run: Run, s: LoopState) -> None:
    cfg = run.cfg
    sample_cfg = SampleConfig(length=cfg.sample_length, temperature=cfg.sample_temperature, seed=cfg.seed)
    with averaged(run.model, s.average), scaled(run.model, s.logit_scale):  # the model as the last checkpoint saved it
        text = sample_text(run.model, run.data.vocab, sample_cfg)[0]
    run.model.train()
    shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    novelty, line = sample_novelty(run, s, text)
    run.samples.write(
        json.dumps(
            {
                "step": s.step,
                "elapsed": round(s.elapsed(), 3),
                "val_loss": s.last_val,
                "temperature": cfg.sample_temperature,
                "text": shown,
                "novelty": novelty,
            }
        )
        + "\n"
    )
    run.samples.flush()
    emit(run, s, "sample", text=shown, novelty=line)


def sample_novelty(run: Run, s: LoopState, text: str | bytes) -> tuple[dict, str]:
    """A sample's novelty against the whole corpus (charnn.novelty) as samples.jsonl records it, and its line;
    the index is built (or read from beside the corpus cache) at the first sample."""
    from charnn.errors import NoveltyUnavailable
    from charnn.novelty.index import corpus_index
    from charnn.novelty.run import IndexOnce, unavailable_line

    if s.novelty_index is None:
        s.novelty_index = IndexOnce(lambda: corpus_index(run.data, [run.cache_dir] if run.cache_dir else []))
    try:
        found = s.novelty_index.get().check(text)
    except NoveltyUnavailable as err:
        return {"unavailable": str(err)}, unavailable_line(err)
    return found.to_json(), found.line()


def log_record(run: Run, record: dict[str, Any]) -> None:
    """One line of the run's metrics.jsonl, written through at once."""
    run.metrics.write(json.dumps(record) + "\n")
    run.metrics.flush()
