"""Drawing text from a model: warm the state on the prime in one forward pass, then one recurrent step per
character on the carried state (O(1) work per character; the text so far is never re-run).

Two stepping paths give the same text for the same seed: `fast` (default) reads the weights into a few
preallocated matrices and runs one addmm per layer per step; `module` calls the nn.LSTM/GRU/RNN itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from charnn.config import SampleConfig
from charnn.data import Vocab
from charnn.errors import ConfigError, VocabularyError
from charnn.model import CharRNN, Hidden

UNIFORM_BLOCK = 4096  # uniforms are drawn this many steps at a time, the same way on every path


class FastStepper:
    """One recurrent step for a batch of streams, with the model's weights laid out for speed.

    Layer 0's input projection is a (V, G*H) table indexed by the previous symbol (embedding @ W_ih + biases,
    computed once); the head is pre-scaled by 1/temperature so the step returns scaled logits.
    """

    def __init__(self, model: CharRNN, temperature: float = 1.0) -> None:
        cfg = model.cfg
        self.kind, self.hidden_size = cfg.model, cfg.hidden
        rnn = model.rnn
        with torch.no_grad():
            self.w_hh, self.w_ih, self.b = [], [], []
            for layer in range(cfg.layers):
                w_ih = getattr(rnn, f"weight_ih_l{layer}").float()
                w_hh = getattr(rnn, f"weight_hh_l{layer}").float()
                b_ih = getattr(rnn, f"bias_ih_l{layer}").float()
                b_hh = getattr(rnn, f"bias_hh_l{layer}").float()
                self.w_hh.append(w_hh.t().contiguous())  # (H, G*H)
                self.w_ih.append(w_ih.t().contiguous())  # (I, G*H)
                # GRU keeps b_hh apart: its candidate gate multiplies (W_hn h + b_hn) by r.
                self.b.append((b_ih, b_hh) if self.kind == "gru" else (b_ih + b_hh, None))
            emb = model.embed.weight.float()
            self.table = torch.addmm(self.b[0][0], emb, self.w_ih[0])  # (V, G*H)
            self.w_out = (model.head.weight.float().t() / temperature).contiguous()  # (H, V)
            self.b_out = (model.head.bias.float() / temperature).contiguous()

    def step(self, ids: torch.Tensor, state: list) -> torch.Tensor:
        """ids (B,) -> scaled logits (B, V); `state` (one entry per layer) is updated in place."""
        H = self.hidden_size
        x = None
        for layer, (w_hh, (b, b_hh)) in enumerate(zip(self.w_hh, self.b)):
            inp = self.table[ids] if layer == 0 else torch.addmm(b, x, self.w_ih[layer])  # (B, G*H)
            if self.kind == "lstm":
                h, c = state[layer]
                gates = inp.addmm_(h, w_hh)
                sig = gates.sigmoid()
                c = torch.addcmul(sig[:, H:2 * H] * c, sig[:, :H], gates[:, 2 * H:3 * H].tanh())
                x = sig[:, 3 * H:] * c.tanh()
                state[layer] = (x, c)
            elif self.kind == "gru":
                h = state[layer]
                gh = torch.addmm(b_hh, h, w_hh)
                rz = (inp[:, :2 * H] + gh[:, :2 * H]).sigmoid()
                n = torch.addcmul(inp[:, 2 * H:], rz[:, :H], gh[:, 2 * H:]).tanh()
                x = torch.addcmul(n, rz[:, H:], h - n)
                state[layer] = x
            else:
                x = inp.addmm_(state[layer], w_hh).tanh()
                state[layer] = x
        return torch.addmm(self.b_out, x, self.w_out)

    def state_from(self, hidden: Hidden) -> list:
        if self.kind == "lstm":
            h, c = hidden
            return [(h[i].float(), c[i].float()) for i in range(h.shape[0])]
        return [hidden[i].float() for i in range(hidden.shape[0])]


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


def _choose(logits: torch.Tensor, uniform: torch.Tensor, cfg: SampleConfig) -> torch.Tensor:
    """Next ids (B,) from scaled logits (B, V) by inverse-CDF with one uniform per stream."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= cfg.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    cdf = probs.cumsum(dim=-1)
    if not bool(torch.isfinite(cdf[:, -1]).all()):
        raise FloatingPointError("non-finite probabilities while sampling")
    total = cdf[:, -1:]
    ids = torch.searchsorted(cdf, uniform[:, None] * total)
    return ids.squeeze(1).clamp_(max=logits.shape[-1] - 1)


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
    gen.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    return Generation(ids if echo else [], _steps(model, cfg, last, hidden, gen, path))


def _steps(model: CharRNN, cfg: SampleConfig, logits: torch.Tensor, hidden: Hidden, gen: torch.Generator,
           path: str) -> Iterator[torch.Tensor]:
    with torch.inference_mode():
        device = logits.device
        B = logits.shape[0]
        stepper = FastStepper(model, cfg.temperature) if path == "fast" else None
        state = stepper.state_from(hidden) if stepper else hidden
        done = 0
        while done < cfg.length:
            block = min(UNIFORM_BLOCK, cfg.length - done)
            uniforms = torch.rand(block, B, generator=gen).to(device)
            for t in range(block):
                nxt = _choose(logits, uniforms[t], cfg)
                yield nxt
                if done + t + 1 == cfg.length:
                    break
                if stepper is not None:
                    logits = stepper.step(nxt, state)
                else:
                    out, state = model(nxt[:, None], state)
                    logits = out[:, -1].float() / cfg.temperature
            done += block


def sample_text(model: CharRNN, vocab: Vocab, cfg: SampleConfig, *, path: str = "fast") -> list[str | bytes]:
    """Whole samples (prime included when given), one per stream."""
    gen = generate(model, vocab, cfg, path=path)
    rows = [torch.tensor(gen.prime, dtype=torch.long).expand(cfg.num_samples, -1).cpu()]
    rows += [step.cpu()[:, None] for step in gen.steps]
    ids = torch.cat(rows, dim=1) if rows else torch.empty(cfg.num_samples, 0, dtype=torch.long)
    return [vocab.decode(row.tolist()) for row in ids]
