"""The plan's length fitted again to the run's own speed: a CPU's default schedule is cut to end in about five
minutes from a speed measured in about two seconds before the start, and a machine's speed can drift by a fifth
over minutes. At each validation the loop times what it has done so far (its steps, and its validations with their
checkpoints) and, where the end it now foresees is off by more than REFIT_SHARE, sets the run's length to what
fits: never past the plan's length before its cap, never behind the step reached. config.json records the new
length, so a resume continues with it.

Not the plan (`charnn.training.plan`) nor the arithmetic of a run's time (`charnn.training.timing`).
"""

from __future__ import annotations

import dataclasses

from charnn.distributed import broadcast_object
from charnn.store.rundir import write_run_files
from charnn.training.choices import run_shape
from charnn.training.loop import log_record
from charnn.training.runstate import LoopState, Run, emit
from charnn.training.timing import CHECKPOINT_SECONDS, LOOP_OVERHEAD, START_SECONDS, TARGET_SECONDS, Speed, per_step

REFIT_SHARE = 0.05  # a new length only when it differs from the current one by more than this share
LEAST_STEPS = 100  # steps, and seconds of stepping, timed before the first re-fit
LEAST_SECONDS = 10.0


def loop_speed(s: LoopState, steps: int, validations: int) -> Speed | None:
    """The speed this process has stepped at: its steps' time without the validations, per step (taken back to
    a bare step the way the plan counts it), and its validations' time each; None until it has timed enough."""
    stepping = s.elapsed() - s.elapsed_before - s.eval_seconds
    if steps < LEAST_STEPS or stepping < LEAST_SECONDS or validations < 1:
        return None
    eval_seconds = max(s.eval_seconds / validations - CHECKPOINT_SECONDS, 0.0)
    return Speed(stepping / steps / LOOP_OVERHEAD, eval_seconds)


def refitted_steps(run: Run, s: LoopState, speed: Speed) -> int:
    """The most steps, up to the plan's length before its cap, whose run ends within about TARGET_SECONDS at
    `speed`, counting the time already spent; at least the step reached (the run then ends there)."""
    assert run.plan is not None and run.plan.longest is not None
    shape = run_shape(len(run.val_ids), run.cfg, speed, run.cfg.eval_every)
    left = TARGET_SECONDS - START_SECONDS - s.elapsed()
    return max(shape.fit(run.plan.longest, seconds=left + shape.seconds(s.step)), s.step)


def refit(run: Run, s: LoopState) -> Run:
    """`run` with its length fitted to the speed of this process's steps and validations so far, where its plan
    fits its length to the device's speed and the new length differs enough; else `run` itself."""
    plan, current = run.plan, run.total_steps
    if plan is None or plan.longest is None or current is None:
        return run
    speed = loop_speed(s, s.step - s.first_step, s.validations) if run.dist.is_main else None
    new = refitted_steps(run, s, speed) if speed is not None else current
    new = broadcast_object(run.dist, new) if run.dist.enabled else new  # every rank ends at the same step
    if abs(new - current) <= REFIT_SHARE * current:
        return run
    run = dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, max_iters=new), total_steps=new)
    if speed is not None:  # rank 0, which timed the run: config.json (what a resume continues with), the record
        write_run_files(run.run_dir, run.data, run.model.cfg, run.cfg)
        log_record(
            run, {"kind": "refit", "step": s.step, "max_iters": new, "step_seconds": round(speed.step_seconds, 5)}
        )
        assert plan.speed is not None  # a plan fits its length to a time it measured (or estimated from one)
        measured = per_step(plan.speed.step_seconds)
        emit(
            run,
            s,
            "plan",
            text=f"fitted again at step {s.step:,}: {per_step(speed.step_seconds)} a step here ({measured} planned "
            f"before the start), {new:,} steps in all (was {current:,}) to end in about the plan's time",
        )
    return run
