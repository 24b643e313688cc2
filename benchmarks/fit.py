#!/usr/bin/env python3
"""Fitting the corpus: `charnn train FILE` with no flags (the training plan) against a hand sweep and a unigram
model, on a matrix of corpora of different kinds and sizes.

For each corpus: the default run, a few hand-picked configurations (size and dropout, with patience 8 and the
plan's validation cadence), and a character-frequency (unigram, add-one) model fitted on the training split.
Each is scored on the same validation split (the last 10%); the figure is the kept (best) checkpoint's
validation loss in nats/char, with the wall time of the run. Prints one JSON line per run and a table.

    python benchmarks/fit.py --build corpora/          # write the matrix from text on this machine (see below)
    python benchmarks/fit.py --corpora corpora/        # the whole matrix: about an hour on a 2-core CPU
    python benchmarks/fit.py --corpora corpora/ --only prose-50k,names-30k --no-sweep
    python benchmarks/fit.py --quick                   # a smoke test: two tiny corpora, a few steps

`--build` writes slices of public-domain and freely licensed text that a Debian machine can install offline
(`apt-get install jargon-text bible-kjv fortunes-ru fortunes-zh`, `pip download names==0.3.0`), Python's own
standard library, and the bundled tiny shakespeare; a source that is missing is skipped with a note.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import random
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

from common import REPO, machine, parser, repo_env

HAND = {  # label -> explicit flags; the plan fills the rest (cadence) and the flags win
    "2x256 d0.5": ["--layers", "2", "--hidden", "256", "--dropout", "0.5", "--patience", "8"],
    "2x256 d0.2": ["--layers", "2", "--hidden", "256", "--dropout", "0.2", "--patience", "8"],
    "2x128 d0.3": ["--layers", "2", "--hidden", "128", "--embed", "64", "--dropout", "0.3", "--patience", "8"],
}


def unigram(path: Path) -> tuple[float, int, int]:
    """(validation nats/char of an add-one unigram model fitted on the training split, train chars, vocabulary)."""
    import numpy as np

    from charnn.config import DataConfig
    from charnn.data import encode_file

    corpus = encode_file(path, DataConfig())
    train, val, _ = corpus.split()
    counts = np.bincount(np.asarray(train), minlength=len(corpus.vocab)) + 1.0
    probs = counts / counts.sum()
    return float(-np.log(probs[np.asarray(val)]).mean()), len(train), len(corpus.vocab)


def train_run(path: Path, flags: list[str], workdir: Path, env: dict[str, str]) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [
        sys.executable,
        "-m",
        "charnn",
        "train",
        str(path),
        "--out",
        str(run_dir / "run"),
        "--quiet",
        "--no-cache",
        *flags,
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval" and r["val_loss"] is not None]
    best = min(evals, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
    stop = next((r["reason"] for r in records if r["kind"] == "stop"), "")
    return {
        "val": round(best["val_loss"], 4),
        "best_step": best["step"],
        "steps": records[-1]["step"],
        "wall_s": round(wall, 1),
        "stop": stop,
        **plan_estimate(run_dir / "run"),
    }


def plan_estimate(run_dir: Path) -> dict:
    """The plan's time estimate, measured step and cap, as the run's config.json records them, with the length
    the run ended with and each time the loop fitted it again (metrics.jsonl's refit lines); {} without a plan."""
    config = json.loads((run_dir / "config.json").read_text())
    plan = config.get("plan") or {}
    keys = {"estimated_seconds": "estimate_s", "measured_step_seconds": "step_s", "capped": "capped"}
    found = {short: plan[key] for key, short in keys.items() if key in plan}
    if not found:
        return found
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    refits = [[r["step"], r["max_iters"]] for r in records if r.get("kind") == "refit"]
    return {**found, "max_iters": config["train"].get("max_iters"), "refits": refits}


def fit(path: Path, args, env: dict[str, str], workdir: Path) -> dict:
    uni, n_train, vocab = unigram(path)
    row = {"corpus": path.stem, "train_chars": n_train, "vocab": vocab, "unigram": round(uni, 4)}
    row["default"] = train_run(path, args.extra, workdir, env)
    print(json.dumps({**row, "run": "default", **row["default"]}), flush=True)
    row["hand"] = {}
    for label, flags in ({} if args.no_sweep else HAND).items():
        row["hand"][label] = train_run(path, flags + args.extra, workdir, env)
        print(json.dumps({"corpus": path.stem, "run": label, **row["hand"][label]}), flush=True)
    return row


def table(rows: list[dict]) -> str:
    out = [
        "| corpus | train chars | vocab | unigram | default (wall, stop) | best hand config | gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["default"]
        hand = min(r["hand"].items(), key=lambda kv: kv[1]["val"]) if r["hand"] else None
        best = f"{hand[1]['val']:.3f} ({hand[0]}, {hand[1]['wall_s']:.0f} s)" if hand else "-"
        gap = f"{d['val'] - hand[1]['val']:+.3f}" if hand else "-"
        stop = "early stop" if d["stop"] else "plan's end"
        out.append(
            f"| {r['corpus']} | {r['train_chars']:,} | {r['vocab']} | {r['unigram']:.3f} | "
            f"**{d['val']:.3f}** ({d['wall_s']:.0f} s, {stop}) | {best} | {gap} |"
        )
    return "\n".join(out)


def build(out: Path) -> None:
    """Write the corpus matrix from text installed on this machine; missing sources are skipped."""
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, text: str) -> None:
        (out / name).write_text(text, encoding="utf-8")
        print(f"{name}: {len(text):,} characters")

    jargon = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
    if jargon.exists():  # The Jargon File (public domain): prose of another kind than the plays
        text = gzip.open(jargon).read().decode("utf-8", "replace")
        write("prose-20k.txt", text[300_000:320_000])
        write("prose-200k.txt", text[600_000:800_000])
    try:  # the King James Bible (public domain), one verse a line without its reference
        kjv = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True).stdout
        kjv = "\n".join(re.sub(r"^\S+\d+:\d+ ", "", line) for line in kjv.splitlines())
        write("prose-50k.txt", kjv[1_500_000:1_550_000])
        write("prose-1m.txt", kjv[2_000_000:3_000_000])
    except OSError:
        print("skipped the KJV slices: `bible` (Debian's bible-kjv) is not installed")
    code = "".join(p.read_text("utf-8", "replace") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")))
    write("code-100k.txt", code[:100_000])
    write("code-1m.txt", code[1_000_000:2_000_000])
    names = sorted(glob.glob("/tmp/**/names-0.3.0.tar.gz", recursive=True))
    if names:  # US census surnames (pypi `names`), lower-cased and shuffled: makemore's kind of task
        with tarfile.open(names[0]) as tar:
            member = tar.extractfile("names-0.3.0/names/dist.all.last")
            lines = [line.split()[0].lower() for line in member.read().decode().splitlines()][:30_000]
        random.Random(0).shuffle(lines)
        write("names-30k.txt", "\n".join(lines) + "\n")
    ru = sorted(glob.glob("/usr/share/games/fortunes/ru/*.u8"))
    if ru:  # Russian fortune cookies: Cyrillic
        write("ru-200k.txt", "".join(Path(p).read_text("utf-8", "replace") for p in ru)[500_000:700_000])
    zh = [
        p for p in ("/usr/share/games/fortunes/tang300.u8", "/usr/share/games/fortunes/song100.u8") if Path(p).exists()
    ]
    if zh:  # Tang and Song poems: a vocabulary of thousands of symbols
        text = "".join(Path(p).read_text("utf-8", "replace") for p in zh)
        write("zh-poems.txt", re.sub(r"\x1b\[[0-9;]*m", "", text)[:100_000])
    write("shakespeare-1m.txt", (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8"))


def main() -> None:
    ap = parser(__doc__, "two tiny corpora and a few steps each: checks the script runs")
    ap.add_argument("--corpora", type=Path, help="folder of .txt corpora")
    ap.add_argument("--build", type=Path, help="write the corpus matrix into this folder and exit")
    ap.add_argument("--only", default="", help="comma-separated corpus names (file stems)")
    ap.add_argument("--no-sweep", action="store_true", help="the default run and the unigram model only")
    ap.add_argument("extra", nargs="*", help="flags added to every charnn train (after --)")
    args = ap.parse_args()
    if args.build:
        build(args.build)
        return
    machine()
    env = repo_env()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.quick:
            text = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
            for name, size in (("quick-a", 12_000), ("quick-b", 30_000)):
                (workdir / f"{name}.txt").write_text(text[:size], encoding="utf-8")
            paths = sorted(workdir.glob("quick-*.txt"))
            args.extra += ["--max-iters", "12", "--sample-length", "0", "--hidden", "32", "--embed", "16"]
            global HAND
            HAND = dict(list(HAND.items())[:1])
        else:
            if args.corpora is None:
                sys.exit("pass --corpora DIR (build one with --build DIR) or --quick")
            only = {s for s in args.only.split(",") if s}
            paths = [p for p in sorted(args.corpora.glob("*.txt")) if not only or p.stem in only]
        rows = [fit(p, args, env, workdir) for p in paths]
    print(table(rows))


if __name__ == "__main__":
    main()
