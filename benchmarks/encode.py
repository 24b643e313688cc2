"""Benchmark the corpus cache: encode MB/s and peak RSS for generated 10 MB / 100 MB / 1 GB corpora, and the
peak RSS of a few training steps on the 1 GB one against the model's footprint + 300 MB.

Corpora are generated in a temporary directory (tinyshakespeare repeated, with a line of non-ASCII text per
block) and deleted at the end. Each measurement runs in its own subprocess so its peak RSS is its own.

    python benchmarks/encode.py            # 10 MB, 100 MB, 1 GB (needs ~3 GB free in $TMPDIR)
    python benchmarks/encode.py --quick    # 10 MB and 100 MB, no training smoke
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, machine, parser, repo_env

MB = 1 << 20

ENCODE = r"""
import json, resource, sys, time
from charnn.config import DataConfig
from charnn.store.corpus_cache import load_corpus
phases = {}
def on(e):
    phases[e.phase] = e.elapsed
t = time.perf_counter()
c = load_corpus(sys.argv[1], DataConfig(), cache_dir=sys.argv[2], on_progress=on)
total = time.perf_counter() - t
print(json.dumps({"seconds": total, "phases": phases, "chars": len(c.ids), "vocab": len(c.vocab),
                  "dtype": c.ids.dtype.name, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

TRAIN = r"""
import json, resource, sys
from charnn.config import DataConfig, ModelConfig, TrainConfig
from charnn.training.train import train
model = ModelConfig(model="lstm", layers=2, hidden=256, embed=128)
cfg = TrainConfig(batch_size=32, seq_len=128, max_iters=5, eval_every=5, sample_length=50, log_every=1,
                  warmup_iters=0, device="cpu", threads=2)
r = train(sys.argv[1], model_cfg=model, train_cfg=cfg, data_cfg=DataConfig(val_frac=0.0005),
          out_dir=sys.argv[3], cache_dir=sys.argv[2])
from charnn.shapes import num_parameters
print(json.dumps({"steps": r.steps, "params": num_parameters(model, 96),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BASELINE = r"""
import json, resource, torch
from charnn.config import ModelConfig
from charnn.model import CharRNN
from charnn.training.step import make_optimizer
m = CharRNN(ModelConfig(model="lstm", layers=2, hidden=256, embed=128), 96)
opt = make_optimizer(m, __import__("charnn.config").config.TrainConfig(device="cpu"), torch.device("cpu"))
x = torch.zeros(32, 128, dtype=torch.long)
for _ in range(2):
    logits, h = m(x)
    logits.float().mean().backward(); opt.step(); opt.zero_grad()
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(path: Path, size: int) -> None:
    """`size` bytes of ASCII-ish text: tinyshakespeare blocks, each closed by a line of non-ASCII characters."""
    base = (REPO / "data" / "tinyshakespeare.txt").read_bytes()
    block = base + "Café naïve — “quoted” 日本語 😀\n".encode()
    with path.open("wb") as f:
        written = 0
        while written + len(block) <= size:
            f.write(block)
            written += len(block)
        f.write(base[: size - written].decode("ascii", "ignore").encode())


def run(code: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=repo_env(), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = parser(__doc__, quick="10 MB and 100 MB only; no training smoke")
    ap.add_argument("--tmp", default=None, help="directory for the generated files [default: $TMPDIR]")
    args = ap.parse_args()
    sizes = [10 * MB, 100 * MB] + ([] if args.quick else [1024 * MB])
    root = Path(tempfile.mkdtemp(prefix="charnn-bench-", dir=args.tmp))
    try:
        machine()
        print(f"{'corpus':>8} {'first encode':>13} {'(hash/scan/encode MB/s)':>24} {'cache hit':>10} {'peak RSS':>9}")
        for size in sizes:
            corpus, cache = root / f"c{size // MB}.txt", root / "cache"
            generate(corpus, size)
            first = run(ENCODE, str(corpus), str(cache))
            hit = run(ENCODE, str(corpus), str(cache))
            mb = size / 1e6
            per = "/".join(f"{mb / first['phases'][p]:.0f}" for p in ("hash", "scan", "encode"))
            print(
                f"{size // MB:>6}MB {mb / first['seconds']:>9.0f} MB/s {per:>24} {mb / hit['seconds']:>5.0f} MB/s "
                f"{max(first['rss_mb'], hit['rss_mb']):>6.0f} MB",
                flush=True,
            )
            if size == 1024 * MB:
                base = run(BASELINE)
                smoke = run(TRAIN, str(corpus), str(cache), str(root / "run"))
                print(
                    f"1 GB training smoke ({smoke['steps']} steps, {smoke['params']:,} params, batch 32x128): "
                    f"peak RSS {smoke['rss_mb']:.0f} MB; the same model training on an in-memory batch: "
                    f"{base['rss_mb']:.0f} MB; target <= {base['rss_mb'] + 300:.0f} MB",
                    flush=True,
                )
            corpus.unlink()
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
