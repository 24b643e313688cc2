"""The CUDA path of the fast stepper: one step plus the draw captured once as a CUDA graph and replayed, and the
fall-back to eager steps (the same text) when capture or replay fails. Only used on CUDA.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from charnn.errors import CharnnWarning, SamplingError, first_line
from charnn.sampling.draw import NON_FINITE
from charnn.sampling.stepper import FastStepper

# draw(logits (B, V), uniforms (B, 1), out (B, 1)) writes the drawn ids into `out` and returns a 0-dim flag of
# non-finite probabilities, or None when there is nothing to check: `charnn.sampling.draw.choose_in_graph`
Draw = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]


class GraphStep:
    """The CUDA path of the fast stepper: one step plus the draw captured once as a CUDA graph and replayed,
    so a character costs one launch instead of a few dozen. The host cannot be read inside a graph: the draw's
    non-finite flags accumulate, and `check` reads them once per block of characters.

    Fail-safe: if capture fails (an operation this PyTorch or driver cannot capture, memory for the graph's
    pool), or a replay raises, a one-line CharnnWarning says so and every later step runs the same body
    eagerly: the same operations in the same order, so the same text. A replay error is raised by the launch,
    before the graph runs, so no step is lost; an error that poisons the device fails the eager step too, and
    is then raised as it is.
    """

    def __init__(self, stepper: FastStepper, draw: Draw) -> None:
        device = stepper.logits.device
        B = stepper.batch_size
        self.stepper, self.draw = stepper, draw
        self.ids_in = torch.zeros(B, dtype=torch.long, device=device)
        self.uniform = torch.zeros(B, 1, device=device)
        self.ids_out = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        saved = stepper.save_state()
        try:
            self.graph = self._capture(stepper)
        except (RuntimeError, AssertionError) as err:  # torch.cuda.graph asserts some of its preconditions
            _fall_back("capture", err)
        stepper.restore_state(saved)  # warm-up and capture stepped: undo
        self.bad.zero_()

    def _capture(self, stepper: FastStepper) -> torch.cuda.CUDAGraph:
        device = stepper.logits.device
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels (and cuBLAS workspaces) outside the capture
                self._body()
        torch.cuda.current_stream(device).wait_stream(stream)
        # thread_local: under DDP, NCCL's watchdog thread queries events, which a global capture forbids
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._body()
        return graph

    def _body(self) -> None:
        bad = self.draw(self.stepper.step(self.ids_in), self.uniform, self.ids_out)
        if bad is not None:
            self.bad |= bad

    def __call__(self, ids: torch.Tensor, uniform: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self.ids_in.copy_(ids)
        self.uniform.copy_(uniform)
        if self.graph is not None:
            try:
                self.graph.replay()
                return out.copy_(self.ids_out)
            except RuntimeError as err:
                self.graph = None
                _fall_back("replay", err)
        self._body()
        return out.copy_(self.ids_out)

    def check(self) -> None:
        if bool(self.bad):
            raise SamplingError(NON_FINITE)


def _fall_back(what: str, err: BaseException) -> None:
    warnings.warn(
        f"CUDA graph {what} failed ({first_line(err, 160)}); sampling steps eagerly instead (same text, slower)",
        CharnnWarning,
        stacklevel=3,
    )
