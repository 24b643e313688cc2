#!/usr/bin/env python3
"""The output's temperature (`--calibrate`): is fitting it on the validation split tuning to that split?

For each RUN (its best checkpoint), from the model as trained (the training state's head, before the scale was
folded in): the validation loss uncalibrated, with a temperature fitted on the whole split (what training
saves), and cross-fitted: a temperature fitted on each half of the split scores the other half, so no figure
comes from a fit on the text it scores. With `--prose FILE`, the same file scored uncalibrated and with the
temperature fitted on the validation split: a different kind of text than the one the fit saw. Temperatures on a
grid of 0.005 in the logit scale; nats/char.

    python benchmarks/calibration.py checkpoints/run-a checkpoints/run-b --prose data/heldout_prose.txt
    python benchmarks/calibration.py --quick          # trains a tiny run first: a few seconds
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, machine, parser, repo_env

GRID = tuple(round(x, 3) for x in np.arange(0.7, 1.3, 0.005))  # temperatures 0.77 to 1.43


def analyse(run: str, prose: str | None) -> dict:
    from charnn.calibration import best_scale, scaled, unfold
    from charnn.evaluate import evaluate_file, evaluate_ids, validation_ids
    from charnn.store.rundir import load_run
    from charnn.store.trainstate import load_state, state_path

    loaded = load_run(run)
    state = load_state(state_path(loaded.path))
    if state.get("unscaled"):
        unfold(loaded.model, state["unscaled"])  # the model as trained: no temperature yet
    ids = np.asarray(validation_ids(loaded))
    half = len(ids) // 2
    seg = loaded.eval_segment
    whole = evaluate_ids(loaded.model, ids, segment=seg, scales=GRID)
    a = evaluate_ids(loaded.model, ids[: half + 1], segment=seg, scales=GRID)  # predictions 1..half
    b = evaluate_ids(loaded.model, ids[half:], segment=seg, scales=GRID)  # the rest
    fitted = best_scale(whole.scaled_nats)
    cross = (b.scaled_nats[best_scale(a.scaled_nats)] + a.scaled_nats[best_scale(b.scaled_nats)]) / (a.chars + b.chars)
    row = {
        "run": run,
        "step": loaded.step,
        "val_uncalibrated": round(whole.scaled_nats[1.0] / whole.chars, 4),
        "val_fitted": round(whole.scaled_nats[fitted] / whole.chars, 4),
        "temperature": round(1 / fitted, 3),
        "val_cross_fitted": round(cross, 4),
        "halves_temperatures": [round(1 / best_scale(a.scaled_nats), 3), round(1 / best_scale(b.scaled_nats), 3)],
    }
    if prose:
        plain = evaluate_file(loaded, prose, skip_unknown=True, segment=seg)
        with scaled(loaded.model, fitted):
            calibrated = evaluate_file(loaded, prose, skip_unknown=True, segment=seg)
        row["prose_uncalibrated"] = round(plain.loss, 4)
        row["prose_with_val_temperature"] = round(calibrated.loss, 4)
    return row


def main() -> None:
    ap = parser(__doc__, "train a tiny run on the bundled corpus first and analyse it")
    ap.add_argument("runs", nargs="*", help="run directories (their best checkpoints)")
    ap.add_argument("--prose", help="a text of another kind, scored with the validation split's temperature")
    args = ap.parse_args()
    print(machine())
    runs = list(args.runs)
    if args.quick:
        out = Path(tempfile.mkdtemp()) / "run"
        cmd = [sys.executable, "-m", "charnn", "train", str(REPO / "data" / "tinyshakespeare.txt"), "--quiet"]
        cmd += ["--preset", "tiny", "--max-iters", "60", "--eval-every", "30", "--out", str(out)]
        subprocess.run(cmd, env=repo_env(), check=True)
        runs = [str(out)]
    if not runs:
        ap.error("give a RUN, or --quick")
    for run in runs:
        print(json.dumps(analyse(run, args.prose)), flush=True)


if __name__ == "__main__":
    main()
