"""Sampling speed: charnn's sampler (`charnn.sample_text`, the fast stepping path) against the plain approach
(one `nn.LSTM` call per character, softmax + multinomial, as a plain hand-written trainer samples), one stream
and `--streams` streams at once, in one run, alternating for `--repeats` repeats (medians reported).

The plain approach runs at 1 and at `--threads` threads and its faster figure is the baseline (the default of
2 threads is what a user gets, but on a busy 2-core machine one thread is often faster). The model is a
randomly initialised CharRNN of the default preset's shape (2x256 LSTM, embed 128, layer norm): speed does not
depend on what the weights are.

Then the command line end to end, the model saved as a run: `python -m charnn sample RUN --length N > file`
for N = --cli-length + 200 and N = 200, interleaved; the rate is the difference of characters over the
difference of wall times (process start and loading cancel), and its ratio is against the plain approach's one
stream above. On a CPU with native bf16 the same with `--precision bf16`, and that mode's quality cost: the
shipped `shakespeare` model's loss (nats/char) on the last --quality-chars characters of data/tinyshakespeare.txt,
stepped one character at a time by the sampler's stepper in fp32 and in bf16. Time to the first character is
the wall time of `--length 1`, beside that of `python -c "import torch"` and of `charnn --help` (what start-up
cannot avoid).

    python benchmarks/sample_speed.py            # 2x256 LSTM, 3000 chars x 1 stream, 400 chars x 64 streams
    python benchmarks/sample_speed.py --quick    # tiny, a few seconds (the CI smoke test)
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from common import REPO, interleaved, load_average, machine, median, parser, repo_env

from charnn import CharRNN, DataConfig, SampleConfig, Vocab, sample_text
from charnn.presets import PRESETS
from charnn.runtime import native_bf16_cpu
from charnn.sampling.stepper import FastStepper
from charnn.store.rundir import load_run, save_checkpoint

VOCAB = Vocab(tuple(range(32, 97)))  # 65 symbols, like tiny shakespeare's


@torch.no_grad()
def plain_sample(model: CharRNN, streams: int, length: int, threads: int) -> float:
    """chars/s of the approach a user writes: the whole module once per character, multinomial draws."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        gen = torch.Generator().manual_seed(0)
        x = torch.zeros(streams, 1, dtype=torch.long)
        logits, state = model(x)
        out = []
        t0 = time.perf_counter()
        for _ in range(length):
            probs = F.softmax(logits[:, -1] / 0.8, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)  # (B, 1)
            out.append(nxt.tolist())
            logits, state = model(nxt, state)
        return streams * length / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def charnn_sample(
    model: CharRNN, streams: int, length: int, path: str = "fast", precision: str = "fp32"
) -> tuple[float, list]:
    cfg = SampleConfig(length=length, temperature=0.8, seed=0, num_samples=streams, precision=precision)
    t0 = time.perf_counter()
    text = sample_text(model, VOCAB, cfg, path=path)
    return streams * length / (time.perf_counter() - t0), text


@torch.inference_mode()
def stepped_loss(chars: int, precision: str) -> float:
    """Nats per character of the shipped `shakespeare` model on the last `chars` characters of tiny shakespeare,
    stepped one character at a time by the sampler's stepper in `precision` (what sampling's text comes from)."""
    loaded = load_run("shakespeare")
    text = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[-chars - 1 :]
    ids = loaded.vocab.encode(text).tolist()
    stepper = FastStepper(loaded.model, 1.0, precision=precision)
    total = 0.0
    for prev, nxt in zip(ids[:-1], ids[1:], strict=True):
        total -= stepper.step(prev).log_softmax(-1)[0, nxt].item()
    return total / (len(ids) - 1)


def wall(argv: list[str]) -> float:
    """Wall seconds of one process, its stdout to a file (as `> out.txt`), on this checkout's charnn."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=out, stderr=subprocess.DEVNULL, env=repo_env(), check=True)
        return time.perf_counter() - t0


def cli_figures(model: CharRNN, length: int, repeats: int, *, quick: bool, bf16: bool) -> dict[str, float | None]:
    """`charnn sample` end to end: chars/s by the difference method (`bf16`: also with --precision bf16), and the
    start-up walls (module docstring); `quick` leaves out the walls of --help and of importing torch."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(
            tmp, model, VOCAB, DataConfig(), step=1, val_loss=None, corpus_sha256="0" * 64, state=None, keep_last=1
        )
        sample = [sys.executable, "-m", "charnn", "sample", tmp, "--seed", "0", "--length"]
        measures = {
            "long": lambda: wall([*sample, str(length + 200)]),
            "short": lambda: wall([*sample, "200"]),
            "first": lambda: wall([*sample, "1"]),
        }
        if bf16:
            low = [*sample[:-1], "--precision", "bf16", "--length"]
            measures["long_bf16"] = lambda: wall([*low, str(length + 200)])
            measures["short_bf16"] = lambda: wall([*low, "200"])
        if not quick:
            measures["help"] = lambda: wall([sys.executable, "-m", "charnn", "--help"])
            measures["torch"] = lambda: wall([sys.executable, "-c", "import torch"])
        got = interleaved(repeats, measures, on_repeat=print_repeat)
    return {
        "cli_chars_per_s": _difference_rate(length, got["long"], got["short"]),
        "cli_bf16_chars_per_s": _difference_rate(length, got["long_bf16"], got["short_bf16"]) if bf16 else None,
        "first_char_s": round(median(got["first"]), 2),
        "help_s": round(median(got["help"]), 2) if not quick else None,
        "import_torch_s": round(median(got["torch"]), 2) if not quick else None,
    }


def _difference_rate(length: int, longs: list[float], shorts: list[float]) -> int | None:
    """Characters per second of `length` more characters: the median of the paired differences of wall times
    (None: lost in the noise)."""
    diff = median(a - b for a, b in zip(longs, shorts, strict=True))
    return round(length / diff) if diff > 0 else None


def print_repeat(r: int, got: dict[str, list]) -> None:
    print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in got.items()), flush=True)


def main() -> None:
    ap = parser(__doc__, quick="tiny model, few characters: checks that it runs")
    ap.add_argument("--model", default="lstm", choices=("lstm", "gru", "rnn"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--length", type=int, default=3000, help="characters for the one-stream figure")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--streams-length", type=int, default=400, help="characters per stream, many streams")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cli-length", type=int, default=10000, help="characters of the end-to-end figure")
    ap.add_argument("--quality-chars", type=int, default=20000, help="characters scored for bf16's quality cost")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.embed, args.length, args.repeats = 32, 16, 200, 1
        args.streams, args.streams_length, args.cli_length, args.quality_chars = 8, 50, 500, 200
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = dataclasses.replace(
        PRESETS["small"].model, model=args.model, layers=args.layers, hidden=args.hidden, embed=args.embed
    )  # the default preset's, layer norm included
    model = CharRNN(shape, len(VOCAB))
    machine(threads)
    print(f"model: {args.layers}x{args.hidden} {args.model}, embed {args.embed}", flush=True)

    fast_same = sample_text(model, VOCAB, SampleConfig(length=200, seed=3, num_samples=4), path="fast") == sample_text(
        model, VOCAB, SampleConfig(length=200, seed=3, num_samples=4), path="module"
    )
    one, many = args.length, args.streams_length
    bf16 = native_bf16_cpu()  # elsewhere --precision bf16 is refused (exit 6): no bf16 figures
    results = interleaved(
        args.repeats,
        {
            "one": lambda: charnn_sample(model, 1, one)[0],
            **({"one_bf16": lambda: charnn_sample(model, 1, one, precision="bf16")[0]} if bf16 else {}),
            "one_module": lambda: charnn_sample(model, 1, one // 4, path="module")[0],
            "one_plain_1t": lambda: plain_sample(model, 1, one // 4, 1),
            "one_plain": lambda: plain_sample(model, 1, one // 4, threads),
            "many": lambda: charnn_sample(model, args.streams, many)[0],
            **({"many_bf16": lambda: charnn_sample(model, args.streams, many, precision="bf16")[0]} if bf16 else {}),
            "many_plain_1t": lambda: plain_sample(model, args.streams, many // 2, 1),
            "many_plain": lambda: plain_sample(model, args.streams, many // 2, threads),
        },
        on_repeat=print_repeat,
    )
    med = {k: median(v) for k, v in results.items()}
    cli = cli_figures(model, args.cli_length, args.repeats, quick=args.quick, bf16=bf16)
    loss = {prec: stepped_loss(args.quality_chars, prec) for prec in (("fp32", "bf16") if bf16 else ("fp32",))}
    base_one = max(med["one_plain_1t"], med["one_plain"])
    base_many = max(med["many_plain_1t"], med["many_plain"])
    result = {
        "one_stream_chars_per_s": round(med["one"]),
        "one_stream_plain_chars_per_s": round(base_one),
        "one_stream_ratio": round(med["one"] / base_one, 2),
        "one_stream_module_path_chars_per_s": round(med["one_module"]),
        "one_stream_bf16_chars_per_s": round(med["one_bf16"]) if bf16 else None,
        "streams": args.streams,
        "many_streams_chars_per_s": round(med["many"]),
        "many_streams_plain_chars_per_s": round(base_many),
        "many_streams_ratio": round(med["many"] / base_many, 2),
        "many_streams_bf16_chars_per_s": round(med["many_bf16"]) if bf16 else None,
        "many_streams_bf16_ratio": round(med["many_bf16"] / base_many, 2) if bf16 else None,
        "fast_and_module_same_text": fast_same,
        **cli,
        "cli_ratio": round(cli["cli_chars_per_s"] / base_one, 2) if cli["cli_chars_per_s"] else None,
        "stepped_loss_fp32": round(loss["fp32"], 5),
        "stepped_loss_bf16": round(loss["bf16"], 5) if bf16 else None,
        "threads": threads,
        "repeats": args.repeats,
        "load_average": load_average(),
    }
    print(
        f"one stream: charnn {med['one']:,.0f} chars/s vs plain {base_one:,.0f} chars/s: "
        f"{result['one_stream_ratio']:.2f}x  (target >= 5,000 chars/s for 2x256)"
    )
    print(
        f"{args.streams} streams: charnn {med['many']:,.0f} chars/s in total vs plain {base_many:,.0f}: "
        f"{result['many_streams_ratio']:.2f}x; "
        + (
            f"with --precision bf16 {med['many_bf16']:,.0f} chars/s: {result['many_streams_bf16_ratio']:.2f}x"
            if bf16
            else "no bf16 figure (this CPU has no native bf16)"
        )
        + "  (target >= 100,000 chars/s for 64 streams)"
    )
    print(
        f"command line, one stream: {cli['cli_chars_per_s']} chars/s (--length {args.cli_length + 200} minus "
        f"--length 200) vs plain {base_one:,.0f} chars/s: {result['cli_ratio']}x  (target >= 10,000 for 2x256)"
    )
    if bf16:
        print(
            f"--precision bf16, one stream: charnn {med['one_bf16']:,.0f} chars/s, command line "
            f"{cli['cli_bf16_chars_per_s']} chars/s; its cost: {loss['bf16']:.5f} nats/char against fp32's "
            f"{loss['fp32']:.5f} ({loss['bf16'] - loss['fp32']:+.5f}) on {args.quality_chars:,} characters"
        )
    print(
        f"first character: {cli['first_char_s']:.2f} s (import torch alone {cli['import_torch_s']} s, "
        f"charnn --help {cli['help_s']} s)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
