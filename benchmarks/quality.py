#!/usr/bin/env python3
"""Quality per second: train charnn presets under a time budget and compare with the plain baseline.

For each preset: `charnn train CORPUS --preset P --time-budget B`, then `charnn eval` on the validation split
and on held-out prose of a different kind, and a 300-character sample. With `--ref TRAINER`, the baseline
runs first on the same machine: a plain hand-written trainer (2x256 LSTM, Adam 2e-3 constant, batch 64 x 128),
called as `python TRAINER CORPUS --budget-s B --threads N --eval-at "" --sample-chars 300 --sample-repeats 1`,
that prints JSON lines, one of them `{"event": "final", "steps", "val_loss", "val_bits_per_char",
"chars_per_s"}`. Prints one JSON line per run and a table; lower val nats/char is better. `--seeds` trains each
preset once per seed and adds each preset's mean and range: one 240 s run's figure moves by about 0.01 nats/char
with the seed (docs/benchmarks.md), as much as many of the changes it is used to measure.

charnn's figure is the calibrated model's (`--calibrate`, the default: the output's temperature fitted at each
validation, docs/training.md); the table gives the same checkpoint's uncalibrated figure and the temperature
beside it.

Note on budgets: charnn's budget is wall time of the whole loop (evaluations, samples and checkpoints
included); the plain trainer's counts its training steps only, so the comparison slightly favours the
baseline. Both score the whole validation split: charnn in 4096-character stateful segments, the plain
trainer as one stream.

    python benchmarks/quality.py --presets small --budget 240 --ref PATH/TO/TRAINER   # ~9 minutes
    python benchmarks/quality.py --presets small -- --batch-size 16 --seq-len 64      # one variant, no baseline
    python benchmarks/quality.py --presets plan                                       # the README's figure
    python benchmarks/quality.py --presets plan --seeds 1337,7                        # and its spread
    python benchmarks/quality.py --quick                                              # a few seconds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, parser, repo_env


def run(cmd: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return out.stdout


def charnn_run(preset: str, args, env, workdir: Path, seed: int | None = None) -> dict:
    run_dir = workdir / f"{preset}{'' if seed is None else f'-s{seed}'}-{int(time.time())}"
    cmd = [
        sys.executable,
        "-m",
        "charnn",
        "train",
        str(args.corpus),
        *([] if preset == "plan" else ["--preset", preset]),
        "--time-budget",
        str(args.budget),
        "--out",
        str(run_dir),
        "--quiet",
        *([] if seed is None else ["--seed", str(seed)]),
    ] + args.extra
    t0 = time.perf_counter()
    run(cmd, env)
    wall = time.perf_counter() - t0
    ev = [sys.executable, "-m", "charnn", "eval", str(run_dir), "--json"]
    val = json.loads(run(ev, env).splitlines()[-1])
    prose = json.loads(run(ev[:-1] + [str(args.heldout), "--skip-unknown", "--json"], env).splitlines()[-1])
    sample = run(
        [
            sys.executable,
            "-m",
            "charnn",
            "sample",
            str(run_dir),
            "--length",
            "300",
            "--seed",
            "1",
            "--temperature",
            "0.8",
            "--raw",
        ],
        env,
    )
    cfg = json.loads((run_dir / "config.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [m["chars_per_s"] for m in metrics if m["kind"] == "train"][2:]
    scored = next((m for m in metrics if m["kind"] == "eval" and m["step"] == val["step"]), {})
    steps = max((m["step"] for m in metrics if "step" in m), default=val["step"])
    from charnn.config import ModelConfig
    from charnn.shapes import num_parameters

    params = num_parameters(ModelConfig(**cfg["model"]), cfg["vocab_size"])
    return {
        "tool": "charnn",
        "preset": preset,
        "seed": cfg["train"]["seed"],  # --seed's, or the default, as the run recorded it
        "budget_s": args.budget,
        "wall_s": round(wall, 1),
        "params": params,
        "steps": steps,  # the run's last step
        "best_step": val["step"],  # the checkpoint scored: the best validation's
        "val_nats": round(val["nats_per_char"], 4),
        "val_bpc": round(val["bits_per_char"], 4),
        # --calibrate: the same checkpoint before its temperature was fitted (charnn.calibration), and the fit
        "val_uncalibrated": round(scored.get("val_loss_uncalibrated", val["nats_per_char"]), 4),
        "temperature": scored.get("calibrated_temperature", 1.0),
        "prose_nats": round(prose["nats_per_char"], 4),
        "prose_bpc": round(prose["bits_per_char"], 4),
        "chars_per_s": round(sorted(rates)[len(rates) // 2]) if rates else None,
        "run_dir": str(run_dir),
        "sample": sample[:300],
    }


def ref_run(args, env) -> dict:
    cmd = [
        sys.executable,
        str(args.ref),
        str(args.corpus),
        "--budget-s",
        str(args.budget),
        "--threads",
        str(args.threads),
        "--eval-at",
        "",
        "--sample-chars",
        "300",
        "--sample-repeats",
        "1",
    ]
    lines = [json.loads(line) for line in run(cmd, env).splitlines() if line.startswith("{")]
    final = next(x for x in lines if x["event"] == "final")
    return {
        "tool": "ref_lstm",
        "preset": "plain 2x256",
        "budget_s": args.budget,
        "steps": final["steps"],
        "val_nats": final["val_loss"],
        "val_bpc": final["val_bits_per_char"],
        "chars_per_s": final["chars_per_s"],
        "params": None,
    }


def main() -> None:
    ap = parser(__doc__, quick="smoke mode: tiny corpus slice, 3-second budgets")
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "tinyshakespeare.txt")
    ap.add_argument(
        "--heldout",
        type=Path,
        default=REPO / "data" / "heldout_prose.txt",
        help="text of a different kind, scored with --skip-unknown",
    )
    ap.add_argument("--presets", default="small", help="comma-separated presets to train ('plan': no preset)")
    ap.add_argument("--budget", type=float, default=240.0, help="training time budget per run, seconds")
    ap.add_argument("--ref", type=Path, default=None, help="the plain baseline trainer [default: none]")
    ap.add_argument("--no-ref", action="store_true", help="skip the baseline even with --ref")
    ap.add_argument(
        "--seeds", type=seeds, default=None, help="comma-separated seeds: each preset once per seed, with its mean"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="where runs go (default: a temp dir)")
    ap.add_argument("extra", nargs="*", help="extra `charnn train` flags after --, e.g. -- --model gru")
    args = ap.parse_args()
    if args.seeds and any(flag == "--seed" or flag.startswith("--seed=") for flag in args.extra):
        ap.error("--seeds and a --seed after -- both set the seed: give one")
    env = repo_env(OMP_NUM_THREADS=str(args.threads))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="charnn-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        small = workdir / "corpus.txt"
        small.write_text(args.corpus.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
        args.corpus, args.budget, args.presets = small, 3.0, "tiny"
        args.extra = args.extra + ["--eval-every", "50", "--sample-length", "0"]
    machine(args.threads)
    rows = []
    if args.ref is not None and not args.no_ref:
        rows.append(ref_run(args, env))
        print(json.dumps(rows[-1]), flush=True)
    for preset in args.presets.split(","):
        for seed in args.seeds or [None]:
            rows.append(charnn_run(preset, args, env, workdir, seed))
            print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["tool"] == "ref_lstm"), None)
    print(
        f"\n{'run':<28}{'params':>10}{'steps':>7}{'best at':>8}{'chars/s':>9}{'val nats':>10}{'val bpc':>9}"
        f"{'uncalib.':>10}{'T':>7}{'prose nats':>12}{'vs ref':>9}"
    )
    for r in rows:
        delta = f"{r['val_nats'] - base['val_nats']:+.4f}" if base else "n/a"
        name = f"{r['tool']} {r['preset']}" + (f" seed {r['seed']}" if args.seeds and "seed" in r else "")
        print(
            f"{name:<28}{r['params'] or '':>10}{r['steps']:>7}{r.get('best_step', ''):>8}{r['chars_per_s'] or 0:>9}"
            f"{r['val_nats']:>10.4f}{r['val_bpc']:>9.4f}{r.get('val_uncalibrated', r['val_nats']):>10.4f}"
            f"{r.get('temperature', 1.0):>7.3f}{r.get('prose_nats', float('nan')):>12.4f}{delta:>9}"
        )
    if args.seeds and len(args.seeds) > 1:
        for preset in args.presets.split(","):
            print(spread(preset, [r["val_nats"] for r in rows if r["tool"] == "charnn" and r["preset"] == preset]))


def seeds(text: str) -> list[int]:
    """`--seeds 1337,7` -> [1337, 7]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are whole numbers separated by commas, not {text!r}") from None


def spread(preset: str, values: list[float]) -> str:
    """One line: a preset's mean validation figure over its seeds, and their range."""
    mean = sum(values) / len(values)
    return (
        f"charnn {preset}: mean {mean:.4f} nats/char over {len(values)} seeds "
        f"(from {min(values):.4f} to {max(values):.4f})"
    )


if __name__ == "__main__":
    main()
