"""The serving engine's path for a lone stream: while one stream generates (one row in use, in the one-row
stepper), it steps as `charnn sample` steps one stream, its id a Python int (`FastStepper.step`'s one-stream
program, drawn by `charnn.sampling.draw.choose_one`), many steps per round of the engine. It uses the batched path's
stepper, state and uniforms, so the engine can switch between the two at any step, moving nothing and changing no
text. Not when it switches: charnn.serve.engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from charnn.serve.jobs import Running, draw_one
from charnn.serve.rows import RowBatch


def step_alone(
    rows: RowBatch, running: Running, go_on: Callable[[], bool], on_step: Callable[[int], None] | None = None
) -> None:
    """Step the one row of `rows` (`rows.alone`), which `running` holds, until it has drawn its length or `go_on()`
    (asked after each symbol) is false; the id it steps on next is then fed back to `rows`. `on_step(1)` hears
    each step. A CharnnError when a draw fails (the probabilities are not finite): the row's next id is unknown."""
    job = running.job
    i = int(rows.ids[0])
    while True:
        logits = rows.step_one(i)  # (1, V), unscaled
        if on_step is not None:
            on_step(1)
        if job.keep_logits:
            job.logits.append(logits.clone())
        i = draw_one(running, logits)
        running.take([i])
        if running.done == running.length or not go_on():
            break
    rows.feed(torch.tensor([i], device=rows.device))
