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

UNIFORM_BLOCK = 4096  # uniforms are drawn this many steps at a time, the same way on every path
USE_CUDA_GRAPHS = True  # the fast path replays one captured step on CUDA; tests turn it off to compare
SMALL_STEP_WORK = 8 * 256  # batch x hidden up to which the CPU stepper uses one thread (measured, issue 4)


class FastStepper:
    """One recurrent step for a batch of `B` streams, with the model's weights laid out for speed.

    At one character per step the arithmetic is small (about 2 MFLOP for 2x256) and the cost is the number of
    tensor ops, so everything that can be is hoisted out of the step (issue 4):
    - layer 0's input projection is a (V, G*H) table indexed by the previous symbol (embedding @ W_ih + b);
    - an LSTM/RNN layer above the first does one addmm on [h_below, h] against the stacked [W_ih; W_hh];
    - LSTM gate columns are reordered to (i, f, o, g), so one sigmoid covers three gates;
    - the head is pre-scaled by 1/temperature, and every result goes into a buffer allocated once (`out=`).
    The hidden states of all layers live side by side in one (B, L*H) buffer, so layer l's [h_below, h] is a
    plain view of it. `step` returns a view of the logits buffer, overwritten by the next step.
    """

    def __init__(self, model: CharRNN, temperature: float = 1.0, batch_size: int = 1) -> None:
        cfg = model.cfg
        self.kind, self.layers, self.batch_size = cfg.model, cfg.layers, batch_size
        H = self.hidden_size = cfg.hidden
        G = GATES[cfg.model]
        rnn, device = model.rnn, model.head.weight.device
        order = torch.arange(G * H, device=device)
        if self.kind == "lstm":  # nn.LSTM's (i, f, g, o) -> (i, f, o, g)
            order = torch.cat([order[:2 * H], order[3 * H:], order[2 * H:3 * H]])
        with torch.no_grad():
            self.w, self.b, self.b_hh = [], [], []
            for layer in range(cfg.layers):
                w_ih = getattr(rnn, f"weight_ih_l{layer}").float()[order].t()  # (I, G*H)
                w_hh = getattr(rnn, f"weight_hh_l{layer}").float()[order].t()  # (H, G*H)
                b_ih = getattr(rnn, f"bias_ih_l{layer}").float()[order]
                b_hh = getattr(rnn, f"bias_hh_l{layer}").float()[order]
                if self.kind == "gru":
                    # GRU keeps b_hh apart: its candidate gate multiplies (W_hn h + b_hn) by r.
                    self.b.append(b_ih.contiguous())
                    self.b_hh.append(b_hh.contiguous())
                    self.w.append((w_ih.contiguous(), w_hh.contiguous()))
                else:
                    self.b.append((b_ih + b_hh).contiguous())
                    self.b_hh.append(None)
                    stacked = w_hh if layer == 0 else torch.cat([w_ih, w_hh])  # (H or 2H, G*H)
                    self.w.append(stacked.contiguous())
                if layer == 0:
                    self.table = torch.addmm(self.b[0], model.embed.weight.float(), w_ih)  # (V, G*H)
            self.w_out = (model.head.weight.float().t() / temperature).contiguous()  # (H, V)
            self.b_out = (model.head.bias.float() / temperature).contiguous()
        B, L = batch_size, cfg.layers
        self.hs = torch.zeros(B, L * H, device=device)  # (B, L*H): h of every layer, side by side
        self.c = [torch.zeros(B, H, device=device) for _ in range(L)] if self.kind == "lstm" else []
        self.gates = [torch.empty(B, G * H, device=device) for _ in range(L)]
        self.gh = [torch.empty(B, G * H, device=device) for _ in range(L)] if self.kind == "gru" else []
        self.tmp = torch.empty(B, H, device=device)
        self.logits = torch.empty(B, len(self.b_out), device=device)
        # Views, made once: slicing costs about as much as a small op.
        self.h = [self.hs[:, i * H:(i + 1) * H] for i in range(L)]
        self.below_and_h = [self.hs[:, (i - 1) * H:(i + 1) * H] if i else None for i in range(L)]
        cut = [[g[:, k * H:(k + 1) * H] for k in range(G)] for g in self.gates]
        if self.kind == "lstm":  # (i, f, o, g), the first three squashed by one sigmoid
            self.lstm_views = [(g[:, :3 * H], *parts) for g, parts in zip(self.gates, cut, strict=True)]
        elif self.kind == "gru":  # (r, z, n) of the input and hidden projections
            self.gru_views = [(g[:, :2 * H], gh[:, :2 * H], parts[0], parts[1], parts[2], gh[:, 2 * H:])
                              for g, gh, parts in zip(self.gates, self.gh, cut, strict=True)]

    def load(self, hidden: Hidden) -> None:
        """Copy a module-shaped hidden state ((L, B, H), or a pair for LSTM) into the stepper's buffers."""
        h = hidden[0] if self.kind == "lstm" else hidden
        for i in range(self.layers):
            self.h[i].copy_(h[i])
            if self.kind == "lstm":
                self.c[i].copy_(hidden[1][i])

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> scaled logits (B, V), a view of a buffer the next step overwrites."""
        for layer in range(self.layers):
            gates, h = self.gates[layer], self.h[layer]
            if self.kind == "gru":
                gi_rz, gh_rz, r, z, gi_n, gh_n = self.gru_views[layer]
                if layer == 0:
                    torch.index_select(self.table, 0, ids, out=gates)  # (B, 3H)
                else:
                    torch.addmm(self.b[layer], self.h[layer - 1], self.w[layer][0], out=gates)
                torch.addmm(self.b_hh[layer], h, self.w[layer][1], out=self.gh[layer])
                gi_rz.add_(gh_rz).sigmoid_()
                n = gh_n.mul_(r).add_(gi_n).tanh_()
                torch.sub(h, n, out=self.tmp)
                torch.addcmul(n, z, self.tmp, out=h)  # (1 - z) n + z h
                continue
            if layer == 0:
                torch.index_select(self.table, 0, ids, out=gates)  # (B, G*H)
                gates.addmm_(h, self.w[0])
            else:
                torch.addmm(self.b[layer], self.below_and_h[layer], self.w[layer], out=gates)
            if self.kind == "lstm":
                ifo, i, f, o, g = self.lstm_views[layer]
                ifo.sigmoid_()
                g.tanh_()
                c = self.c[layer].mul_(f).addcmul_(i, g)
                torch.tanh(c, out=self.tmp)
                torch.mul(o, self.tmp, out=h)
            else:
                torch.tanh(gates, out=h)
        return torch.addmm(self.b_out, self.h[-1], self.w_out, out=self.logits)


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
    # right=True: the first index whose cdf exceeds u * total, so a filtered-out (zero-probability) symbol is
    # never drawn, not even for u == 0; the clamp covers u * total rounding up to the total.
    return torch.searchsorted(cdf, uniform * total, right=True, out=out).clamp_(max=cdf.shape[-1] - 1)  # (B, 1)


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
            stepper = FastStepper(model, cfg.temperature, batch_size=B)
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
        saved = [t.clone() for t in stepper.h + stepper.c]
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels (and cuBLAS workspaces) outside the capture
                self._body(stepper, cfg)
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.cuda.graph(self.graph):
            self._body(stepper, cfg)
        for t, s in zip(stepper.h + stepper.c, saved, strict=True):  # warm-up and capture stepped: undo
            t.copy_(s)
        self.bad.zero_()

    def _body(self, stepper: FastStepper, cfg: SampleConfig) -> None:
        logits = stepper.step(self.ids_in)
        if cfg.greedy:
            torch.argmax(logits, dim=-1, keepdim=True, out=self.ids_out)
            return
        cdf, total = _filtered_cdf(logits, cfg)
        self.bad |= ~torch.isfinite(total).all()
        torch.searchsorted(cdf, self.uniform * total, right=True, out=self.ids_out).clamp_(max=cdf.shape[-1] - 1)

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
