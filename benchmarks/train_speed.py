"""Training speed: `charnn.training.train`'s steady-state chars/s against the bare loop of the same model, in one run.

The bare loop is forward + backward + clip + Adam on resident random data (no data pipeline, no logging):
the ceiling for the shape. charnn is measured through `charnn.training.train` itself, evaluation and sampling out of
the way, from the timestamps of its own log events (first window dropped). The two alternate for `--rounds`
rounds and the ratio is taken per round (the machine is shared and noisy: only ratios mean anything).

With evaluation, checkpoints and samples amortised: each `charnn.training.train` run ends with one validation pass, one
checkpoint and one sample, timed from the events; their cost is spread over `--schedule-steps` steps of the
default schedule (evaluate + checkpoint every 250 steps, samples at 100, 300, 700 and every 1000).

Peak RSS: `charnn.training.train` and a plain hand-written trainer of the same shape (embedding, nn.LSTM, linear, Adam,
the state carried across batches; train, then score the validation split) each run `--rss-steps` steps in a
fresh subprocess that reports its ru_maxrss.

    python benchmarks/train_speed.py                 # 2x256 LSTM, embed 256, batch 64, seq 128 (~2 minutes)
    python benchmarks/train_speed.py --quick         # tiny shapes, a few seconds (the CI smoke test)
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline import bare_loop, synthetic_corpus
from common import REPO, interleaved, load_average, machine, median, median_ratio, parser, repo_env

DEFAULT_CORPUS = REPO / "data" / "tinyshakespeare.txt"


def charnn_run(args, corpus: Path, out_dir: Path, steps: int, precision: str = "fp32") -> dict:
    """One `charnn.training.train` run: steady-state chars/s, then the end-of-run eval, checkpoint and sample times."""
    import charnn

    events: list[tuple[float, object]] = []
    model_cfg = charnn.ModelConfig(model="lstm", layers=args.layers, hidden=args.hidden, embed=args.embed)
    train_cfg = charnn.TrainConfig(
        batch_size=args.batch,
        seq_len=args.seq,
        max_iters=steps,
        warmup_iters=0,
        eval_every=10**9,
        log_every=args.log_every,
        device="cpu",
        threads=args.threads,
        seed=1,
        precision=precision,
    )
    charnn.train(
        corpus,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        out_dir=out_dir,
        on_progress=lambda p: events.append((time.perf_counter(), p)),
    )
    logs = [(t, p) for t, p in events if p.kind == "log"]
    (t_first, p_first), (t_last, p_last) = logs[0], logs[-1]
    rate = (p_last.step - p_first.step) * args.batch * args.seq / (t_last - t_first)

    def after(kind: str) -> float:  # wall time from the previous event to the first `kind` after the last log
        for i, (t, p) in enumerate(events):
            if p.kind == kind and t >= t_last:
                return t - events[i - 1][0]
        return 0.0

    return {"rate": rate, "eval_s": after("eval"), "checkpoint_s": after("checkpoint"), "sample_s": after("sample")}


def schedule_counts(steps: int, eval_every: int = 250) -> tuple[int, int]:
    """(evaluations + checkpoints, samples) of the default TrainConfig schedule over `steps` steps."""
    samples = sum(1 for s in range(1, steps + 1) if s in (100, 300, 700) or (s >= 1000 and s % 1000 == 0))
    return max(steps // eval_every, 1), max(samples, 1)


CHILD_CHARNN = r"""
import resource, sys, charnn
corpus, out, steps, layers, hidden, embed, batch, seq, threads = sys.argv[1:]
charnn.train(corpus, out_dir=out,
             model_cfg=charnn.ModelConfig(layers=int(layers), hidden=int(hidden), embed=int(embed)),
             train_cfg=charnn.TrainConfig(batch_size=int(batch), seq_len=int(seq), max_iters=int(steps),
                                          eval_every=10**9, device="cpu", threads=int(threads), seed=1))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

# The plain trainer: what a user writes by hand (embedding, nn.LSTM, linear; Adam; the state carried across
# batches) and its whole-split validation, nothing else.
CHILD_PLAIN = r"""
import resource, sys, torch, torch.nn as nn, torch.nn.functional as F
corpus, out, steps, layers, hidden, embed, batch, seq, threads = sys.argv[1:]
torch.set_num_threads(int(threads)); torch.manual_seed(1)
text = open(corpus, encoding="utf-8").read()
chars = sorted(set(text)); stoi = {c: i for i, c in enumerate(chars)}
ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
n_train = int(len(ids) * 0.9); train_ids, val_ids = ids[:n_train], ids[n_train:]
B, T = int(batch), int(seq); L = len(train_ids) // B; streams = train_ids[:B * L].view(B, L)
class CharLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(len(chars), int(embed))
        self.lstm = nn.LSTM(int(embed), int(hidden), int(layers), batch_first=True)
        self.head = nn.Linear(int(hidden), len(chars))
    def forward(self, x, state=None):
        out, state = self.lstm(self.emb(x), state)
        return self.head(out), state
model = CharLSTM(); opt = torch.optim.Adam(model.parameters(), lr=2e-3); state = None; pos = 0
for step in range(int(steps)):
    if pos + T + 1 > L:
        pos, state = 0, None
    x, y = streams[:, pos:pos + T], streams[:, pos + 1:pos + T + 1]
    if state is not None:
        state = tuple(s.detach() for s in state)
    logits, state = model(x, state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad(set_to_none=True); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0); opt.step(); loss.item(); pos += T
with torch.no_grad():
    state = None
    for i in range(0, len(val_ids) - 1, 1024):
        x = val_ids[i:i + 1024][None]; y = val_ids[i + 1:i + 1025][None]; x = x[:, :y.shape[1]]
        logits, state = model(x, state)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(code: str, args, corpus: Path, out: Path) -> float:
    argv = [
        str(corpus),
        str(out),
        str(args.rss_steps),
        str(args.layers),
        str(args.hidden),
        str(args.embed),
        str(args.batch),
        str(args.seq),
        str(args.threads),
    ]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=repo_env(), check=True
    )
    return int(done.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def amortised_rate(args, med: dict[str, float]) -> float:
    """chars/s over `--schedule-steps` steps of the default schedule, its evaluations, checkpoints and samples
    costed at what the end of each run measured."""
    n_eval, n_sample = schedule_counts(args.schedule_steps)
    step_s = args.batch * args.seq / med["rate"]
    total_s = args.schedule_steps * step_s + n_eval * (med["eval_s"] + med["checkpoint_s"]) + n_sample * med["sample_s"]
    return args.schedule_steps * args.batch * args.seq / total_s


def measures(args, corpus: Path, tmp: Path, bf16: bool) -> dict:
    """One round: charnn in fp32, the bare loop; with `bf16` (charnn's default on this CPU) the same pair again
    under bf16 autocast, so each precision is compared with the bare loop in that precision."""
    count = itertools.count()
    steps = max(args.steps - args.log_every, 1)
    shape = (args.layers, args.hidden, args.embed, args.batch, args.seq)
    pairs = {
        "charnn": lambda: charnn_run(args, corpus, tmp / f"run{next(count)}", args.steps, "fp32"),
        "bare": lambda: bare_loop(*shape, steps=steps, warmup=2),
    }
    if bf16:
        pairs["charnn_auto"] = lambda: charnn_run(args, corpus, tmp / f"auto{next(count)}", args.steps, "auto")
        pairs["bare_bf16"] = lambda: bare_loop(*shape, steps=steps, warmup=2, bf16=True)
    return pairs


def print_round(r: int, got: dict[str, list]) -> None:
    run, bare = got["charnn"][-1], got["bare"][-1]
    print(
        f"round {r + 1}: fp32: charnn {run['rate']:,.0f} chars/s, bare loop {bare:,.0f} chars/s, "
        f"ratio {run['rate'] / bare:.3f}; end-of-run eval {run['eval_s']:.2f}s, checkpoint "
        f"{run['checkpoint_s']:.2f}s, sample {run['sample_s']:.2f}s",
        flush=True,
    )
    if "charnn_auto" in got:
        auto, bare16 = got["charnn_auto"][-1]["rate"], got["bare_bf16"][-1]
        print(
            f"round {r + 1}: bf16 autocast: charnn {auto:,.0f} chars/s, bare loop {bare16:,.0f} chars/s, "
            f"ratio {auto / bare16:.3f}",
            flush=True,
        )


def options():
    ap = parser(__doc__, quick="tiny shapes and few steps: checks that it runs")
    ap.add_argument("--corpus", type=Path, default=None, help="text file [default: data/tinyshakespeare.txt]")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both [default: torch's]")
    ap.add_argument("--steps", type=int, default=10, help="training steps per charnn run per round")
    ap.add_argument("--log-every", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of charnn and the bare loop")
    ap.add_argument("--rss-steps", type=int, default=6, help="steps of each peak-RSS subprocess")
    ap.add_argument("--schedule-steps", type=int, default=2000, help="run length the amortised ratio assumes")
    return ap.parse_args()


def main() -> None:
    args = options()
    import torch

    if args.quick:
        args.layers, args.hidden, args.embed, args.batch, args.seq = 1, 32, 16, 8, 32
        args.steps, args.log_every, args.rounds, args.rss_steps = 6, 2, 1, 1
        args.threads = args.threads or 1  # tiny ops: a second thread only adds contention
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = args.corpus or (DEFAULT_CORPUS if DEFAULT_CORPUS.exists() and not args.quick else None)
        corpus = corpus or synthetic_corpus(tmp / "corpus.txt", 60_000 if args.quick else 1_000_000)
        machine(args.threads)
        print(
            f"shape: {args.layers}x{args.hidden} lstm, embed {args.embed}, batch {args.batch}, "
            f"seq {args.seq}; corpus {corpus}",
            flush=True,
        )
        from charnn.runtime import uses_bf16

        bf16 = uses_bf16(torch.device("cpu"), "auto", training=True) and not args.quick
        print(f"charnn's auto precision on this CPU: {'bf16 autocast' if bf16 else 'fp32'}", flush=True)
        got = interleaved(args.rounds, measures(args, corpus, tmp, bf16), on_repeat=print_round)
        med = {k: median(run[k] for run in got["charnn"]) for k in got["charnn"][0]}  # rate, eval_s, ...
        bare = median(got["bare"])
        ratio_loop = median_ratio((run["rate"] for run in got["charnn"]), got["bare"])
        rate_auto, ratio_auto = med["rate"], ratio_loop  # fp32 unless this CPU trains in bf16 by default
        if bf16:
            rate_auto = median(run["rate"] for run in got["charnn_auto"])
            ratio_auto = median_ratio((run["rate"] for run in got["charnn_auto"]), got["bare_bf16"])
        amortised = amortised_rate(args, med)
        rss_charnn = peak_rss_mb(CHILD_CHARNN, args, corpus, tmp / "rss-run")
        rss_plain = peak_rss_mb(CHILD_PLAIN, args, corpus, tmp / "rss-plain")

    result = {
        "charnn_chars_per_s": round(med["rate"]),
        "bare_chars_per_s": round(bare),
        "ratio_loop": round(ratio_loop, 3),
        "ratio_amortised": round(amortised / bare, 3),
        "amortised_chars_per_s": round(amortised),
        "schedule_steps": args.schedule_steps,
        "eval_s": round(med["eval_s"], 3),
        "checkpoint_s": round(med["checkpoint_s"], 3),
        "sample_s": round(med["sample_s"], 3),
        "peak_rss_mb_charnn": round(rss_charnn, 1),
        "peak_rss_mb_plain": round(rss_plain, 1),
        "rss_ratio": round(rss_charnn / rss_plain, 3),
        "rounds": args.rounds,
        "threads": args.threads,
        "auto_precision": "bf16" if bf16 else "fp32",
        "charnn_auto_chars_per_s": round(rate_auto),
        "ratio_loop_auto": round(ratio_auto, 3),
        "load_average": load_average(),
    }
    print(f"ratio (fp32, loop only, median of {args.rounds}): {result['ratio_loop']:.3f}  (target >= 0.97)")
    print(
        f"ratio (charnn's auto precision vs the bare loop in it): {result['ratio_loop_auto']:.3f}; "
        f"charnn auto {result['charnn_auto_chars_per_s']:,} vs bare fp32 {result['bare_chars_per_s']:,}"
    )
    print(
        f"ratio (eval + checkpoint every 250 steps, samples, amortised over {args.schedule_steps} steps): "
        f"{result['ratio_amortised']:.3f}"
    )
    print(
        f"peak RSS: charnn {rss_charnn:,.0f} MB, plain trainer {rss_plain:,.0f} MB, "
        f"ratio {result['rss_ratio']:.3f}  (target <= 1)"
    )
    print(json.dumps(result))
    assert math.isfinite(result["ratio_loop"])


if __name__ == "__main__":
    main()
