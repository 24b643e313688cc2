#!/usr/bin/env python3
"""The cold start: how a trained model does from the zero state that sampling, evaluation, beam search, the server
and the exports start from, against the same model with its state carried.

For each run (its best checkpoint, which sample, eval and the exports use) and its validation split: N windows of
256 characters at random offsets (a fixed seed), each scored from the zero state; the mean loss in nats/char of
characters 0-16, 16-64 and 64-256 (by then the state carries 64+ characters of context: "steady"), their ratio
cold/steady, the whole split's validation loss as training logged it, and the greedy continuation of each prime:
its longest run of one character (8 or more is a model stuck repeating itself).

With --train CORPUS it first trains one run per --state-reset value and seed (`charnn train CORPUS --seed S
--state-reset P --threads 1` and the flags after --), one after the other, then prints a row per run and the mean
of each value over the seeds. Without it, it scores the RUN directories given.

    python benchmarks/cold_start.py --train data/tinyshakespeare.txt --resets 0,0.01,0.05 --seeds 1,2 \\
        -- --preset tiny --max-iters 2500                                 # ~6 runs of about a minute each
    python benchmarks/cold_start.py RUN [RUN...] --prime "ROMEO:"         # score runs already trained
    python benchmarks/cold_start.py --quick                               # a few seconds
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import REPO, machine, parser, repo_env

from charnn.config import SampleConfig
from charnn.evaluate import evaluate_validation, validation_ids
from charnn.model import lm_loss
from charnn.sampling.generate import sample_text
from charnn.store.rundir import load_run

SPANS = {"cold_0_16": (0, 16), "warm_16_64": (16, 64), "steady_64_256": (64, 256)}
WINDOW = 256
STUCK = 8  # one character this many times in a row: a greedy continuation that fell into a loop


def window_losses(model: torch.nn.Module, ids: np.ndarray, *, windows: int, seed: int) -> torch.Tensor:
    """(N, WINDOW) per-character losses of N random windows of `ids`, each scored from the zero state (fp32)."""
    starts = np.random.default_rng(seed).integers(0, len(ids) - WINDOW - 1, size=windows)
    rows = torch.from_numpy(np.stack([ids[s : s + WINDOW + 1] for s in starts]).astype(np.int64))  # (N, W+1)
    model.eval()
    with torch.no_grad():
        logits, _ = model(rows[:, :-1])  # (N, W, V)
        return lm_loss(logits, rows[:, 1:], reduction="none").view(windows, WINDOW)


def longest_run(text: str) -> tuple[int, str]:
    """The longest run of one character in `text`: (its length, the character)."""
    best, best_ch, run = 0, "", 0
    for i, ch in enumerate(text):
        run = run + 1 if i and ch == text[i - 1] else 1
        if run > best:
            best, best_ch = run, ch
    return best, best_ch


def greedy_continuations(loaded, primes: list[str], length: int) -> list[dict]:
    out = []
    for prime in primes:
        text = sample_text(loaded.model, loaded.vocab, SampleConfig(prime=prime, greedy=True, length=length))[0]
        tail = text[len(prime) :] if isinstance(text, str) else text[len(prime) :].decode("utf-8", "replace")
        run, ch = longest_run(tail)
        out.append({"prime": prime, "longest_run": run, "of": ch, "stuck": run >= STUCK, "start": tail[:60]})
    return out


def score(run_dir: Path, *, windows: int, seed: int, primes: list[str], length: int) -> dict:
    loaded = load_run(run_dir)  # the best checkpoint, which sample, eval and the exports use
    losses = window_losses(loaded.model, validation_ids(loaded), windows=windows, seed=seed)
    row: dict = {"run": run_dir.name, "step": loaded.step}
    for name, (a, b) in SPANS.items():
        row[name] = round(float(losses[:, a:b].mean()), 4)
    row["cold_ratio"] = round(row["cold_0_16"] / row["steady_64_256"], 3)
    row["val_loss"] = round(evaluate_validation(loaded).loss, 4)
    cfg = json.loads((run_dir / "config.json").read_text())["train"]
    row["state_reset"], row["seed"] = cfg.get("state_reset", 0.0), cfg["seed"]
    row["greedy"] = greedy_continuations(loaded, primes, length)
    row["stuck"] = sum(g["stuck"] for g in row["greedy"])
    return row


def train_runs(args, workdir: Path) -> list[Path]:
    env, runs = repo_env(OMP_NUM_THREADS="1"), []
    for seed in args.seeds.split(","):
        for share in args.resets.split(","):
            run_dir = workdir / f"reset{share}-seed{seed}"
            cmd = [sys.executable, "-m", "charnn", "train", str(args.train.resolve()), "--out", str(run_dir), "--quiet"]
            cmd += ["--seed", seed, "--state-reset", share, "--threads", "1", *args.extra]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
            if done.returncode != 0:
                sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
            print(f"trained {run_dir.name}", flush=True)
            runs.append(run_dir)
    return runs


def print_table(rows: list[dict]) -> list[dict]:
    """One line per run, then the mean of each --state-reset value over its seeds (returned)."""
    head = f"{'run':<22}{'0-16':>8}{'16-64':>8}{'64-256':>8}{'ratio':>7}{'val':>8}{'stuck':>7}  greedy after the prime"
    print("\n" + head)
    for r in rows:
        g = r["greedy"][0]
        print(
            f"{r['run']:<22}{r['cold_0_16']:>8.4f}{r['warm_16_64']:>8.4f}{r['steady_64_256']:>8.4f}"
            f"{r['cold_ratio']:>7.3f}{r['val_loss']:>8.4f}{r['stuck']:>4}/{len(r['greedy'])}  {g['start'][:40]!r}"
        )
    means = []
    for share in sorted({r["state_reset"] for r in rows}):
        group = [r for r in rows if r["state_reset"] == share]
        mean = {"state_reset": share, "runs": len(group), "stuck": sum(r["stuck"] for r in group)}
        for key in (*SPANS, "cold_ratio", "val_loss"):
            mean[key] = round(statistics.mean(r[key] for r in group), 4)
        means.append(mean)
        print(
            f"{'mean reset ' + format(share, 'g'):<22}{mean['cold_0_16']:>8.4f}{mean['warm_16_64']:>8.4f}"
            f"{mean['steady_64_256']:>8.4f}{mean['cold_ratio']:>7.3f}{mean['val_loss']:>8.4f}"
            f"{mean['stuck']:>4}/{sum(len(r['greedy']) for r in group)}"
        )
    return means


def main() -> None:
    ap = parser(__doc__, "train two tiny runs on a slice of tiny shakespeare and score them")
    ap.add_argument("runs", nargs="*", type=Path, help="run directories to score")
    ap.add_argument("--train", type=Path, default=None, help="train the runs on this corpus first")
    ap.add_argument("--resets", default="0,0.01,0.05", help="comma-separated --state-reset values to train")
    ap.add_argument("--seeds", default="1,2", help="comma-separated training seeds")
    ap.add_argument("--workdir", type=Path, default=None, help="where trained runs go (default: a temp dir)")
    ap.add_argument("--windows", type=int, default=200, help="validation windows scored from the zero state")
    ap.add_argument("--seed", type=int, default=0, help="seed of the windows' offsets")
    ap.add_argument("--prime", action="append", default=None, help="a prime for the greedy continuation (repeat)")
    ap.add_argument("--length", type=int, default=200, help="characters of each greedy continuation")
    ap.epilog = "`charnn train` flags go after --, e.g. -- --preset tiny --max-iters 2500"
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]
    torch.set_num_threads(1)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="charnn-cold-"))).resolve()
    if args.quick:
        small = workdir / "corpus.txt"
        small.write_text((REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:40_000])
        args.train, args.resets, args.seeds, args.windows = small, "0,0.05", "1", 20
        args.extra = ["--preset", "tiny", "--max-iters", "30", "--eval-every", "30", "--sample-length", "0"]
    machine(1)
    runs = list(args.runs) + (train_runs(args, workdir) if args.train else [])
    if not runs:
        ap.error("give RUN directories, or --train CORPUS")
    primes = args.prime or ["ROMEO:"]
    rows = [score(r, windows=args.windows, seed=args.seed, primes=primes, length=args.length) for r in runs]
    means = print_table(rows)
    machine(1)  # the load again
    print(json.dumps({"rows": rows, "means": means}))


if __name__ == "__main__":
    main()
