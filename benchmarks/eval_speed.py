"""Evaluation speed: `charnn.evaluate_ids` against a bare forward-only loop of the same model, in one run,
alternating for `--repeats` repeats (medians reported); then `charnn eval RUN FILE` of a `--file-mb` MB file
end to end in a subprocess (load the checkpoint, read and encode the file, score it), against a time target.

The bare loop lays the ids out as `--batch` contiguous rows and runs the model over chunks of `--chunk`
characters with the state carried, summing the cross-entropy: no masks, no segments, no bookkeeping.
The model is a randomly initialised CharRNN: speed does not depend on what the weights are.

    python benchmarks/eval_speed.py            # 2x256 LSTM, embed 256; 200,000 chars; a 1 MB file
    python benchmarks/eval_speed.py --quick    # tiny, a few seconds (the CI smoke test)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import interleaved, load_average, machine, median, median_ratio, parser, repo_env

from charnn import CharRNN, DataConfig, ModelConfig, Vocab
from charnn.evaluate import evaluate_ids
from charnn.store.rundir import save_checkpoint

ALPHABET = "\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@torch.inference_mode()
def bare_forward(model: CharRNN, ids: np.ndarray, batch: int, chunk: int) -> float:
    """chars/s of forward-only scoring: contiguous rows, carried state, summed cross-entropy."""
    model.eval()
    rows = (len(ids) - 1) // batch
    x = torch.from_numpy(ids[: rows * batch].astype(np.int64)).view(batch, rows)
    y = torch.from_numpy(ids[1 : rows * batch + 1].astype(np.int64)).view(batch, rows)
    t0 = time.perf_counter()
    hidden, total = None, torch.zeros((), dtype=torch.float64)
    for c0 in range(0, rows, chunk):
        logits, hidden = model(x[:, c0 : c0 + chunk], hidden)
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[:, c0 : c0 + chunk].reshape(-1), reduction="sum"
        )
    float(total)
    return rows * batch / (time.perf_counter() - t0)


def charnn_eval(model: CharRNN, ids: np.ndarray, batch: int, segment: int) -> float:
    t0 = time.perf_counter()
    res = evaluate_ids(model, ids, segment=segment, batch_size=batch)
    return res.chars / (time.perf_counter() - t0)


def cli_eval_seconds(model: CharRNN, vocab: Vocab, tmp: Path, mb: float, threads: int) -> float:
    """Wall time of `python -m charnn eval RUN FILE` on a generated file of `mb` MB."""
    run = tmp / "run"
    run.mkdir()
    save_checkpoint(
        run, model, vocab, DataConfig(), step=0, val_loss=None, corpus_sha256="0" * 64, state=None, keep_last=1
    )
    rng = np.random.default_rng(0)
    text = "".join(np.array(list(ALPHABET))[rng.integers(0, len(ALPHABET), int(mb * 1e6))])
    path = tmp / "text.txt"
    path.write_text(text, encoding="utf-8")
    env = repo_env(OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "charnn", "eval", str(run), str(path), "--device", "cpu"],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = parser(__doc__, quick="tiny model, few characters: checks that it runs")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--chars", type=int, default=200_000, help="characters scored per measurement")
    ap.add_argument("--batch", type=int, default=64, help="rows side by side (both sides)")
    ap.add_argument("--chunk", type=int, default=256, help="characters per forward call of the bare loop")
    ap.add_argument("--segment", type=int, default=4096, help="charnn's segment length")
    ap.add_argument("--file-mb", type=float, default=1.0, help="size of the file `charnn eval` scores")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.embed, args.chars, args.batch, args.segment = 32, 16, 8_000, 8, 512
        args.file_mb, args.repeats, args.threads = 0.02, 1, args.threads or 1
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vocab = Vocab(tuple(sorted(map(ord, ALPHABET))))
    model = CharRNN(ModelConfig(layers=args.layers, hidden=args.hidden, embed=args.embed), len(vocab))
    ids = np.random.default_rng(0).integers(0, len(vocab), args.chars).astype(np.uint8)
    machine(threads)
    print(
        f"model: {args.layers}x{args.hidden} lstm, embed {args.embed}; {args.chars:,} chars, batch {args.batch}",
        flush=True,
    )

    def report(r: int, got: dict[str, list]) -> None:
        ours, bare = got["charnn"][-1], got["bare"][-1]
        print(
            f"repeat {r + 1}: charnn {ours:,.0f} chars/s, bare forward {bare:,.0f} chars/s, ratio {ours / bare:.3f}",
            flush=True,
        )

    got = interleaved(
        args.repeats,
        {
            "charnn": lambda: charnn_eval(model, ids, args.batch, args.segment),
            "bare": lambda: bare_forward(model, ids, args.batch, args.chunk),
        },
        on_repeat=report,
    )
    with tempfile.TemporaryDirectory() as tmp:
        cli_s = cli_eval_seconds(model, vocab, Path(tmp), args.file_mb, threads)
    result = {
        "charnn_chars_per_s": round(median(got["charnn"])),
        "bare_chars_per_s": round(median(got["bare"])),
        "ratio": round(median_ratio(got["charnn"], got["bare"]), 3),
        "cli_eval_file_mb": args.file_mb,
        "cli_eval_seconds": round(cli_s, 2),
        "threads": threads,
        "repeats": args.repeats,
        "load_average": load_average(),
    }
    print(f"ratio (median of {args.repeats}): {result['ratio']:.3f}  (target >= 0.9)")
    print(f"charnn eval of a {args.file_mb:g} MB file: {cli_s:.1f} s  (target < 20 s for 1 MB, 2x256)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
