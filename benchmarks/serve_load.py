"""Load test of `charnn serve`: N concurrent clients on loopback (1, 8, 64 by default), each streaming `--length`
characters from POST /v1/generate: total characters per second, time to the first character (p50, p99), and
every response checked complete and of the right length; each load `--repeats` times in a row on a server that
has answered once (its median run; the fresh server's first request is printed apart). In the same run: the
bare batched stepper (`charnn.sample_text` with 64 streams, no server), a server that handles one request at a time
(`--max-batch 1`), the engine's row layouts without HTTP (batch sizes that follow the load vs one batch of 64
rows), and the server's RSS before and after `--requests` more requests.

The model is a randomly initialised CharRNN saved as a checkpoint (speed does not depend on the weights).
Torch threads: the server's own choice (one core fewer than the machine's); the bare figures use as many.

    python benchmarks/serve_load.py                  # 2x256 LSTM, 1/8/64 clients x 2,000 chars, 1,000 requests
    python benchmarks/serve_load.py --requests 10000 # the memory check over 10,000 requests
    python benchmarks/serve_load.py --quick          # tiny, a few seconds (the CI smoke test)
    python benchmarks/serve_load.py --engine process # the model stepping in a process of its own
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's charnn, wherever the script is run from

from charnn import CharRNN, DataConfig, ModelConfig, SampleConfig, Vocab, sample_text  # noqa: E402
from charnn.serve.engine import Engine  # noqa: E402
from charnn.serve.jobs import Job  # noqa: E402
from charnn.serve.rows import serving_threads  # noqa: E402
from charnn.store.checkpoint import model_bytes  # noqa: E402

VOCAB = Vocab(tuple([10, *range(32, 97)]))  # 66 symbols, like tiny shakespeare's 65


def save_model(args: argparse.Namespace, folder: Path) -> tuple[CharRNN, Path]:
    torch.manual_seed(0)
    model = CharRNN(
        ModelConfig(model=args.model, layers=args.layers, hidden=args.hidden, embed=args.embed), len(VOCAB)
    ).eval()
    path = folder / "model.safetensors"
    path.write_bytes(model_bytes(model, VOCAB, DataConfig(), step=0, val_loss=None, corpus_sha256=""))
    return model, path


def bare_rate(model: CharRNN, streams: int, length: int, threads: int) -> float:
    """chars/s of `charnn.sample_text` with `streams` streams at once: the batched stepper without a server."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        sample_text(model, VOCAB, SampleConfig(length=length, num_samples=streams, temperature=0.8, seed=0))
        return streams * length / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def engine_rate(model: CharRNN, streams: int, length: int, sizes: tuple[int, ...] | None, threads: int) -> float:
    """chars/s of the serving engine alone (no HTTP): `streams` jobs at once; `sizes` None follows the load."""
    ended = threading.Semaphore(0)

    def sink(outputs):
        for out in outputs:
            if out.end:
                ended.release()

    engine = Engine(model, VOCAB, sink, max_batch=64, sizes=sizes, threads=threads)
    engine.start()
    t0 = time.perf_counter()
    for seed in range(streams):
        engine.submit(Job(SampleConfig(length=length, temperature=0.8, seed=seed), [0]))
    for _ in range(streams):
        ended.acquire()
    rate = streams * length / (time.perf_counter() - t0)
    engine.close()
    engine.join()
    return rate


class Server:
    """`python -m charnn serve CKPT --port 0` in a subprocess; its URL read from its log."""

    def __init__(self, checkpoint: Path, log: Path, *extra: str) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "charnn", "serve", str(checkpoint), "--port", "0", *extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 120
        while not (found := re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{found.group(1)}"
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

    def rss_mb(self) -> float:
        """The server's RSS, its engine processes' (`--engine process`) included."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        pids = [pid, *map(int, children.read_text().split())] if children.exists() else [pid]
        return (
            sum(int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text()).group(1)) for p in pids) / 1024
        )

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


async def one_client(client: httpx.AsyncClient, url: str, length: int, seed: int) -> tuple[float, int, bool]:
    """One streamed request: (seconds to the first character, characters received, complete and right)."""
    t0 = time.perf_counter()
    first, text, done = None, [], None
    body = {"length": length, "temperature": 0.8, "seed": seed, "stream": True}
    async with client.stream("POST", f"{url}/v1/generate", json=body) as response:
        event = "message"
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "message":
                    first = first if first is not None else time.perf_counter() - t0
                    text.append(data["text"])
                elif event == "done":
                    done = data
                event = "message"
    chars = sum(map(len, text))
    return first or float("nan"), chars, bool(done and done["complete"] and done["chars"] == chars == length)


async def clients(url: str, n: int, length: int) -> dict:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, url, length, seed) for seed in range(n)))
        wall = time.perf_counter() - t0
    firsts = sorted(r[0] for r in results)
    return {
        "clients": n,
        "chars_per_s": round(sum(r[1] for r in results) / wall),
        "ttfc_p50_ms": round(1000 * statistics.median(firsts), 1),
        "ttfc_p99_ms": round(1000 * firsts[min(len(firsts) - 1, int(0.99 * len(firsts)))], 1),
        "all_complete": all(r[2] for r in results),
        "wall_s": round(wall, 2),
    }


async def many_requests(url: str, count: int, concurrency: int = 16) -> bool:
    """`count` short requests, half streamed, `concurrency` at a time; True when every one was complete."""
    ok = []

    async def worker(client: httpx.AsyncClient, k: int) -> None:
        for i in range(k, count, concurrency):
            if i % 2:
                ok.append((await one_client(client, url, 20, i))[2])
            else:
                answer = await client.post(f"{url}/v1/generate", json={"length": 20, "seed": i})
                ok.append(answer.status_code == 200 and answer.json()["chars"] == 20)

    async with httpx.AsyncClient(timeout=None) as client:
        await asyncio.gather(*(worker(client, k) for k in range(concurrency)))
    return len(ok) == count and all(ok)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lstm", choices=("lstm", "gru", "rnn"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--length", type=int, default=2000, help="characters each client generates")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each load (their median), and alternations of bare stepper and server at the most clients",
    )
    ap.add_argument("--requests", type=int, default=1000, help="short requests for the memory check")
    ap.add_argument("--engine", default="thread", choices=("thread", "process"), help="the servers' --engine")
    ap.add_argument("--quick", action="store_true", help="tiny model, few characters: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.embed, args.length, args.clients, args.requests, args.repeats = 32, 16, 200, [1, 4], 40, 1
    return args


def engine_figures(model: CharRNN, args: argparse.Namespace, top: int, threads: int) -> dict:
    """The engine's row layouts without HTTP, and the bare stepper's one stream, chars/s."""
    figures = {
        "bare_1_stream": bare_rate(model, 1, args.length, threads),
        "engine_1_stream_follow": engine_rate(model, 1, args.length, None, threads),
        "engine_1_stream_fixed": engine_rate(model, 1, args.length, (top,), threads),
        f"engine_{top}_streams_follow": engine_rate(model, top, args.length, None, threads),
    }
    print("chars/s without HTTP: " + ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()), flush=True)
    return {k: round(v) for k, v in figures.items()}


def memory(server: Server, count: int) -> tuple[bool, list[float], float]:
    """`count` more requests: all complete?, RSS before and after each quarter (MB), seconds."""
    rss = [server.rss_mb()]
    t0 = time.perf_counter()
    ok = True
    for quarter in range(4):
        ok &= asyncio.run(many_requests(server.url, count // 4 + (quarter < count % 4)))
        rss.append(server.rss_mb())
    return ok, rss, time.perf_counter() - t0


def typical(url: str, n: int, length: int, repeats: int) -> dict:
    """`n` clients at once, `repeats` times in a row: the run with the median rate (all of them complete)."""
    runs = sorted((asyncio.run(clients(url, n, length)) for _ in range(repeats)), key=lambda r: r["chars_per_s"])
    return {**runs[len(runs) // 2], "all_complete": all(r["all_complete"] for r in runs), "runs": len(runs)}


def main() -> None:
    args = parse_args()
    top, threads = max(args.clients), serving_threads()
    print(
        f"machine: {os.cpu_count()} cpus, torch {torch.__version__}, {threads} torch thread(s) in the server "
        f"and the bare figures, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(
        f"model: {args.layers}x{args.hidden} {args.model}, embed {args.embed}; {args.length} chars per client",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model, checkpoint = save_model(args, Path(tmp))
        engine = engine_figures(model, args, top, threads)
        server = Server(checkpoint, Path(tmp) / "server.log", "--max-batch", str(top), "--engine", args.engine)
        cold = asyncio.run(clients(server.url, 1, args.length))  # a fresh server's first request, apart
        print(f"first request to a fresh server: {cold}", flush=True)
        loads = [typical(server.url, n, args.length, args.repeats) for n in args.clients]
        for load in loads:
            print(f"{load['clients']} client(s): {load}", flush=True)
        pairs = []  # (bare stepper, server) at `top` streams, alternating
        for _ in range(args.repeats):
            pairs.append(
                (
                    bare_rate(model, top, args.length, threads),
                    asyncio.run(clients(server.url, top, args.length))["chars_per_s"],
                )
            )
            print(f"{top} streams: bare {pairs[-1][0]:,.0f}, server {pairs[-1][1]:,} chars/s", flush=True)
        requests_ok, rss, requests_s = memory(server, args.requests)
        exit_code = server.stop()
        serial_server = Server(checkpoint, Path(tmp) / "serial.log", "--max-batch", "1", "--engine", args.engine)
        serial = asyncio.run(clients(serial_server.url, top, args.length))
        serial_exit = serial_server.stop()
    ratio = statistics.median(s / b for b, s in pairs)
    one = next((load["chars_per_s"] for load in loads if load["clients"] == 1), None)
    alone = {  # one client and the engine's one stream without HTTP, against the bare one-stream sampler
        "one_client_vs_bare_one_stream": None if one is None else round(one / engine["bare_1_stream"], 2),
        "engine_one_stream_vs_bare": round(engine["engine_1_stream_follow"] / engine["bare_1_stream"], 2),
    }
    batched = statistics.median(s for _, s in pairs)
    result = {
        "first_request": cold,
        "loads": loads,
        "pairs": [[round(b), s] for b, s in pairs],
        "server_vs_bare_ratio": round(ratio, 2),
        "bare_stepper_chars_per_s": round(statistics.median(b for b, _ in pairs)),
        "one_at_a_time_chars_per_s": serial["chars_per_s"],
        "one_at_a_time_all_complete": serial["all_complete"],
        "batched_vs_one_at_a_time": round(batched / serial["chars_per_s"], 1),
        **engine,
        **alone,
        "requests": args.requests,
        "requests_all_complete": requests_ok,
        "requests_s": round(requests_s, 1),
        "rss_mb_before": round(rss[0], 1),
        "rss_mb_after": round(rss[-1], 1),
        "rss_mb_by_quarter": [round(r, 1) for r in rss],
        "exit_codes": [exit_code, serial_exit],
        "engine": args.engine,
        "threads": threads,
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(
        f"{top} clients: server / bare batched stepper, median of {len(pairs)} alternations: ratio {ratio:.2f} "
        f"(target >= 0.7)"
    )
    print(
        f"{top} clients: batched {batched:,.0f} vs one request at a time {serial['chars_per_s']:,} chars/s: "
        f"{result['batched_vs_one_at_a_time']}x"
    )
    print(
        f"1 client / bare one-stream sampler: ratio {alone['one_client_vs_bare_one_stream']}; without HTTP the "
        f"engine's one stream: ratio {alone['engine_one_stream_vs_bare']}"
    )
    print(
        f"memory: RSS {rss[0]:.1f} MB before, {rss[-1]:.1f} MB after {args.requests} more requests "
        f"({'all complete' if requests_ok else 'SOME FAILED'}, {requests_s:.1f}s); by quarter "
        + ", ".join(f"{r:.1f}" for r in rss)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
