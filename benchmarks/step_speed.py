"""One sampling step on the CPU: the fast stepper with its matmul weights packed once for oneDNN (what charnn
does from an LSTM of 256 units) against the same stepper on plain addmm (MKL, which re-packs the weight on every
call), in one run.

For each shape and precision both steppers are built on the same randomly initialised model and stepped in
alternating rounds (the order flipped every round); the figure is the median over rounds of each one's time
per step, and the ratio is the median of the per-round ratios, so drifts of the machine's speed cancel. The
thread count is the one sampling uses (one thread up to 8 streams of 256 units). Two steppers of identical code
differ by up to 20% here on one stream in fp32 (where they sit in memory), so read small ratios with that in mind.

    python benchmarks/step_speed.py            # 2x256 and 2x512 LSTM, 1-64 streams, fp32 and bf16 (~30 s)
    python benchmarks/step_speed.py --quick    # one small shape, a few rounds: checks that it runs
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch
from common import interleaved, load_average, machine, median, median_ratio, parser

from charnn import CharRNN, ModelConfig
from charnn.sampling import stepper as sampling

TUNING = sampling.MEASURED
SHAPES = [
    ("lstm", 256, 1),
    ("lstm", 256, 8),
    ("lstm", 256, 64),
    ("lstm", 512, 1),
    ("lstm", 512, 16),
    ("gru", 256, 64),
    ("rnn", 512, 64),
]


def stepper(model: CharRNN, streams: int, precision: str, packed: bool) -> sampling.FastStepper:
    tuning = TUNING if packed else dataclasses.replace(TUNING, pack_min_weight=1 << 62)
    return sampling.FastStepper(model, batch_size=streams, precision=precision, tuning=tuning)


@torch.inference_mode()
def compare(kind: str, hidden: int, streams: int, precision: str, rounds: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(model=kind, layers=2, hidden=hidden, embed=128), 65).eval()
    both = {"packed": stepper(model, streams, precision, True), "addmm": stepper(model, streams, precision, False)}
    ids = torch.randint(0, 65, (streams,))

    def us_per_step(st: sampling.FastStepper) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            st.step(ids)
        return (time.perf_counter() - t0) / steps * 1e6

    with sampling.few_threads(streams, hidden, ids.device):
        for st in both.values():
            for _ in range(20):
                st.step(ids)
        times = interleaved(rounds, {name: lambda st=st: us_per_step(st) for name, st in both.items()}, alternate=True)
        threads = torch.get_num_threads()
    packed_any = any(w.packed is not None for w in both["packed"].weights)
    return {
        "model": f"2x{hidden} {kind}",
        "streams": streams,
        "precision": precision,
        "threads": threads,
        "packed_used": packed_any,
        "packed_us": round(median(times["packed"]), 1),
        "addmm_us": round(median(times["addmm"]), 1),
        "ratio": round(median_ratio(times["addmm"], times["packed"]), 3),
    }


def main() -> None:
    ap = parser(__doc__, quick="one small shape, a few rounds")
    ap.add_argument("--rounds", type=int, default=40, help="alternating rounds per shape")
    ap.add_argument("--steps", type=int, default=50, help="steps per round")
    args = ap.parse_args()
    shapes, rounds, steps = SHAPES, args.rounds, args.steps
    if args.quick:
        shapes, rounds, steps = [("lstm", 128, 4)], 4, 5
        global TUNING
        TUNING = sampling.Tuning(pack_min_weight=0)  # so the small shape takes the packed path too
    machine(oneDNN=torch.backends.mkldnn.is_available())
    rows = []
    for kind, hidden, streams in shapes:
        for precision in ("fp32", "bf16"):
            row = compare(kind, hidden, streams, precision, rounds, steps)
            rows.append(row)
            print(
                f"{row['model']}, {streams:>2} streams, {precision}, {row['threads']} thread(s): "
                f"packed {row['packed_us']:,.0f} us/step vs addmm {row['addmm_us']:,.0f}: ratio {row['ratio']:.2f}"
                + ("" if row["packed_used"] else "  (rule: not packed, both the same code)"),
                flush=True,
            )
    used = [row["ratio"] for row in rows if row["packed_used"]]
    print(
        json.dumps(
            {"rows": rows, "median_ratio": round(median(used), 3) if used else None, "load_average": load_average()}
        )
    )


if __name__ == "__main__":
    main()
