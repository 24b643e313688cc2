"""The fast sampling kernel's choices: where it switches kernels (`Tuning`, measured), how a matmul weight is packed
for oneDNN, the order of a layer's gate rows, and how many CPU threads a step runs on. Not the step itself
(`charnn.sampling.stepper`). Why each switch point: docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from charnn.model import CellLayout
from charnn.runtime import native_bf16_cpu


@dataclass(frozen=True)
class Tuning:
    """Where the fast stepper switches kernels, by "work" = batch x hidden. The defaults were measured on the
    CPU (benchmarks/step_speed.py, docs/benchmarks.md); tests pass other values to reach every branch."""

    small_step_work: int = 8 * 256  # up to this work the CPU steps on one thread (`few_threads`)
    sigmoid_tanh_work: int = 16 * 256  # from this work tanh is computed from a sigmoid
    pack_min_weight: int = 1 << 18  # matmul weights of this many entries (an LSTM of 256 units) are packed...
    pack_min_rows: int = 4  # ...in fp32 only from this many streams (MKL's one-row fp32 path is as fast)
    cuda_graphs: bool = True  # on CUDA, replay one captured step (`GraphStep`)
    # An LSTM/RNN's upper-layer weight [W_ih; W_hh] of this many fp32 entries (2x256 LSTM: 2 MiB, as much as
    # this CPU's L2 per core) is multiplied as two halves, every other step in the order that finds one of them
    # still cached: one stream of the 2x256 LSTM measured 0.77x the matmul time (docs/benchmarks.md)
    split_min_weight: int = 1 << 19


MEASURED = Tuning()


@dataclass(frozen=True)
class _Weight:
    """A step's matmul weight: (K, N) for addmm, and oneDNN's packed copy where that kernel is faster."""

    t: torch.Tensor
    packed: torch.Tensor | None


def _pack(w: torch.Tensor, rows: int, tuning: Tuning = MEASURED) -> _Weight:
    """Pack the (K, N) weight `w` for `rows` input rows where it pays (CPU, oneDNN present).

    addmm goes to MKL, which re-packs the whole weight on every call, a large part of the cost of a step's few
    rows; oneDNN's linear on weights packed once measured 1.1-2x faster in fp32 from 8 streams, 1.35-2.6x for
    one bf16 stream. These are private ops (those torch.compile's CPU backend calls): anything unexpected falls
    back to addmm.
    """
    few = w.dtype == torch.float32 and rows < tuning.pack_min_rows
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    onednn = onednn and (w.dtype != torch.bfloat16 or native_bf16_cpu())  # bf16 packed where it is native
    if few or w.numel() < tuning.pack_min_weight or w.device.type != "cpu" or not onednn:
        return _Weight(w, None)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), rows)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(rows, w.shape[0], dtype=w.dtype), packed, None, "none", [], "")
    except (AttributeError, NotImplementedError, RuntimeError):
        return _Weight(w, None)
    return _Weight(w, packed)


def _layout(cell: CellLayout, hidden: int, sig_tanh: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's order of a layer's G*H weight rows, and each row's scale.

    The gates come first, then the candidate (an LSTM's i, f, g, o become i, f, o, g), so one sigmoid covers
    all the gates; a candidate's rows are scaled by 2 when its tanh is computed as 2 sigmoid(2x) - 1.
    """
    blocks = [b for b in cell.blocks if b in cell.gates] + [b for b in cell.blocks if b not in cell.gates]
    order = torch.cat([cell.blocks.index(b) * hidden + torch.arange(hidden, device=device) for b in blocks])
    scale = [2.0 if sig_tanh and b not in cell.gates else 1.0 for b in blocks]
    return order, torch.tensor(scale, dtype=torch.float32, device=device).repeat_interleave(hidden)  # (G*H,) each


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one CPU thread inside, restored afterwards."""
    before = torch.get_num_threads()
    if before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before > 1:
            torch.set_num_threads(before)


@contextmanager
def few_threads(batch_size: int, hidden: int, device: torch.device, tuning: Tuning = MEASURED) -> Iterator[None]:
    """One CPU thread while stepping small batches: each op is microseconds of work, and waking a second
    thread costs more than it saves (it is ruinous when the other core is busy). Restored afterwards."""
    if device.type == "cpu" and batch_size * hidden <= tuning.small_step_work:
        with one_thread():
            yield
    else:
        yield
