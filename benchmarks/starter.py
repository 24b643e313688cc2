#!/usr/bin/env python3
"""Build the starter model shipped in the package (`charnn sample shakespeare`): train it on the bundled tiny
shakespeare with a fixed seed and a fixed number of steps (no time budget, so the machine's load changes how long
the build takes, not what it makes), convert the best checkpoint to 16-bit weights, score those on the corpus's
validation split, and write the model file and its manifest entry into charnn/store/models/.

    python benchmarks/starter.py                 # the shipped model: about 10 minutes on a loaded 2-core CPU
    python benchmarks/starter.py --quick         # a few steps into a temporary folder: checks the script runs
    python benchmarks/starter.py --compare corpora/prose-20k.txt corpora/prose-50k.txt --steps 400 --seconds 120

`--compare` measures what the starter is worth: on each corpus (benchmarks/fit.py --build writes the fit matrix's),
training from scratch (the plan's model, the same shape as the starter's) against fine-tuning from the starter
(`--init-from shakespeare`), at equal steps (`--max-iters`) and at equal wall time (`--time-budget`), same seed;
the figure is each run's best validation loss in nats/char on the corpus's validation split.

The same command on the same kind of CPU gives the same weights; tests/test_starter.py checks the shipped file's
sha256 and validation loss against the manifest. A CPU without native bf16 trains in fp32 and makes other weights.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, parser, repo_env

NAME = "shakespeare"
CORPUS = REPO / "data" / "tinyshakespeare.txt"
# The model and its schedule, every option the plan would otherwise choose given explicitly: the `small` preset's
# model and batch shape (the plan's model for small corpora, so a fine-tune keeps the model a new run would get),
# for half its steps. A flag with the value None is a switch.
FLAGS: dict[str, str | None] = {
    "--model": "lstm",
    "--layers": "2",
    "--hidden": "256",
    "--embed": "128",
    "--dropout": "0",
    "--layer-norm": None,
    "--batch-size": "16",
    "--seq-len": "64",
    "--lr": "3e-3",
    "--warmup-iters": "50",
    "--weight-decay": "0.1",
    "--max-iters": "4000",
    "--eval-every": "1000",
    "--patience": "0",
    "--seed": "0",
    # One thread: on a shared 2-core machine two threads wait for each other whenever another program holds a core
    # (60 steps at load 7: 13 s with one thread, over 100 s with two).
    "--threads": "1",
}
QUICK = {"--max-iters": "20", "--eval-every": "10", "--hidden": "32", "--embed": "16"}


def train(run_dir: Path, flags: dict[str, str | None]) -> float:
    """Train the starter into `run_dir`; the wall time in seconds."""
    cmd = [sys.executable, "-m", "charnn", "train", str(CORPUS), "--out", str(run_dir), "--quiet", "--no-cache"]
    cmd += [item for pair in flags.items() for item in pair if item is not None] + ["--sample-length", "0"]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=repo_env(), cwd=REPO)
    return time.perf_counter() - start


def convert(run_dir: Path, folder: Path, *, train_seconds: float) -> None:
    """The run's best checkpoint as a 16-bit model file in `folder`, scored as shipped, and its manifest entry."""
    import torch

    from charnn.data import encode_file
    from charnn.evaluate import evaluate_ids
    from charnn.store.bundled import BundledModel, bundled_models, write_manifest
    from charnn.store.checkpoint import load_model, model_bytes
    from charnn.store.files import atomic_write
    from charnn.store.rundir import load_run

    best = load_run(run_dir, which="best")
    fields = dict(step=best.step, corpus_sha256=best.corpus_sha256, train_cfg=best.meta.train_cfg)
    path = folder / f"{NAME}.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    # score the 16-bit weights themselves: write them once unlabelled, load them back (upcast to fp32), score
    atomic_write(path, model_bytes(best.model, best.vocab, best.data_cfg, val_loss=None, dtype=torch.float16, **fields))
    shipped = load_model(path)
    corpus = encode_file(CORPUS, shipped.data_cfg)
    assert corpus.sha256 == shipped.corpus_sha256 and corpus.vocab == shipped.vocab
    val = evaluate_ids(shipped.model, corpus.split()[1], segment=shipped.eval_segment, precision="fp32").loss
    blob = model_bytes(shipped.model, shipped.vocab, shipped.data_cfg, val_loss=val, dtype=torch.float16, **fields)
    atomic_write(path, blob)
    entry = BundledModel(
        name=NAME,
        file=path.name,
        sha256=hashlib.sha256(blob).hexdigest(),
        bytes=len(blob),
        trained_on="tiny shakespeare",
        corpus_chars=len(corpus.ids),
        val_loss=round(val, 6),
        steps=best.step,
        build="python benchmarks/starter.py",
    )
    write_manifest(folder, [m for m in bundled_models(folder) if m.name != NAME] + [entry])
    print(
        f"{path}: {len(blob):,} bytes, sha256 {entry.sha256}, step {best.step}, validation {val:.4f} nats/char "
        f"(fp32 checkpoint {best.val_loss:.4f}); trained in {train_seconds:.0f} s",
        flush=True,
    )


def compare(paths: list[Path], *, steps: int, seconds: float) -> None:
    """Scratch against the starter on each corpus, at equal steps and equal wall time: one JSON line per run."""
    from fit import train_run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            for start, init in (("scratch", []), ("starter", ["--init-from", NAME])):
                for rule, limit in (("steps", ["--max-iters", str(steps)]), ("time", ["--time-budget", str(seconds)])):
                    flags = ["--seed", "0", "--threads", "1", "--sample-length", "0", *init, *limit]
                    row = {
                        "corpus": path.stem,
                        "start": start,
                        "equal": rule,
                        **train_run(path, flags, Path(tmp), repo_env()),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print("| corpus | equal | scratch: val (steps, wall) | starter: val (steps, wall) |\n|---|---|---|---|")
    for path in paths:
        for rule in ("steps", "time"):
            cells = [
                f"{r['val']:.3f} ({r['steps']:,} steps, {r['wall_s']:.0f} s)"
                for start in ("scratch", "starter")
                for r in rows
                if r["corpus"] == path.stem and r["equal"] == rule and r["start"] == start
            ]
            print(f"| {path.stem} | {rule} | {' | '.join(cells)} |")


def main() -> None:
    ap = parser(__doc__, "a tiny model, a few steps, written to a temporary folder")
    ap.add_argument("--compare", type=Path, nargs="+", metavar="CORPUS", help="scratch against the starter on these")
    ap.add_argument("--steps", type=int, default=400, help="with --compare: the steps of the equal-steps runs")
    ap.add_argument("--seconds", type=float, default=120, help="with --compare: the budget of the equal-time runs")
    args = ap.parse_args()
    machine(threads=int(FLAGS["--threads"] or 1))
    if args.compare:
        compare(args.compare, steps=args.steps, seconds=args.seconds)
        return
    from charnn.store.bundled import models_dir

    with tempfile.TemporaryDirectory() as tmp:
        flags = {**FLAGS, **QUICK} if args.quick else FLAGS
        seconds = train(Path(tmp) / "run", flags)
        convert(Path(tmp) / "run", Path(tmp) / "models" if args.quick else models_dir(), train_seconds=seconds)


if __name__ == "__main__":
    main()
