"""Drawing text from a model: warm the state on the prime in one forward pass, then one recurrent step per
character on the carried state (O(1) work per character; the text so far is never re-run).

Two stepping paths give the same text for the same seed: `fast` (default) reads the weights into a few
preallocated matrices and runs one addmm per layer per step; `module` calls the nn.LSTM/GRU/RNN itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from charnn.config import GATES, SampleConfig
from charnn.data import Vocab
from charnn.errors import ConfigError, SamplingError, VocabularyError
from charnn.model import CharRNN, Hidden
from charnn.runtime import autocast, ieee_rnn

UNIFORM_BLOCK = 4096  # uniforms are drawn this many steps at a time, the same way on every path
USE_CUDA_GRAPHS = True  # the fast path replays one captured step on CUDA; tests turn it off to compare
SMALL_STEP_WORK = 8 * 256  # batch x hidden up to which the CPU stepper uses one thread (measured, issue 4)
SIGMOID_TANH_WORK = 16 * 256  # batch x hidden from which tanh is computed from a sigmoid (measured, issue 4)
# The CPU stepper's matmuls use oneDNN's packed weights from PACK_MIN_WEIGHT weight entries (an LSTM of 256 units),
# in fp32 only from PACK_MIN_ROWS streams (measured, issue 4: MKL's one-row fp32 path is as fast).
PACK_MIN_WEIGHT, PACK_MIN_ROWS = 1 << 18, 4


@dataclass(frozen=True)
class _Weight:
    """A step's matmul weight: (K, N) for addmm, and oneDNN's packed copy where that kernel is faster."""

    t: torch.Tensor
    packed: torch.Tensor | None


def _pack(w: torch.Tensor, rows: int) -> _Weight:
    """Pack the (K, N) weight `w` for `rows` input rows where it pays (CPU, oneDNN present).

    addmm goes to MKL, which re-packs the whole weight on every call; for the few rows of a sampling step that
    is a large part of its cost. With oneDNN's linear on weights packed once, a step measured 1.1-2x faster in
    fp32 from 8 streams and 1.35-2.6x for one bf16 stream (benchmarks/step_speed.py, docs/benchmarks.md, issue
    4); for one fp32 stream MKL's own path is as fast.
    These are private ops (the ones torch.compile's CPU backend calls): anything unexpected falls back to addmm.
    """
    few = w.dtype == torch.float32 and rows < PACK_MIN_ROWS
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    if few or w.numel() < PACK_MIN_WEIGHT or w.device.type != "cpu" or not onednn:
        return _Weight(w, None)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), rows)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(rows, w.shape[0], dtype=w.dtype), packed, None, "none",
                                           [], "")
    except (AttributeError, NotImplementedError, RuntimeError):
        return _Weight(w, None)
    return _Weight(w, packed)


class FastStepper:
    """One recurrent step for a batch of `B` streams, with the model's weights laid out for speed.

    At one character per step the arithmetic is small (about 2 MFLOP for 2x256) and the cost is the number of
    tensor ops and how well each one runs, so everything that can be is hoisted out of the step (issue 4):
    - layer 0's input projection is a (V, G*H) table indexed by the previous symbol (embedding @ W_ih + b);
    - an LSTM/RNN layer above the first does one addmm on [h_below, h] against the stacked [W_ih; W_hh];
    - from batch x hidden >= 4096 (16 streams of 256 units), tanh is computed as 2 sigmoid(2x) - 1, the 2
      folded into the weights where x is a matmul: the CPU's tanh kernel is five times slower than its
      sigmoid, so an LSTM layer costs one sigmoid over all four gates and one more for tanh(c) (a few extra
      small ops, which cost more than they save for small batches);
    - on the CPU, the weights of the recurrent matmuls are packed once for oneDNN (`_pack`);
    - the head is pre-scaled by 1/temperature, and results go into buffers allocated once (`out=`), except
      those of the packed kernel, which has no `out=`.
    `precision="bf16"` keeps the matmul weights (and a copy of the hidden states) in bf16; each matmul
    accumulates in fp32 but its result (with the bias of an upper layer or a GRU's hidden projection) is
    rounded to bf16, and the cell state, the gates' nonlinearities and the head stay in fp32: about twice the
    matmul throughput on a GPU or a CPU with bf16 instructions, at the cost of a slightly different text than
    the fp32 paths.
    The hidden states of all layers live side by side in one (B, L*H) buffer, so layer l's [h_below, h] is a
    plain view of it. `step` returns a view of the logits buffer, overwritten by the next step.
    """

    def __init__(self, model: CharRNN, temperature: float = 1.0, batch_size: int = 1,
                 precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"sampling precision must be fp32 or bf16, not {precision!r}")
        cfg = model.cfg
        self.kind, self.layers, self.batch_size = cfg.model, cfg.layers, batch_size
        H = cfg.hidden
        G = GATES[cfg.model]
        B, L = batch_size, cfg.layers
        rnn, device = model.rnn, model.head.weight.device
        self.low = precision == "bf16"
        wdtype = torch.bfloat16 if self.low else torch.float32
        self.sig_tanh = batch_size * H >= SIGMOID_TANH_WORK
        # 2 for the gates whose tanh is computed from a sigmoid of twice its argument, else 1
        scale = {"lstm": [1, 1, 1, 2], "gru": [1, 1, 2], "rnn": [2]}[self.kind]  # LSTM in (i, f, o, g) order
        scale = [x if self.sig_tanh else 1 for x in scale]
        scale = torch.tensor(scale, dtype=torch.float32, device=device).repeat_interleave(H)  # (G*H,)
        order = torch.arange(G * H, device=device)
        if self.kind == "lstm":  # nn.LSTM's (i, f, g, o) -> (i, f, o, g): one sigmoid covers three gates
            order = torch.cat([order[:2 * H], order[3 * H:], order[2 * H:3 * H]])
        with torch.no_grad():
            self.w, self.b, self.b_hh = [], [], []
            for layer in range(L):
                w_ih = getattr(rnn, f"weight_ih_l{layer}").float()[order].t() * scale  # (I, G*H)
                w_hh = getattr(rnn, f"weight_hh_l{layer}").float()[order].t() * scale  # (H, G*H)
                b_ih = getattr(rnn, f"bias_ih_l{layer}").float()[order] * scale
                b_hh = getattr(rnn, f"bias_hh_l{layer}").float()[order] * scale
                if self.kind == "gru":
                    # GRU keeps b_hh apart: its candidate gate multiplies (W_hn h + b_hn) by r.
                    self.b.append(b_ih.contiguous())
                    self.b_hh.append(b_hh.contiguous())
                    # layer 0's input weights are in the table below: no step multiplies by them
                    w_in = _pack(w_ih.to(wdtype).contiguous(), B) if layer else None
                    self.w.append((w_in, _pack(w_hh.to(wdtype).contiguous(), B)))
                else:
                    self.b.append((b_ih + b_hh).contiguous())
                    self.b_hh.append(None)
                    stacked = w_hh if layer == 0 else torch.cat([w_ih, w_hh])  # (H or 2H, G*H)
                    self.w.append(_pack(stacked.to(wdtype).contiguous(), B))
                if layer == 0:  # (V, G*H): the embedding through layer 0's input weights, plus its bias
                    self.table = torch.addmm(self.b[0], model.embed.weight.float(), w_ih)
            if self.low:  # biases of the matmuls (the table keeps its fp32 bias)
                self.b = [b.to(wdtype) for b in self.b]
                self.b_hh = [None if b is None else b.to(wdtype) for b in self.b_hh]
            self.ln = None
            if cfg.layer_norm:
                self.ln = (model.ln.normalized_shape, model.ln.weight.float(), model.ln.bias.float(), model.ln.eps)
            self.w_out = (model.head.weight.float().t() / temperature).contiguous()  # (H, V)
            self.b_out = (model.head.bias.float() / temperature).contiguous()
        self.hs = torch.zeros(B, L * H, device=device)  # (B, L*H): h of every layer, side by side
        self.hs_low = torch.zeros(B, L * H, device=device, dtype=wdtype) if self.low else self.hs
        self.c = [torch.zeros(B, H, device=device) for _ in range(L)] if self.kind == "lstm" else []
        self.gates = [torch.empty(B, G * H, device=device) for _ in range(L)]
        self.gh = [torch.empty(B, G * H, device=device) for _ in range(L)] if self.kind == "gru" else []
        self.acc = torch.empty(B, G * H, device=device, dtype=wdtype) if self.low else None  # bf16 products
        self.wide = torch.empty(B, G * H, device=device) if self.low else None  # the same, back in fp32
        self.tmp = torch.empty(B, H, device=device)
        # 0-dim constants: a Python number is wrapped into a tensor and cast on every op that takes it
        self.one, self.two = torch.tensor(1.0, device=device), torch.tensor(2.0, device=device)
        self.logits = torch.empty(B, len(self.b_out), device=device)
        # Views, made once: slicing costs about as much as a small op.
        self.h = [self.hs[:, i * H:(i + 1) * H] for i in range(L)]
        self.h_low = [self.hs_low[:, i * H:(i + 1) * H] for i in range(L)]
        self.both_low = [self.hs_low[:, (i - 1) * H:(i + 1) * H] if i else None for i in range(L)]

        self.gate_views = [self._cut(g) for g in self.gates]
        self.gh_views = [self._cut(g) for g in self.gh]

    @property
    def weights(self) -> list[_Weight]:
        """Every weight a step multiplies by (each with its packed copy or None)."""
        return [w for layer in self.w for w in (layer if isinstance(layer, tuple) else (layer,)) if w is not None]

    def _cut(self, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views of gates (B, G*H): each gate (B, H), then the first two and the first three together."""
        H = self.h[0].shape[1]
        return tuple(g[:, k * H:(k + 1) * H] for k in range(GATES[self.kind])) + (g[:, :2 * H], g[:, :3 * H])

    def _views(self, g: torch.Tensor, buffers: list[torch.Tensor], views: list[tuple[torch.Tensor, ...]],
               layer: int) -> tuple[torch.Tensor, ...]:  # the views made once, unless g is a new tensor
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

    def _state(self) -> list[torch.Tensor]:  # the hidden states, the LSTM cells, and the bf16 copy of the states
        return [self.hs, *self.c] + ([self.hs_low] if self.low else [])

    def _matmul(self, x: torch.Tensor, w: _Weight, out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """bias + x @ w, or out + x @ w when bias is None: in `out`, or in a new tensor from the packed fp32
        kernel. In bf16 the product (with the bias) is rounded to bf16 and added in fp32."""
        if w.packed is not None:
            linear = torch.ops.mkldnn._linear_pointwise
            if not self.low:
                if bias is None:
                    return linear.binary(x, out, w.packed, None, "add")
                return linear(x, w.packed, bias, "none", [], "")
            product = linear(x, w.packed, bias, "none", [], "")  # bf16
        elif not self.low:
            if bias is None:
                return out.addmm_(x, w.t)
            return torch.addmm(bias, x, w.t, out=out)
        else:
            product = torch.mm(x, w.t, out=self.acc) if bias is None else torch.addmm(bias, x, w.t, out=self.acc)
        # a copy, then an fp32 add: twice as fast as adding the bf16 tensor (which converts it into a new one)
        return out.copy_(product) if bias is not None else out.add_(self.wide.copy_(product))

    def _tanh_(self, x: torch.Tensor) -> torch.Tensor:
        """tanh in place of a pre-activation whose weights were scaled as `sig_tanh` says."""
        return x.sigmoid_().mul_(self.two).sub_(self.one) if self.sig_tanh else x.tanh_()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> scaled logits (B, V), a view of a buffer the next step overwrites."""
        if ids.shape != (self.batch_size,):  # the packed kernel would not notice a wrong batch
            raise ValueError(f"expected ids of shape ({self.batch_size},), got {tuple(ids.shape)}")
        for layer in range(self.layers):
            gates, h, tmp = self.gates[layer], self.h[layer], self.tmp
            if layer == 0:
                torch.index_select(self.table, 0, ids, out=gates)  # (B, G*H)
            if self.kind == "gru":
                if layer:
                    gates = self._matmul(self.h_low[layer - 1], self.w[layer][0], gates, self.b[layer])
                gh = self._matmul(self.h_low[layer], self.w[layer][1], self.gh[layer], self.b_hh[layer])
                r, z, n_in, rz, _ = self._views(gates, self.gates, self.gate_views, layer)
                _, _, n_h, gh_rz, _ = self._views(gh, self.gh, self.gh_views, layer)
                rz.add_(gh_rz).sigmoid_()
                n = self._tanh_(n_h.mul_(r).add_(n_in))  # tanh(gi_n + r gh_n)
                torch.sub(h, n, out=tmp)
                torch.addcmul(n, z, tmp, out=h)  # (1 - z) n + z h
            else:
                if layer:
                    gates = self._matmul(self.both_low[layer], self.w[layer], gates, self.b[layer])
                else:
                    gates = self._matmul(self.h_low[0], self.w[0], gates, None)
                if self.kind == "lstm":
                    i, f, o, g, _, ifo = self._views(gates, self.gates, self.gate_views, layer)
                    if self.sig_tanh:  # one sigmoid for all four gates, g's turned into its tanh
                        gates.sigmoid_()
                        g.mul_(self.two).sub_(self.one)
                    else:
                        ifo.sigmoid_()
                        g.tanh_()
                    c = self.c[layer].mul_(f).addcmul_(i, g)
                    if self.sig_tanh:
                        torch.mul(c, self.two, out=tmp).sigmoid_().mul_(self.two).sub_(self.one)
                    else:
                        torch.tanh(c, out=tmp)
                    torch.mul(o, tmp, out=h)
                else:
                    h.copy_(self._tanh_(gates))
            if self.low:
                self.h_low[layer].copy_(h)
        top = self.h[-1]
        if self.ln is not None:
            top = torch.nn.functional.layer_norm(top, *self.ln)
        return torch.addmm(self.b_out, top, self.w_out, out=self.logits)


def default_prime(vocab: Vocab) -> list[int]:
    """A start symbol for unprimed sampling: newline, else space, else the vocabulary's first symbol."""
    for sym in (10, 32):
        if sym in vocab.symbols:
            return [vocab.symbols.index(sym)]
    return [0]


def prime_ids(vocab: Vocab, prime: str | None) -> tuple[list[int], bool]:
    """(ids to warm the state on, whether they are echoed at the start of the output)."""
    if not prime:
        return default_prime(vocab), False
    data = prime.encode("utf-8", "surrogateescape") if vocab.bytes_mode else prime
    try:
        return vocab.encode(data).tolist(), True
    except VocabularyError as err:
        raise VocabularyError(f"--prime: {err}") from None


def _filtered_cdf(logits: torch.Tensor, cfg: SampleConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative probabilities (B, V) of scaled logits after top-k / top-p filtering, and their totals (B, 1)."""
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= cfg.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    cdf = probs.cumsum_(dim=-1)  # (B, V), in place: probs is ours
    return cdf, cdf[:, -1:]


def _choose(logits: torch.Tensor, uniform: torch.Tensor, cfg: SampleConfig, *,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Next ids (B, 1) from scaled logits (B, V) by inverse-CDF with one uniform (B, 1) per stream."""
    if cfg.greedy:
        return torch.argmax(logits, dim=-1, keepdim=True, out=out)
    cdf, total = _filtered_cdf(logits, cfg)
    # One host read per step (a sum of positive totals is finite iff each is); the CUDA graph path checks
    # once per block instead (see _GraphStep).
    if not math.isfinite(total.item() if total.shape[0] == 1 else float(total.sum())):
        raise SamplingError("non-finite probabilities while sampling; the model's outputs overflow")
    return _draw(cdf, total, uniform, out)


def _draw(cdf: torch.Tensor, total: torch.Tensor, uniform: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Inverse CDF: ids (B, 1) from cumulative probabilities (B, V), their totals and uniforms (B, 1).

    right=True: the first index whose cdf exceeds u * total, so a filtered-out (zero-probability) symbol is
    never drawn, not even for u == 0; the clamp covers u * total rounding up to the total."""
    return torch.searchsorted(cdf, uniform * total, right=True, out=out).clamp_(max=cdf.shape[-1] - 1)


@dataclass(frozen=True)
class Generation:
    """What `generate` is about to produce: the echoed prime per stream, then a stream of id rows."""

    prime: list[int]
    steps: Iterator[torch.Tensor]


@torch.inference_mode()
def generate(model: CharRNN, vocab: Vocab, cfg: SampleConfig, *, path: str = "fast") -> Generation:
    """Start sampling `cfg.num_samples` streams; `steps` yields one (B,) id tensor per generated character."""
    if path not in ("fast", "module"):
        raise ConfigError(f"unknown stepping path {path!r}")
    model.eval()
    device = model.head.weight.device
    ids, echo = prime_ids(vocab, cfg.prime)
    B = cfg.num_samples
    x = torch.tensor(ids, device=device).expand(B, -1)  # (B, P)
    logits, hidden = model(x)  # one pass over the prime
    last = logits[:, -1].float() / cfg.temperature  # (B, V)
    gen = torch.Generator(device="cpu")
    # No seed: fresh entropy for this generator only (torch.seed() would reseed the global RNGs of a caller).
    gen.manual_seed(cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return Generation(ids if echo else [], _steps(model, cfg, last, hidden, gen, path))


def _steps(model: CharRNN, cfg: SampleConfig, logits: torch.Tensor, hidden: Hidden, gen: torch.Generator,
           path: str) -> Iterator[torch.Tensor]:
    with torch.inference_mode(), _few_threads(logits.shape[0], model.cfg.hidden, logits.device):
        device = logits.device
        B = logits.shape[0]
        stepper = None
        if path == "fast":
            stepper = FastStepper(model, cfg.temperature, batch_size=B, precision=cfg.precision)
            stepper.load(hidden)
        use_graph = USE_CUDA_GRAPHS and stepper is not None and device.type == "cuda"
        graph = _GraphStep(stepper, cfg) if use_graph else None
        state = hidden
        done = 0
        while done < cfg.length:
            block = min(UNIFORM_BLOCK, cfg.length - done)
            # (block, B, 1): drawn the same way on every path, so both give the same text
            uniforms = torch.rand(block, B, generator=gen).to(device)[:, :, None]
            chosen = torch.empty(block, B, dtype=torch.long, device=device)  # rows are yielded as views
            column = chosen[:, :, None]  # (block, B, 1), what _choose writes
            _choose(logits, uniforms[0], cfg, out=column[0])
            for t in range(block):
                yield chosen[t]
                if done + t + 1 == cfg.length:
                    break
                if graph is not None and t + 1 < block:
                    graph(chosen[t], uniforms[t + 1], column[t + 1])
                    continue
                if stepper is not None:
                    logits = stepper.step(chosen[t])
                else:
                    with autocast(device, cfg.precision), ieee_rnn(device):  # per step: a generator yields
                        out, state = model(column[t], state)
                    logits = out[:, -1].float() / cfg.temperature
                if t + 1 < block:
                    _choose(logits, uniforms[t + 1], cfg, out=column[t + 1])
            if graph is not None:
                graph.check()
            done += block


@contextmanager
def _few_threads(batch_size: int, hidden: int, device: torch.device) -> Iterator[None]:
    """One CPU thread while stepping small batches: each op is microseconds of work, and waking a second
    thread costs more than it saves (it is ruinous when the other core is busy). Restored afterwards."""
    before = torch.get_num_threads()
    small = device.type == "cpu" and batch_size * hidden <= SMALL_STEP_WORK
    if small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small and before > 1:
            torch.set_num_threads(before)


class _GraphStep:
    """The CUDA path of the fast stepper: one step plus the draw captured once as a CUDA graph and replayed,
    so a character costs one launch instead of a few dozen (issue 4). Only built when the model is on CUDA.

    The non-finite check cannot read the host inside a graph; it accumulates a flag that `check` reads once
    per block of UNIFORM_BLOCK characters.
    """

    def __init__(self, stepper: FastStepper, cfg: SampleConfig) -> None:
        device = stepper.logits.device
        B = stepper.batch_size
        self.ids_in = torch.zeros(B, dtype=torch.long, device=device)
        self.uniform = torch.zeros(B, 1, device=device)
        self.ids_out = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        saved = stepper.save_state()
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels (and cuBLAS workspaces) outside the capture
                self._body(stepper, cfg)
        torch.cuda.current_stream(device).wait_stream(stream)
        # thread_local: under DDP, NCCL's watchdog thread queries events, which a global capture forbids
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self._body(stepper, cfg)
        stepper.restore_state(saved)  # warm-up and capture stepped: undo
        self.bad.zero_()

    def _body(self, stepper: FastStepper, cfg: SampleConfig) -> None:
        logits = stepper.step(self.ids_in)
        if cfg.greedy:
            torch.argmax(logits, dim=-1, keepdim=True, out=self.ids_out)
            return
        cdf, total = _filtered_cdf(logits, cfg)
        self.bad |= ~torch.isfinite(total).all()
        _draw(cdf, total, self.uniform, self.ids_out)

    def __call__(self, ids: torch.Tensor, uniform: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self.ids_in.copy_(ids)
        self.uniform.copy_(uniform)
        self.graph.replay()
        return out.copy_(self.ids_out)

    def check(self) -> None:
        if bool(self.bad):
            raise SamplingError("non-finite probabilities while sampling; the model's outputs overflow")


def sample_text(model: CharRNN, vocab: Vocab, cfg: SampleConfig, *, path: str = "fast") -> list[str | bytes]:
    """Whole samples (prime included when given), one per stream."""
    gen = generate(model, vocab, cfg, path=path)
    rows = [torch.tensor(gen.prime, dtype=torch.long).expand(cfg.num_samples, -1).cpu()]
    rows += [step.cpu()[:, None] for step in gen.steps]
    ids = torch.cat(rows, dim=1)
    return [vocab.decode(row.tolist()) for row in ids]
