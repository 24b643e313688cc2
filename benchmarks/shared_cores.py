"""Shared cores: training and one-stream sampling speed alone, beside a busy program (a pure-Python loop) and
beside a second `charnn train`, with charnn's own thread choice and with `--threads 1`.

Training is `python -m charnn train` end to end: the median chars/s of its metrics.jsonl windows over the
steps (the first window, the warm-up, dropped); the tiny preset, the small preset (on tiny shakespeare the
same shape as the plan's default, a 2x256 LSTM at batch 16 x 64) and a 2x256 LSTM at batch 64 x 128 (where a
second thread helps most on a quiet machine). Sampling is the library's loop (`charnn.sampling.generate.sample_text`,
one stream, process start excluded) on the small preset's model trained first. The neighbour training is the tiny
preset with the same thread setting; each figure's ratio is against its own quiet figure from the same run.

    python benchmarks/shared_cores.py            # sized for about 5 minutes on a quiet 2-core machine
    python benchmarks/shared_cores.py --settings charnn,1,2   # also --threads 2, torch's choice before
    python benchmarks/shared_cores.py --quick    # the smoke test: a small shape, sampling alone, charnn's threads
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from common import REPO, load_average, machine, median, parser, repo_env

CORPUS = REPO / "data" / "tinyshakespeare.txt"
CONDITIONS = ("alone", "busy loop", "second training")
# name -> (train flags, steps, --log-every); "sample" is the sampling loop
WORKLOADS = {
    "tiny": (["--preset", "tiny"], 200, 10),
    "small": (["--preset", "small"], 100, 10),
    "2x256 b64x128": (
        ["--layers", "2", "--hidden", "256", "--embed", "256", "--batch-size", "64", "--seq-len", "128"],
        30,
        3,
    ),
    "sample": ([], 3000, 0),  # characters per timed sample
}
QUICK = {
    "tiny": (["--layers", "1", "--hidden", "64", "--embed", "32", "--batch-size", "8", "--seq-len", "32"], 30, 5),
    "sample": ([], 300, 0),
}
BUDGET = 60  # seconds at most per training figure (start-up included): a collapsed run is reported from what it managed

CHILD_SAMPLE = r"""
import statistics, sys, time
threads, run, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
if threads != "charnn":
    torch.set_num_threads(int(threads))
from charnn.config import SampleConfig
from charnn.store.rundir import load_run
from charnn.sampling.generate import sample_text
loaded = load_run(run)
sample_text(loaded.model, loaded.vocab, SampleConfig(length=100, seed=0))  # warm-up
rates = []
for seed in range(3):
    start = time.perf_counter()
    sample_text(loaded.model, loaded.vocab, SampleConfig(length=length, seed=seed + 1))
    rates.append(length / (time.perf_counter() - start))
print(statistics.median(rates))
"""


def train_command(
    flags: list[str], corpus: Path, out: Path, steps: int, log_every: int, threads: str, cache: Path
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "charnn",
        "train",
        str(corpus),
        *flags,
        "--max-iters",
        str(steps),
        "--log-every",
        str(log_every),
        "--eval-every",
        str(10**6),
        "--sample-length",
        "0",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--device",
        "cpu",
        "--val-frac",
        "0.01",
    ]  # the run's closing validation pass kept short: it is not measured
    return cmd if threads == "charnn" else [*cmd, "--threads", threads]


def train_rate(cmd: list[str], out: Path) -> tuple[float, str]:
    """Median chars/s of the run's metrics windows after the first (all of them when there are fewer than 3),
    and the thread counts the run chose (its `plan: threads:` lines, the first and each change)."""
    try:
        done = subprocess.run(cmd, env=repo_env(), timeout=BUDGET, capture_output=True, text=True)
        stderr = done.stderr
    except subprocess.TimeoutExpired as stopped:  # collapsed: the windows it logged say how fast it went
        stderr = stopped.stderr.decode(errors="replace") if isinstance(stopped.stderr, bytes) else stopped.stderr
    else:
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    chosen = [
        line.split("plan: threads: ", 1)[1].split(" ", 1)[0]
        for line in (stderr or "").splitlines()
        if "plan: threads: " in line
    ]
    rates = [row["chars_per_s"] for row in read_metrics(out) if row.get("kind") == "train"]
    rate = median(rates[1:] if len(rates) >= 3 else rates) if rates else 0.0
    return rate, "->".join(chosen)


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def sample_rate(run: Path, length: int, threads: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD_SAMPLE, threads, str(run), str(length)],
        env=repo_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=BUDGET * 3,
    )
    return float(done.stdout.strip().splitlines()[-1])


@contextmanager
def beside(condition: str, *, corpus: Path, tmp: Path, threads: str, cache: Path, flags: list[str]):
    """The neighbour of `condition`, started and working (a training has logged a line) until the block ends."""
    if condition == "alone":
        yield
        return
    if condition == "busy loop":
        cmd = [sys.executable, "-c", "while True: pass"]
    else:
        out = tmp / f"neighbour-{time.monotonic_ns()}"
        cmd = train_command(flags, corpus, out, 10**6, 5, threads, cache)
    proc = subprocess.Popen(cmd, env=repo_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while condition != "busy loop" and not read_metrics(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        if proc.poll() is not None:
            sys.exit(f"the {condition} beside the measured run ended early: {' '.join(cmd)}")
        yield
    finally:
        proc.kill()
        proc.wait()


def measure(
    name: str,
    spec,
    condition: str,
    threads: str,
    *,
    corpus: Path,
    tmp: Path,
    cache: Path,
    sample_run: Path | None,
    neighbour: list[str],
) -> tuple[float, str]:
    """chars/s, and the thread counts a training chose ("" for sampling)."""
    flags, steps, log_every = spec
    with beside(condition, corpus=corpus, tmp=tmp, threads=threads, cache=cache, flags=neighbour):
        if name == "sample":
            return sample_rate(sample_run, steps, threads), ""
        out = tmp / f"{name.replace(' ', '-')}-{threads}-{condition.replace(' ', '-')}"
        return train_rate(train_command(flags, corpus, out, steps, log_every, threads, cache), out)


def main() -> None:
    ap = parser(__doc__, "a small training shape, sampling alone, charnn's thread choice only (a smoke test)")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument(
        "--settings",
        default="charnn,1",
        help="thread settings, comma-separated: charnn (no --threads) or a count (2: torch's old default)",
    )
    args = ap.parse_args()
    workloads = QUICK if args.quick else WORKLOADS
    settings = ("charnn",) if args.quick else tuple(args.settings.split(","))
    machine(threads=None, settings=",".join(settings))
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        corpus, cache = args.corpus, tmp / "cache"
        if args.quick:  # a few seconds of text is enough for a few steps
            corpus = tmp / "corpus.txt"
            corpus.write_text(args.corpus.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
        neighbour = QUICK["tiny"][0] if args.quick else WORKLOADS["tiny"][0]
        sampled = "tiny" if args.quick else "small"  # the default plan's 2x256 shape: its run, trained alone
        sample_run = tmp / f"{sampled}-{settings[0]}-alone"
        for name, spec in workloads.items():
            for threads in settings:
                quiet = None
                for condition in CONDITIONS if name != "sample" or not args.quick else CONDITIONS[:1]:
                    rate, chosen = measure(
                        name,
                        spec,
                        condition,
                        threads,
                        corpus=corpus,
                        tmp=tmp,
                        cache=cache,
                        sample_run=sample_run,
                        neighbour=neighbour,
                    )
                    quiet = quiet or rate
                    rows.append(
                        {
                            "workload": name,
                            "threads": threads,
                            "condition": condition,
                            "chars_per_s": round(rate),
                            "ratio": round(rate / quiet, 3) if quiet else None,
                            "chose": chosen,
                        }
                    )
                    print(
                        f"{name:>14} | threads {threads:>6} | {condition:>15} | {rate:>9,.0f} chars/s | "
                        f"ratio {rows[-1]['ratio']} | took {chosen or '-'}",
                        flush=True,
                    )
    table(rows, settings)
    busy = [r["ratio"] for r in rows if r["condition"] != "alone" and r["ratio"] is not None]
    print(json.dumps({"rows": rows, "worst_busy_ratio": min(busy, default=None), "load_average_after": load_average()}))


def table(rows: list[dict], settings: tuple[str, ...]) -> None:
    """One line per workload: each thread setting's figure alone and beside each neighbour, as ratios."""
    print("\nchars/s (ratio to the same setting alone)")
    heads = [f"{c} ({s})" for s in settings for c in CONDITIONS]
    print("| workload | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    for name in dict.fromkeys(r["workload"] for r in rows):
        cells = [
            f"{r['chars_per_s']:,} ({r['ratio']}x)"
            for s in settings
            for c in CONDITIONS
            for r in rows
            if r["workload"] == name and r["threads"] == s and r["condition"] == c
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
