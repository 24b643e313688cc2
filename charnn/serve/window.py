"""The serving engine's batched steps between two looks at its jobs (a window of at most `WINDOW` steps): each
row's uniforms for the window gathered once from its job's blocks, every step's draws written into one
(steps, rows) tensor, and the ids handed to the jobs once, at the window's end. No Python work per row and step
but a job's logits when it keeps them. Not when a window ends, nor what happens to the jobs then:
charnn.serve.engine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from charnn.config import SampleConfig
from charnn.errors import CharnnError
from charnn.serve.jobs import Running, draw
from charnn.serve.rows import RowBatch

WINDOW = 32  # steps at most between two looks at the jobs (ends, cancellations; new work ends one sooner)


class Window:
    """The next steps of the rows of `active` (in row order, drawn in `groups`: `charnn.serve.jobs.draw_groups`).

    `open` gathers the uniforms of up to `WINDOW` steps, as many as the job closest to its end has left, so no
    job ends inside a window; `step` steps every row once; `hand_out` gives each job the ids of the steps
    taken. A group whose draw fails (`failed`: each member and the error) stops the window after that step.
    """

    def __init__(self, max_rows: int, device: torch.device, steps: int = WINDOW) -> None:
        self.device, self.size = device, steps
        self.ids = torch.zeros(steps, max_rows, 1, dtype=torch.long, device=device)  # (steps, rows, 1)
        self.steps = self.taken = 0
        self.groups: list[tuple[torch.Tensor | None, torch.Tensor, SampleConfig, list[Running]]] = []  # with uniforms
        self.keeping: list[tuple[Running, int]] = []  # jobs that keep their logits, and their first row
        self.failed: dict[Running, str] = {}

    def open(self, active: list[Running], groups: list[tuple[list[Running], torch.Tensor | None]]) -> None:
        """A new window over `active`: its length, and its rows' uniforms."""
        self.steps = min(self.size, min(a.length - a.done for a in active))
        self.taken = 0
        self.failed = {}
        self.groups = [
            (None if index is None else index.to(self.device), self._uniforms(members), members[0].job.cfg, members)
            for members, index in groups
        ]
        self.keeping, start = [], 0
        for running in active:
            if running.job.keep_logits:
                self.keeping.append((running, start))
            start += running.n

    def _uniforms(self, members: list[Running]) -> torch.Tensor:
        """The uniforms (steps, m, 1) of the rows of `members` for this window, on the rows' device."""
        return torch.cat([m.uniforms(self.steps) for m in members], dim=1)[:, :, None].to(self.device)

    def step(self, rows: RowBatch) -> None:
        """Every used row one symbol further (`rows` steps on what it draws). A failed draw's rows step on id 0
        (they leave at the window's end)."""
        t = self.taken
        logits = rows.step()  # (used, V), unscaled
        out = self.ids[t, : rows.used]  # (used, 1)
        for index, uniform, cfg, members in self.groups:
            try:
                if index is None:
                    draw(cfg, logits, uniform[t], out=out)
                else:
                    out.index_copy_(0, index, draw(cfg, logits.index_select(0, index), uniform[t]))
            except CharnnError as err:  # non-finite probabilities: the model's outputs overflow
                self.failed.update((m, str(err)) for m in members)
                if index is None:
                    out.fill_(0)
                else:
                    out.index_fill_(0, index, 0)
        rows.feed(out[:, 0])
        for running, start in self.keeping:
            if running not in self.failed:
                running.job.logits.append(logits[start : start + running.n].clone())
        self.taken += 1

    def run(self, rows: RowBatch, go_on: Callable[[], bool], on_step: Callable[[int], None] | None = None) -> None:
        """`step` until every step of the window is taken, a draw failed, or `go_on()` (asked after each step) is
        false; `on_step(rows)` hears each step's size."""
        while True:
            self.step(rows)
            if on_step is not None:
                on_step(rows.used)
            if self.taken == self.steps or self.failed or not go_on():
                return

    def hand_out(self, active: list[Running]) -> None:
        """Each job of `active` (the rows' jobs, as at `open`) the ids of the steps taken, one list per stream
        (one step fewer for a failed draw's)."""
        if not self.taken:
            return
        used = sum(a.n for a in active)
        columns = self.ids[: self.taken, :used, 0].t().tolist()  # (used, taken)
        start = 0
        for running in active:
            mine = columns[start : start + running.n]
            if running in self.failed:
                mine = [c[:-1] for c in mine]
            if mine[0]:
                running.extend(mine)
            start += running.n
