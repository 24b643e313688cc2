"""The fast sampling kernel's choices and weights: where it switches kernels (`Tuning`, measured), the model's
recurrent weights laid out for it (`lay_out`: the order of a layer's gate rows, their scale, packed for oneDNN
where that pays) and multiplied by (`matmul`), and how many CPU threads a step runs on. Not the step itself
(`charnn.sampling.stepper`). Why each switch point: docs/benchmarks.md.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from charnn.model import CharRNN, layer_weights
from charnn.runtime import native_bf16_cpu
from charnn.shapes import CELLS, CellLayout


@dataclass(frozen=True)
class Tuning:
    """Where the fast stepper switches kernels, by "work" = batch x hidden. The defaults were measured on the
    CPU (benchmarks/step_speed.py, docs/benchmarks.md); tests pass other values to reach every branch."""

    small_step_work: int = 8 * 256  # up to this work the CPU steps on one thread (`few_threads`)
    sigmoid_tanh_work: int = 16 * 256  # from this work tanh is computed from a sigmoid
    pack_min_weight: int = 1 << 18  # matmul weights of this many entries (an LSTM of 256 units) are packed...
    pack_min_rows: int = 4  # ...in fp32 only from this many streams (MKL's one-row fp32 path is as fast)
    cuda_graphs: bool = True  # on CUDA, replay one captured step (`GraphStep`)
    # An LSTM/RNN's upper-layer weight [W_ih; W_hh] of this many fp32 entries (2x256 LSTM: 2 MiB, twice a Zen 4
    # core's 1 MiB L2) is multiplied as two halves, every other step in the order that finds one of them still
    # cached, so one stream of the 2x256 LSTM reads half its weight from memory on each step
    split_min_weight: int = 1 << 19


MEASURED = Tuning()


@dataclass(frozen=True)
class Weight:
    """A step's matmul weight: (K, N) for addmm, and oneDNN's packed copy where that kernel is faster."""

    t: torch.Tensor
    packed: torch.Tensor | None


def pack(w: torch.Tensor, rows: int, tuning: Tuning = MEASURED) -> Weight:
    """Pack the (K, N) weight `w` for `rows` input rows where it pays (CPU, oneDNN present).

    addmm goes to MKL, which re-packs the whole weight on every call, a large part of the cost of a step's few
    rows; oneDNN's linear on weights packed once measured 1.1-2x faster in fp32 from 8 streams, 1.35-2.6x for
    one bf16 stream. These are private ops (those torch.compile's CPU backend calls): anything unexpected falls
    back to addmm.
    """
    few = w.dtype == torch.float32 and rows < tuning.pack_min_rows
    if few or w.numel() < tuning.pack_min_weight or w.device.type != "cpu" or not onednn_packs(w.dtype):
        return Weight(w, None)
    packed = _packed(w, rows)
    return Weight(w, packed)


def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed linear runs in this process for `dtype` weights: oneDNN present and switched on,
    bf16 only where the CPU has it natively, and a tiny weight packed and multiplied without error. Asked of the
    library, never of the machine's name: x86 and arm64 builds differ, and so do their versions."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if dtype == torch.bfloat16 and not native_bf16_cpu():
        return False
    return _probe(dtype)


@functools.cache
def _probe(dtype: torch.dtype) -> bool:
    return _packed(torch.ones(8, 8, dtype=dtype), 2) is not None


def _packed(w: torch.Tensor, rows: int) -> torch.Tensor | None:
    """oneDNN's packed copy of `w` for `rows` rows, tried once; None where the kernel refuses it."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), rows)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(rows, w.shape[0], dtype=w.dtype), packed, None, "none", [], "")
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    return packed


def matmul(
    x: torch.Tensor,
    w: Weight,
    out: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    acc: torch.Tensor | None = None,
    wide: torch.Tensor | None = None,
) -> torch.Tensor:
    """bias + x @ w, or out + x @ w when bias is None: in `out`, or in a new tensor from the packed fp32 kernel.
    bf16 weights take `acc` (bf16) and `wide` (fp32), buffers of out's shape: the product (with the bias) is
    rounded to bf16 and added in fp32."""
    low = acc is not None
    if w.packed is not None:
        linear = torch.ops.mkldnn._linear_pointwise
        if not low:
            if bias is None:
                return linear.binary(x, out, w.packed, None, "add")
            return linear(x, w.packed, bias, "none", [], "")
        product = linear(x, w.packed, bias, "none", [], "")  # bf16
    elif not low:
        if bias is None:
            return out.addmm_(x, w.t)
        return torch.addmm(bias, x, w.t, out=out)
    else:
        product = torch.mm(x, w.t, out=acc) if bias is None else torch.addmm(bias, x, w.t, out=acc)
    # a copy, then an fp32 add: twice as fast as adding the bf16 tensor (which converts it into a new one)
    return out.copy_(product) if bias is not None else out.add_(wide.copy_(product))


def layout(cell: CellLayout, hidden: int, sig_tanh: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's order of a layer's G*H weight rows, and each row's scale.

    The gates come first, then the candidate (an LSTM's i, f, g, o become i, f, o, g), so one sigmoid covers
    all the gates; a candidate's rows are scaled by 2 when its tanh is computed as 2 sigmoid(2x) - 1.
    """
    blocks = [b for b in cell.blocks if b in cell.gates] + [b for b in cell.blocks if b not in cell.gates]
    order = torch.cat([cell.blocks.index(b) * hidden + torch.arange(hidden, device=device) for b in blocks])
    scale = [2.0 if sig_tanh and b not in cell.gates else 1.0 for b in blocks]
    return order, torch.tensor(scale, dtype=torch.float32, device=device).repeat_interleave(hidden)  # (G*H,) each


def splits(model: CharRNN, rows: int, dtype: torch.dtype, tuning: Tuning = MEASURED) -> bool:
    """Whether an LSTM/RNN's upper layers multiply [W_ih; W_hh] as two halves (`Tuning.split_min_weight`): only
    where the halves stay unpacked fp32 on the CPU (the packed kernel returns new tensors, not `out=`)."""
    cfg = model.cfg
    G = CELLS[cfg.model].count
    return (
        cfg.model != "gru"
        and cfg.layers > 1
        and dtype == torch.float32
        and rows < tuning.pack_min_rows
        and 2 * cfg.hidden * G * cfg.hidden >= tuning.split_min_weight
        and model.head.weight.device.type == "cpu"
    )


@dataclass(frozen=True)
class Layers:
    """A model's recurrent weights as the fast stepper multiplies by them, in the kernel's row order and scale:
    - `w[l]`: layer 0's W_hh, an upper layer's stacked [W_ih; W_hh] (2H, G*H), or the pair (W_ih, W_hh) for a
      GRU (which keeps its hidden projection apart; layer 0's W_ih is None) and for `split` layers;
    - `b[l]`: the layer's bias b_ih + b_hh (a GRU's b_ih alone), `b_hh[l]`: a GRU's b_hh, else None;
    - `table`: (V, G*H) layer 0's input for each symbol, the embedding through W_ih plus b[0] (fp32)."""

    w: list[Weight | tuple[Weight | None, Weight]]
    b: list[torch.Tensor]
    b_hh: list[torch.Tensor | None]
    table: torch.Tensor


def lay_out(
    model: CharRNN, *, rows: int, dtype: torch.dtype, sig_tanh: bool, split: bool, tuning: Tuning = MEASURED
) -> Layers:
    """The recurrent weights of `model` for a kernel stepping `rows` streams with matmul weights (and the biases
    of the matmuls) in `dtype`: transposed, in `layout`'s order and scale, packed where it pays (`pack`)."""
    cell, H = CELLS[model.cfg.model], model.cfg.hidden
    order, scale = layout(cell, H, sig_tanh, model.head.weight.device)
    w, b, b_hh = [], [], []

    def packed(weight: torch.Tensor) -> Weight:
        return pack(weight.to(dtype).contiguous(), rows, tuning)

    for layer in range(model.cfg.layers):
        w_ih, w_hh, b_ih, b_h = (t.float()[order] for t in layer_weights(model.rnn, layer))
        w_ih, w_hh = w_ih.t() * scale, w_hh.t() * scale  # (I, G*H), (H, G*H)
        b_ih, b_h = b_ih * scale, b_h * scale
        if cell.hh_bias_apart:  # GRU: its candidate multiplies (W_hn h + b_hn) by r
            b.append(b_ih.contiguous())
            b_hh.append(b_h.contiguous())
            # layer 0's input weights are in the table below: no step multiplies by them
            w.append((packed(w_ih) if layer else None, packed(w_hh)))
        elif split and layer:  # (H, G*H) each: W_ih, W_hh
            b.append((b_ih + b_h).contiguous())
            b_hh.append(None)
            w.append((packed(w_ih), packed(w_hh)))
        else:
            b.append((b_ih + b_h).contiguous())
            b_hh.append(None)
            w.append(packed(w_hh if layer == 0 else torch.cat([w_ih, w_hh])))  # (H or 2H, G*H)
        if layer == 0:  # (V, G*H): the embedding through layer 0's input weights, plus its bias
            table = torch.addmm(b[0], model.embed.weight.float(), w_ih)
    if dtype != torch.float32:  # biases of the matmuls (the table keeps its fp32 bias)
        b = [t.to(dtype) for t in b]
        b_hh = [None if t is None else t.to(dtype) for t in b_hh]
    return Layers(w, b, b_hh, table)


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
