"""Sampling speed: charnn's sampler (`charnn.sample_text`, the fast stepping path) against the plain approach
(one `nn.LSTM` call per character, softmax + multinomial, as ../shared/bench/ref_lstm.py samples), one stream
and `--streams` streams at once, in one run, alternating for `--repeats` repeats (medians reported).

The plain approach runs at 1 and at `--threads` threads and its faster figure is the baseline (the default of
2 threads is what a user gets, but on a busy 2-core machine one thread is often faster). The model is a
randomly initialised CharRNN: speed does not depend on what the weights are.

    python benchmarks/sample_speed.py            # 2x256 LSTM, 3000 chars x 1 stream, 400 chars x 64 streams
    python benchmarks/sample_speed.py --quick    # tiny, a few seconds (the CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from charnn import CharRNN, ModelConfig, SampleConfig, Vocab, sample_text

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


def charnn_sample(model: CharRNN, streams: int, length: int, path: str = "fast",
                  precision: str = "fp32") -> tuple[float, list]:
    cfg = SampleConfig(length=length, temperature=0.8, seed=0, num_samples=streams, precision=precision)
    t0 = time.perf_counter()
    text = sample_text(model, VOCAB, cfg, path=path)
    return streams * length / (time.perf_counter() - t0), text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lstm", choices=("lstm", "gru", "rnn"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--length", type=int, default=3000, help="characters for the one-stream figure")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--streams-length", type=int, default=400, help="characters per stream, many streams")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny model, few characters: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.embed, args.length, args.repeats = 32, 16, 200, 1
        args.streams, args.streams_length = 8, 50
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=args.model, layers=args.layers, hidden=args.hidden, embed=args.embed),
                    len(VOCAB))
    print(f"machine: {os.cpu_count()} cpus, torch {torch.__version__}, {threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"model: {args.layers}x{args.hidden} {args.model}, embed {args.embed}", flush=True)

    fast_same = (sample_text(model, VOCAB, SampleConfig(length=200, seed=3, num_samples=4), path="fast")
                 == sample_text(model, VOCAB, SampleConfig(length=200, seed=3, num_samples=4), path="module"))
    results: dict[str, list[float]] = {k: [] for k in ("one", "one_module", "one_plain_1t", "one_plain",
                                                      "many", "many_bf16", "many_plain_1t", "many_plain")}
    for r in range(args.repeats):
        results["one"].append(charnn_sample(model, 1, args.length)[0])
        results["one_module"].append(charnn_sample(model, 1, args.length // 4, path="module")[0])
        results["one_plain_1t"].append(plain_sample(model, 1, args.length // 4, 1))
        results["one_plain"].append(plain_sample(model, 1, args.length // 4, threads))
        results["many"].append(charnn_sample(model, args.streams, args.streams_length)[0])
        results["many_bf16"].append(charnn_sample(model, args.streams, args.streams_length, precision="bf16")[0])
        results["many_plain_1t"].append(plain_sample(model, args.streams, args.streams_length // 2, 1))
        results["many_plain"].append(plain_sample(model, args.streams, args.streams_length // 2, threads))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    base_one = max(med["one_plain_1t"], med["one_plain"])
    base_many = max(med["many_plain_1t"], med["many_plain"])
    result = {
        "one_stream_chars_per_s": round(med["one"]), "one_stream_plain_chars_per_s": round(base_one),
        "one_stream_ratio": round(med["one"] / base_one, 2),
        "one_stream_module_path_chars_per_s": round(med["one_module"]),
        "streams": args.streams, "many_streams_chars_per_s": round(med["many"]),
        "many_streams_plain_chars_per_s": round(base_many),
        "many_streams_ratio": round(med["many"] / base_many, 2),
        "many_streams_bf16_chars_per_s": round(med["many_bf16"]),
        "many_streams_bf16_ratio": round(med["many_bf16"] / base_many, 2),
        "fast_and_module_same_text": fast_same, "threads": threads, "repeats": args.repeats,
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(f"one stream: charnn {med['one']:,.0f} chars/s vs plain {base_one:,.0f} chars/s: "
          f"{result['one_stream_ratio']:.2f}x  (target >= 5,000 chars/s for 2x256)")
    print(f"{args.streams} streams: charnn {med['many']:,.0f} chars/s in total vs plain {base_many:,.0f}: "
          f"{result['many_streams_ratio']:.2f}x; with --precision bf16 {med['many_bf16']:,.0f} chars/s: "
          f"{result['many_streams_bf16_ratio']:.2f}x  (target >= 100,000 chars/s for 64 streams)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
