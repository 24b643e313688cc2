"""The fast sampling kernel: one recurrent step for a batch of streams, with the model's weights laid out for
speed. The same arithmetic as the readable cells in `charnn.model` (`lstm_cell`, ...), whose gate layout it reads;
tests hold the two paths to the same text. Not the weights' layout and matmul kernels (`charnn.sampling.packing`),
the sampling API (`charnn.sampling.generate`), nor its CUDA-graph replay (`charnn.sampling.cudagraph`). Why each
trick pays, and where its switch points come from: docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from charnn.errors import ConfigError
from charnn.model import CharRNN, Hidden
from charnn.sampling.draw import scale
from charnn.sampling.packing import MEASURED, Tuning, Weight, few_threads, lay_out, matmul, one_thread, splits
from charnn.shapes import CELLS

__all__ = ["MEASURED", "FastStepper", "Tuning", "few_threads", "one_thread"]  # where callers find them


class FastStepper:
    """One recurrent step for a batch of `B` streams, with the model's weights laid out for speed.

    At one character per step the arithmetic is small (about 2 MFLOP for 2x256) and the cost is the number of
    tensor ops and how well each runs, so everything that can be is hoisted out of the step:
    - layer 0's input projection is a (V, G*H) table indexed by the previous symbol (embedding @ W_ih + b);
    - an LSTM/RNN layer above the first does one addmm on [h_below, h] against the stacked [W_ih; W_hh];
    - for large batches tanh is 2 sigmoid(2x) - 1, the 2 folded into the weights (the CPU's tanh kernel is
      five times slower than its sigmoid), so an LSTM layer costs one sigmoid over its four blocks and one
      for tanh(c);
    - on the CPU, the weights of the recurrent matmuls are packed once for oneDNN (`charnn.sampling.packing`);
    - the head is pre-scaled by the temperature (`charnn.sampling.draw.scale`), and results go into buffers
      allocated once (`out=`), except those of the packed kernel, which has no `out=`.
    `precision="bf16"` keeps the matmul weights (and a copy of the hidden states) in bf16: each product is
    rounded to bf16 (with the bias of an upper layer or a GRU's hidden projection), while the cell state, the
    nonlinearities and the head stay in fp32; about twice the matmul throughput, a slightly different text.
    The hidden states of all layers live side by side in one (B, L*H) buffer, so layer l's [h_below, h] is a
    plain view of it. `step` returns a view of the logits buffer, overwritten by the next step.
    """

    def __init__(
        self,
        model: CharRNN,
        temperature: float = 1.0,
        batch_size: int = 1,
        precision: str = "fp32",
        *,
        tuning: Tuning = MEASURED,
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"sampling precision must be fp32 or bf16, not {precision!r}")
        cfg = model.cfg
        self.kind, self.layers, self.batch_size = cfg.model, cfg.layers, batch_size
        self.low = precision == "bf16"
        self.wdtype = torch.bfloat16 if self.low else torch.float32  # of the matmul weights
        self.sig_tanh = batch_size * cfg.hidden >= tuning.sigmoid_tanh_work
        self.split = splits(model, batch_size, self.wdtype, tuning)
        self.parity = False  # which order the split layers take this step
        with torch.no_grad():
            layers = lay_out(
                model, rows=batch_size, dtype=self.wdtype, sig_tanh=self.sig_tanh, split=self.split, tuning=tuning
            )
            self.w, self.b, self.b_hh, self.table = layers.w, layers.b, layers.b_hh, layers.table
            self.table_rows = list(self.table.split(1))  # (1, G*H) views, for an int id
            self._load_head(model, temperature)
        self._allocate(model.head.weight.device, cfg.hidden)
        self.cells: dict[int, list[Callable[[], object]]] = {}
        plain = not self.low and self.kind != "gru" and all(w.packed is None for w in self.weights)
        self.programs = (self._program(False), self._program(self.split)) if plain and batch_size == 1 else None

    def _load_head(self, model: CharRNN, temperature: float) -> None:
        """Layer norm (if on) and the head, its weight and bias `scale`d by the temperature: the logits of every
        step come scaled, as `charnn.sampling.draw.choose` takes them (the same division, done once)."""
        self.ln = None
        if model.cfg.layer_norm:
            self.ln = (model.ln.normalized_shape, model.ln.weight.float(), model.ln.bias.float(), model.ln.eps)
        self.w_out = scale(model.head.weight.float().t(), temperature).contiguous()  # (H, V)
        self.b_out = scale(model.head.bias.float(), temperature).contiguous()
        self.b_out_row = self.b_out[None]  # (1, V): addmm expands a (V,) bias with an op on every step

    def _allocate(self, device: torch.device, H: int) -> None:
        """The buffers every step writes into, and views of them made once (slicing costs about as much as a
        small op)."""
        B, L, G = self.batch_size, self.layers, CELLS[self.kind].count
        self.hs = torch.zeros(B, L * H, device=device)  # (B, L*H): h of every layer, side by side
        self.hs_low = torch.zeros(B, L * H, device=device, dtype=self.wdtype) if self.low else self.hs
        self.c = [torch.zeros(B, H, device=device) for _ in range(L)] if self.kind == "lstm" else []
        self.gates = [torch.empty(B, G * H, device=device) for _ in range(L)]
        self.gh = [torch.empty(B, G * H, device=device) for _ in range(L)] if self.kind == "gru" else []
        self.acc = torch.empty(B, G * H, device=device, dtype=self.wdtype) if self.low else None  # bf16 products
        self.wide = torch.empty(B, G * H, device=device) if self.low else None  # the same, back in fp32
        self._matmul = partial(matmul, acc=self.acc, wide=self.wide)  # (x, w, out, bias), in fp32 or bf16
        self.tmp = torch.empty(B, H, device=device)
        # 0-dim constants: a Python number is wrapped into a tensor and cast on every op that takes it
        self.one, self.two = torch.tensor(1.0, device=device), torch.tensor(2.0, device=device)
        self.logits = torch.empty(B, len(self.b_out), device=device)
        self.h = [self.hs[:, i * H : (i + 1) * H] for i in range(L)]
        self.h_low = [self.hs_low[:, i * H : (i + 1) * H] for i in range(L)]
        self.both_low = [self.hs_low[:, (i - 1) * H : (i + 1) * H] if i else None for i in range(L)]
        self.gate_views = [self._cut(g) for g in self.gates]
        self.gh_views = [self._cut(g) for g in self.gh]

    @property
    def weights(self) -> list[Weight]:
        """Every weight a step multiplies by (each with its packed copy or None)."""
        return [w for layer in self.w for w in (layer if isinstance(layer, tuple) else (layer,)) if w is not None]

    def _cut(self, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views of gates (B, G*H) in the kernel's order: each block (B, H), then the first two and the first
        three together."""
        H = self.h[0].shape[1]
        blocks = tuple(g[:, k * H : (k + 1) * H] for k in range(CELLS[self.kind].count))
        return blocks + (g[:, : 2 * H], g[:, : 3 * H])

    def _views(
        self, g: torch.Tensor, buffers: list[torch.Tensor], views: list[tuple[torch.Tensor, ...]], layer: int
    ) -> tuple[torch.Tensor, ...]:  # the views made once, unless g is a new tensor
        return views[layer] if g is buffers[layer] else self._cut(g)

    def load(self, hidden: Hidden) -> None:
        """Copy a module-shaped hidden state ((L, B, H), or a pair for LSTM) into the stepper's buffers."""
        h = hidden[0] if self.kind == "lstm" else hidden
        for i in range(self.layers):
            self.h[i].copy_(h[i])
            if self.kind == "lstm":
                self.c[i].copy_(hidden[1][i])
        if self.low:
            self.hs_low.copy_(self.hs)

    def save_state(self) -> list[torch.Tensor]:
        """A copy of everything `step` reads and writes from one step to the next (for `restore_state`)."""
        return [t.clone() for t in self._state()]

    def restore_state(self, saved: list[torch.Tensor]) -> None:
        for t, s in zip(self._state(), saved, strict=True):
            t.copy_(s)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Stream b continues from the state of stream rows[b] (B,), any row taken any number of times: a beam
        search keeps the states of the beams it extends (`charnn.sampling.beam`)."""
        for t in self._state():
            t.copy_(t.index_select(0, rows))

    def _state(self) -> list[torch.Tensor]:  # the hidden states, the LSTM cells, and the bf16 copy of the states
        return [self.hs, *self.c] + ([self.hs_low] if self.low else [])

    def _tanh_(self, x: torch.Tensor) -> torch.Tensor:
        """tanh in place of a pre-activation whose weights were scaled as `sig_tanh` says."""
        return x.sigmoid_().mul_(self.two).sub_(self.one) if self.sig_tanh else x.tanh_()

    def step(self, ids: torch.Tensor | int) -> torch.Tensor:
        """ids (B,), or one stream's id as an int -> scaled logits (B, V), a view of a buffer the next step
        overwrites. An int skips a tensor op: its row of layer 0's table is a view made once."""
        if isinstance(ids, int):
            if self.programs is not None:  # made for one stream only
                return self._run_program(ids)
            if self.batch_size != 1:
                raise ValueError(f"an int id is one stream; this stepper steps {self.batch_size}")
        elif ids.shape != (self.batch_size,):  # the packed kernel would not notice a wrong batch
            raise ValueError(f"expected ids of shape ({self.batch_size},), got {tuple(ids.shape)}")
        recurrent_first = self.split and self.parity
        if recurrent_first:  # the upper layers' h @ W_hh first: their weights are the last the previous step read
            for layer in range(self.layers - 1, 0, -1):
                self._matmul(self.h_low[layer], self.w[layer][1], self.gates[layer], self.b[layer])
        for layer in range(self.layers):
            gates = self.gates[layer]
            if layer == 0:
                gates = self._input(ids, gates)
            elif self.kind != "gru":
                gates = self._upper(layer, gates, recurrent_first)
            if self.kind == "gru":
                self._gru(layer, gates)
            else:
                self._lstm(layer, gates)
            if self.low:
                self.h_low[layer].copy_(self.h[layer])
        self.parity = not self.parity
        return self._head()

    def _run_program(self, i: int) -> torch.Tensor:
        """`step` of one stream's id `i` through its program (`_program`)."""
        before, after = self.programs[self.parity]
        for op in before:
            op()
        torch.addmm(self.table_rows[i], self.h[0], self.w0, out=self.gates[0])
        for op in after:
            op()
        self.parity = not self.parity
        return self._head()

    def _head(self) -> torch.Tensor:
        top = self.h[-1]
        if self.ln is not None:
            top = torch.layer_norm(top, *self.ln)  # not F.layer_norm: its Python checks cost a step's microseconds
        return torch.addmm(self.b_out_row, top, self.w_out, out=self.logits)

    def _input(self, ids: torch.Tensor | int, gates: torch.Tensor) -> torch.Tensor:
        """Layer 0's pre-activations: the symbol's table row, plus h @ W_hh for an LSTM/RNN (a GRU keeps its
        hidden projection apart)."""
        if isinstance(ids, int) and not self.low and (self.kind == "gru" or self.w[0].packed is None):
            row = self.table_rows[ids]  # (1, G*H); the packed kernel takes no such bias
            if self.kind == "gru":
                return gates.copy_(row)
            return self._matmul(self.h_low[0], self.w[0], gates, row)
        torch.index_select(self.table, 0, torch.as_tensor(ids, device=gates.device).view(-1), out=gates)
        return gates if self.kind == "gru" else self._matmul(self.h_low[0], self.w[0], gates, None)

    def _upper(self, layer: int, gates: torch.Tensor, recurrent_done: bool) -> torch.Tensor:
        """An LSTM/RNN layer above the first: bias + [h_below, h] @ [W_ih; W_hh], in one matmul, or in two
        (`split`) in the order that finds the most weights still in the cache."""
        if not self.split:
            return self._matmul(self.both_low[layer], self.w[layer], gates, self.b[layer])
        w_ih, w_hh = self.w[layer]
        if recurrent_done:
            return self._matmul(self.h_low[layer - 1], w_ih, gates, None)
        gates = self._matmul(self.h_low[layer - 1], w_ih, gates, self.b[layer])
        return self._matmul(self.h_low[layer], w_hh, gates, None)

    def _gru(self, layer: int, gates: torch.Tensor) -> None:
        """`charnn.model.gru_cell` in place: h = (1 - z) n + z h, n = tanh(x_n + r h_n)."""
        h, tmp = self.h[layer], self.tmp
        if layer:
            gates = self._matmul(self.h_low[layer - 1], self.w[layer][0], gates, self.b[layer])
        gh = self._matmul(self.h_low[layer], self.w[layer][1], self.gh[layer], self.b_hh[layer])
        r, z, n_in, rz, _ = self._views(gates, self.gates, self.gate_views, layer)
        _, _, n_h, gh_rz, _ = self._views(gh, self.gh, self.gh_views, layer)
        rz.add_(gh_rz).sigmoid_()
        n = self._tanh_(n_h.mul_(r).add_(n_in))  # tanh(gi_n + r gh_n)
        torch.sub(h, n, out=tmp)
        torch.addcmul(n, z, tmp, out=h)  # (1 - z) n + z h

    def _lstm(self, layer: int, gates: torch.Tensor) -> None:
        for op in self._cell(layer, gates):
            op()

    def _cell(self, layer: int, gates: torch.Tensor) -> list[Callable[[], object]]:
        """An LSTM or RNN cell on layer `layer`'s pre-activations `gates`, as the in-place ops to call in turn
        (made once per buffer: `_program`). LSTM: `charnn.model.lstm_cell` in the kernel's order i, f, o, g."""
        if gates is not self.gates[layer] or layer not in self.cells:
            ops = self._cell_ops(layer, gates)
            if gates is not self.gates[layer]:
                return ops
            self.cells[layer] = ops
        return self.cells[layer]

    def _cell_ops(self, layer: int, gates: torch.Tensor) -> list[Callable[[], object]]:
        h, tmp, two, one = self.h[layer], self.tmp, self.two, self.one
        if self.kind == "rnn":
            tanh = (
                [gates.sigmoid_, partial(gates.mul_, two), partial(gates.sub_, one)] if self.sig_tanh else [gates.tanh_]
            )
            return [*tanh, partial(h.copy_, gates)]
        i, f, o, g, _, ifo = self._views(gates, self.gates, self.gate_views, layer)
        c = self.c[layer]
        if self.sig_tanh:  # one sigmoid for all four gates, g's turned into its tanh
            ops = [gates.sigmoid_, partial(g.mul_, two), partial(g.sub_, one)]
        else:
            ops = [ifo.sigmoid_, g.tanh_]
        ops += [partial(c.mul_, f), partial(c.addcmul_, i, g)]  # c = f c + i g
        if self.sig_tanh:
            ops += [partial(torch.mul, c, two, out=tmp), tmp.sigmoid_, partial(tmp.mul_, two), partial(tmp.sub_, one)]
        else:
            ops.append(partial(torch.tanh, c, out=tmp))
        return [*ops, partial(torch.mul, o, tmp, out=h)]  # h = o tanh(c)

    def _program(self, recurrent_first: bool) -> tuple[list[Callable[[], object]], list[Callable[[], object]]]:
        """One stream's step with plain fp32 matmuls (`step` with an int id) as two lists of calls with their
        buffers bound, around layer 0's matmul: the same ops as the general path, without looking anything up
        (at one stream that bookkeeping was a sixth of a step)."""
        L = self.layers
        addmm = torch.addmm
        b = [bias[None] for bias in self.b]  # (1, G*H): as `b_out_row`
        self.w0 = self.w[0].t
        before = (
            [partial(addmm, b[k], self.h[k], self.w[k][1].t, out=self.gates[k]) for k in range(L - 1, 0, -1)]
            if recurrent_first
            else []
        )
        after = list(self._cell(0, self.gates[0]))
        for k in range(1, L):
            g = self.gates[k]
            if not self.split:
                after.append(partial(addmm, b[k], self.both_low[k], self.w[k].t, out=g))
            elif recurrent_first:
                after.append(partial(g.addmm_, self.h[k - 1], self.w[k][0].t))
            else:
                after += [
                    partial(addmm, b[k], self.h[k - 1], self.w[k][0].t, out=g),
                    partial(g.addmm_, self.h[k], self.w[k][1].t),
                ]
            after += self._cell(k, g)
        return before, after
