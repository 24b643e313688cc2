#!/usr/bin/env python3
"""torch-rnn's benchmark grid, for charnn and the bare loop of the same model, in one run.

Grid: LSTM, 1-3 layers x 128/256/512 hidden, batch 50, seq 50 (torch-rnn's README table), plus a large
configuration (3x1024, batch 128, seq 256). For each: ms per training iteration and chars/s of charnn's real
loop (`charnn.training.train` on a synthetic corpus, evaluation out of the way, rate from its own log events with the
first window dropped) and of the bare loop (embedding -> nn.LSTM -> linear, forward + backward + clip + fused
AdamW on resident random data, bf16 autocast on CUDA as charnn does), their ratio, and peak allocated device
memory of each (CUDA only).

    python benchmarks/gpu_grid.py                       # on the GPU machine (CUDA): the whole grid
    python benchmarks/gpu_grid.py --device cpu --quick  # smoke test: two tiny shapes on the CPU
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from baseline import SYNTHETIC_LINE, bare_loop, synthetic_corpus
from common import machine, median, parser

GRID = [(layers, hidden, 50, 50) for layers in (1, 2, 3) for hidden in (128, 256, 512)] + [(3, 1024, 128, 256)]
QUICK = [(1, 16, 4, 8), (2, 16, 4, 8)]


def reset_peak(device):
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def charnn_loop(
    layers,
    hidden,
    batch,
    seq,
    *,
    embed,
    device,
    steps,
    workdir: Path,
    precision: str = "auto",
    corpus_chars: int = 40000 * len(SYNTHETIC_LINE),
) -> float:
    """chars/s of charnn.training.train's own loop, from its metrics (first window dropped)."""
    from charnn.config import ModelConfig, TrainConfig
    from charnn.training.train import train

    corpus = workdir / "corpus.txt"
    if not corpus.exists():
        synthetic_corpus(corpus, corpus_chars)
    log_every = max(steps // 5, 1)
    out = workdir / f"run-{layers}x{hidden}-{batch}x{seq}-{time.time_ns()}"
    train(
        corpus,
        model_cfg=ModelConfig(layers=layers, hidden=hidden, embed=embed),
        train_cfg=TrainConfig(
            batch_size=batch,
            seq_len=seq,
            max_iters=steps,
            eval_every=10**9,
            sample_length=0,
            log_every=log_every,
            device=str(device),
            precision=precision,
        ),
        out_dir=out,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["chars_per_s"] for r in rows if r["kind"] == "train"][1:]
    return median(rates)


def main() -> None:
    ap = parser(__doc__, quick="two tiny shapes, a few steps: checks that it runs")
    ap.add_argument("--device", default="cuda", help="cuda (the point of this script) or cpu")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per configuration and loop")
    ap.add_argument("--embed", type=int, default=64, help="embedding size (torch-rnn's wordvec_size default)")
    args = ap.parse_args()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run on the GPU machine, or pass --device cpu --quick")
    grid, steps = (QUICK, 6) if args.quick else (GRID, args.steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    machine(torch.get_num_threads(), device=name)
    print(json.dumps({"device": name, "torch": torch.__version__, "steps": steps}), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="charnn-grid-"))
    rows = []
    for layers, hidden, batch, seq in grid:
        reset_peak(device)
        bare = bare_loop(
            layers,
            hidden,
            args.embed,
            batch,
            seq,
            steps=steps,
            warmup=3,
            device=device,
            bf16=device.type == "cuda",
            optimizer="adamw",
        )
        bare_mem = peak_mb(device)
        reset_peak(device)
        ours = charnn_loop(layers, hidden, batch, seq, embed=args.embed, device=device, steps=steps, workdir=workdir)
        ours_mem = peak_mb(device)
        row = {
            "layers": layers,
            "hidden": hidden,
            "batch": batch,
            "seq": seq,
            "charnn_ms_per_iter": round(1000 * batch * seq / ours, 2),
            "charnn_chars_per_s": round(ours),
            "bare_ms_per_iter": round(1000 * batch * seq / bare, 2),
            "bare_chars_per_s": round(bare),
            "ratio": round(ours / bare, 3),
            "charnn_peak_mb": ours_mem and round(ours_mem, 1),
            "bare_peak_mb": bare_mem and round(bare_mem, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'LSTM':<12}{'batch x seq':>12}{'charnn ms/it':>14}{'bare ms/it':>12}{'ratio':>8}{'peak MB':>10}")
    for r in rows:
        print(
            f"{r['layers']}x{r['hidden']:<10}{str(r['batch']) + 'x' + str(r['seq']):>12}"
            f"{r['charnn_ms_per_iter']:>14}{r['bare_ms_per_iter']:>12}{r['ratio']:>8}"
            f"{r['charnn_peak_mb'] or '-':>10}"
        )


if __name__ == "__main__":
    main()
