"""The playground page's speed and size in headless Chromium: characters per second for the default model (2x256
LSTM, embedding 128) and the file size and opening time of a `large`-preset-shaped model (3x1024 LSTM, embedding
256), in fp32 and fp16. Random weights (speed does not depend on them) and a 65-symbol vocabulary.

    python benchmarks/export_page.py            # both models, 3 repeats (medians)
    python benchmarks/export_page.py --quick    # a tiny model: checks the script runs
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from charnn import CharRNN, ModelConfig, Vocab
from charnn.config import DataConfig
from charnn.export import export_html
from charnn.presets import PRESETS
from charnn.shapes import num_parameters
from charnn.store.checkpoint import load_model, model_bytes
from charnn.store.files import atomic_write

VOCAB = Vocab(tuple(range(32, 97)))  # 65 symbols, like tiny shakespeare's
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_model(cfg: ModelConfig, directory: Path, name: str) -> Path:
    torch.manual_seed(0)
    path = directory / name / "step-00000001.safetensors"
    path.parent.mkdir()
    model = CharRNN(cfg, len(VOCAB))
    atomic_write(path, model_bytes(model, VOCAB, DataConfig(), step=1, val_loss=None, corpus_sha256=""))
    return path


def open_page(page: Path, profile: Path, query: str) -> tuple[str, float]:
    """The DOM once loaded (no virtual time: the page's clock is real) and the browser's whole wall time."""
    start = time.perf_counter()
    res = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.as_uri() + query,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    if res.returncode != 0 or "data-open-ms" not in res.stdout:
        raise SystemExit(f"chromium failed on {page}: {res.stderr[-1000:]}")
    return res.stdout, wall


def measure(path: Path, directory: Path, precision: str, length: int, repeats: int) -> dict[str, float]:
    page = export_html(load_model(path), directory / f"{path.parent.name}-{precision}.html", precision=precision)
    opens, walls, speeds = [], [], []
    for _ in range(repeats):
        query = f"?prime=ROMEO%3A%20&length={length}&seed=1&autorun=1&sync=1"
        dom, wall = open_page(page, directory / "profile", query)
        opens.append(float(re.search(r'data-open-ms="(\d+)"', dom)[1]) / 1000)
        speeds.append(float(re.search(r'data-cps="(\d+)"', dom)[1]))
        walls.append(wall)
    return {
        "mb": page.stat().st_size / 1e6,
        "open_s": statistics.median(opens),
        "wall_s": statistics.median(walls),
        "cps": statistics.median(speeds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="A tiny model only.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if CHROMIUM is None:
        raise SystemExit("needs chromium (apt-get install chromium)")
    models = {
        "default (2x256 LSTM, embed 128)": (ModelConfig(), 3000),
        "large preset (3x1024 LSTM, embed 256)": (PRESETS["large"].model, 300),
    }
    if args.quick:
        models = {"tiny (1x16 LSTM)": (ModelConfig(layers=1, hidden=16, embed=8), 200)}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for k, (label, (cfg, length)) in enumerate(models.items()):
            path = make_model(cfg, directory, f"model{k}")
            params = num_parameters(cfg, len(VOCAB))
            for precision in ("fp32", "fp16"):
                m = measure(path, directory, precision, length, 1 if args.quick else args.repeats)
                print(
                    f"{label}, {params / 1e6:.2f} M parameters, {precision}: {m['mb']:.1f} MB, open "
                    f"{m['open_s']:.2f} s (chromium start to exit {m['wall_s']:.1f} s), "
                    f"{m['cps']:.0f} chars/s over {length} characters",
                    flush=True,
                )


if __name__ == "__main__":
    main()
