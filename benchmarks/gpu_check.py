#!/usr/bin/env python3
"""Everything charnn needs checked and measured on a GPU, in one command that fits a short window.

Parts, in this order, each after the first in its own process with its own time limit (a failure or a hang
is recorded and the next part runs), under one overall budget:
  machine   the card, its compute capability and bf16, torch / CUDA / cuDNN versions
  tests     the `gpu`-marked tests and the `device`-marked ones with CHARNN_TEST_DEVICE=cuda (sampling paths,
            eval, checkpoint round trips CUDA -> CPU -> CUDA, bitwise resume under --deterministic)
  sampling  the CUDA-graph path against eager steps, 1 and 64 streams: chars/s, and the same text for a seed
  ddp       `torchrun --nproc_per_node=1 -m charnn train` over NCCL, end to end (a sample too: graph capture
            beside NCCL's watchdog)
  speed     charnn's training loop against a bare cuDNN + fused AdamW loop of the same shape in the same
            process (benchmarks/baseline.py, gpu_grid.py): chars/s and peak memory, bf16 and fp32, for the
            plan's GPU choice, the presets and torch-rnn's grid
  quality   `charnn train data/tinyshakespeare.txt --time-budget 180` with the plan's choice, then the best
            checkpoint's validation nats/char (goal: 1.40 or lower)

    PYTHONPATH=. python3 benchmarks/gpu_check.py            # under 8 minutes; results in gpu_check.json
    PYTHONPATH=. python3 benchmarks/gpu_check.py --quick    # under 2 minutes, smaller everything
    python3 benchmarks/gpu_check.py --dry-run               # the same code on the CPU, tiny sizes (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

# (label, layers, hidden, batch, seq, embed), most wanted first: the speed part stops where time runs out.
PLAN_1MB = ("plan, 1 MB corpus", 2, 512, 128, 128, 128)
FULL_SHAPES = (
    PLAN_1MB,
    ("preset medium", 3, 512, 64, 128, 256),
    ("preset large", 3, 1024, 128, 256, 256),
    ("torch-rnn grid", 1, 128, 50, 50, 64),
    ("torch-rnn grid", 2, 256, 50, 50, 64),
    ("torch-rnn grid", 3, 512, 50, 50, 64),
    ("batch 64", 2, 512, 64, 128, 128),
    ("batch 256", 2, 512, 256, 128, 128),
    ("hidden 1024", 2, 1024, 128, 128, 128),
)


@dataclass(frozen=True)
class Mode:
    """The sizes and limits of one kind of run (full, quick, dry-run)."""

    name: str
    device: str
    budget: float  # seconds for everything
    test_args: tuple[str, ...]  # pytest selection
    test_limit: float
    sample_models: tuple[tuple[int, int], ...]  # (layers, hidden)
    sample_streams: tuple[tuple[int, int], ...]  # (streams, characters each)
    sample_limit: float
    ddp_args: tuple[str, ...]
    ddp_limit: float
    speed_shapes: tuple[tuple, ...]
    speed_steps: int
    corpus_chars: int  # of the speed part's synthetic corpus
    quality_budget: float  # --time-budget of the quality run
    quality_corpus: str | None  # None: a small synthetic corpus
    quality_overhead: float = 40  # seconds around its budget: start-up, the last evaluation and checkpoint
    tiny_args: tuple[str, ...] = ()  # the dry run's model and batch, for the quality and DDP runs


GPU_TESTS = ("-m", "gpu or device", "tests")
FULL = Mode(
    "full",
    "cuda",
    455,
    GPU_TESTS,
    150,
    ((2, 256), (2, 512)),
    ((1, 4000), (64, 1000)),
    60,
    ("--device", "cuda", "--backend", "nccl", "--max-iters", "120", "--eval-every", "60", "--log-every", "20"),
    75,
    FULL_SHAPES,
    40,
    3_200_000,
    180,
    "data/tinyshakespeare.txt",
)
QUICK = Mode(
    "quick",
    "cuda",
    105,
    (*GPU_TESTS, "-x"),
    40,
    ((2, 256),),
    ((1, 1500), (64, 300)),
    20,
    ("--device", "cuda", "--backend", "nccl", "--max-iters", "30", "--eval-every", "30", "--log-every", "10"),
    30,
    (PLAN_1MB,),
    12,
    1_000_000,
    10,
    "data/tinyshakespeare.txt",
    25,
)
DRY = Mode(
    "dry-run",
    "cpu",
    240,
    ("-m", "device", "-k", "sampling_paths", "tests/test_gpu.py"),
    120,
    ((1, 16),),
    ((1, 40), (4, 20)),
    60,
    ("--device", "cpu", "--backend", "gloo", "--max-iters", "4", "--eval-every", "4", "--log-every", "2"),
    90,
    (("tiny", 1, 16, 4, 8, 8),),
    4,
    20_000,
    2,
    None,
    60,
    ("--layers", "1", "--hidden", "32", "--embed", "16", "--batch-size", "4", "--seq-len", "16"),
)


# --- running things with a limit ---------------------------------------------------------------------------


def run_limited(cmd: list[str], limit: float, *, env: dict | None = None) -> dict:
    """Run `cmd` in its own process group from the repository root; kill the whole group at `limit` seconds
    (torchrun's and pytest's children too). Returns rc, timed_out, seconds and the output tails."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=max(limit, 1))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    return {
        "rc": proc.returncode,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - start, 1),
        "stdout": out[-4000:],
        "stderr": err[-4000:],
    }


def charnn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "charnn", *args]


def last_error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# --- the parts run in this process ---------------------------------------------------------------------------


def part_machine(mode: Mode, limit: float) -> dict:
    import torch

    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "device": mode.device,
    }
    if mode.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device here (run on the GPU machine, or pass --dry-run)")
        from charnn.runtime import autocast_dtype, cuda_fast_dtypes

        device = torch.device("cuda")
        props = torch.cuda.get_device_properties(device)
        bf16, fp16 = cuda_fast_dtypes(device)
        facts.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gb=round(props.total_memory / 2**30, 1),
            count=torch.cuda.device_count(),
            native_bf16=bf16,
            fp16_tensor_cores=fp16,
            auto_precision=str(autocast_dtype(device, "auto", training=True)),
        )
        smi = (
            run_limited(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], 10)
            if _has("nvidia-smi")
            else None
        )
        facts["driver"] = smi["stdout"].strip() if smi and smi["rc"] == 0 else None
    else:
        from charnn.runtime import native_bf16_cpu

        facts.update(
            name=platform.processor() or platform.machine(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            native_bf16=native_bf16_cpu(),
        )
    return facts


def _has(program: str) -> bool:
    return any((Path(d) / program).exists() for d in os.environ.get("PATH", "").split(os.pathsep))


def part_tests(mode: Mode, limit: float) -> dict:
    junit = Path(tempfile.mkdtemp(prefix="charnn-gpu-check-")) / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *mode.test_args]
    done = run_limited(cmd, limit, env={"CHARNN_TEST_DEVICE": mode.device})
    result = {"command": " ".join(cmd[1:]), "rc": done["rc"], "timed_out": done["timed_out"], **read_junit(junit)}
    result["summary"] = last_error_line(done["stdout"])
    if done["rc"] != 0 or done["timed_out"]:
        result["output_tail"] = done["stdout"][-2500:] + done["stderr"][-1000:]
        raise PartFailed(f"pytest exit {done['rc']}" + (" (timed out)" if done["timed_out"] else ""), result)
    return result


def read_junit(path: Path) -> dict:
    """Counts and the failing tests (with the first line of each failure) from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET

    if not path.exists():
        return {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    cases = ET.parse(path).getroot().iter("testcase")
    counts, failures = {"passed": 0, "failed": 0, "skipped": 0}, []
    for case in cases:
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            counts["failed"] += 1
            message = (bad.get("message") or bad.text or "").strip().splitlines()
            failures.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:200] if message else ''}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures}


def part_ddp(mode: Mode, limit: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="charnn-gpu-check-"))
    corpus = str(REPO / mode.quality_corpus) if mode.quality_corpus else str(tiny_corpus(workdir))
    run_dir = workdir / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "charnn",
        "train",
        corpus,
        *mode.ddp_args,
        *mode.tiny_args,
        "--sample-length",
        "80",
        "--out",
        str(run_dir),
        "--quiet",
        "--no-cache",
    ]
    done = run_limited(cmd, limit, env={"NCCL_DEBUG": "VERSION"})  # NCCL names itself once it starts
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train_rows = [r for r in rows if r.get("kind") == "train"]
    evals = [r["val_loss"] for r in rows if r.get("kind") == "eval"]
    samples = read_jsonl(run_dir / "samples.jsonl")
    result = {
        "command": "torchrun " + " ".join(cmd[3:]),
        "rc": done["rc"],
        "timed_out": done["timed_out"],
        "steps": train_rows[-1]["step"] if train_rows else 0,
        "val_loss": evals[-1] if evals else None,
        "chars_per_s": train_rows[-1]["chars_per_s"] if train_rows else None,
        "samples": len(samples),
        "warnings": [line for line in done["stderr"].splitlines() if line.startswith("warning:")][:5],
        "nccl": next(
            (ln.strip() for ln in (done["stdout"] + done["stderr"]).splitlines() if "NCCL version" in ln), None
        ),
    }
    if done["rc"] != 0 or not train_rows:
        result["stderr_tail"] = done["stderr"][-2500:]
        raise PartFailed(f"torchrun exit {done['rc']}: {last_error_line(done['stderr'])}", result)
    return result


def part_quality(mode: Mode, limit: float) -> dict:
    budget = mode.quality_budget
    if limit < budget + mode.quality_overhead:  # the clock ran short: a shorter run, said so in the results
        budget = max(limit - mode.quality_overhead, 2)
    workdir = Path(tempfile.mkdtemp(prefix="charnn-gpu-check-"))
    corpus = str(REPO / mode.quality_corpus) if mode.quality_corpus else str(tiny_corpus(workdir))
    run_dir = workdir / "quality"
    args = [
        "train",
        corpus,
        "--time-budget",
        f"{budget:g}",
        "--out",
        str(run_dir),
        "--quiet",
        "--no-cache",
        *mode.tiny_args,
    ]
    if mode.device == "cpu":
        args += ["--device", "cpu"]
    done = run_limited(charnn_cmd(*args), limit)
    result = {
        "command": "charnn " + " ".join(args),
        "time_budget": budget,
        "shortened": budget < mode.quality_budget,
        "rc": done["rc"],
        "done": [ln for ln in done["stderr"].splitlines() if ln.startswith(("done:", "warning:"))][:5],
    }
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    result["plan"] = (config.get("plan") or {}).get("lines")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    rates = [r["chars_per_s"] for r in rows if r.get("kind") == "train"][1:]
    result["steps"] = max((r["step"] for r in rows if "step" in r), default=0)
    result["median_chars_per_s"] = round(sorted(rates)[len(rates) // 2]) if rates else None
    if done["rc"] != 0:
        raise PartFailed(f"charnn train exit {done['rc']}: {last_error_line(done['stderr'])}", result)
    # the best checkpoint's score on the validation split, as training logged it (`charnn eval RUN` gives the
    # same figure: tests/test_gpu.py checks that on the device)
    evals = [r for r in rows if r.get("kind") == "eval" and r.get("val_loss") is not None]
    if not evals:
        raise PartFailed("no validation result in metrics.jsonl", result)
    best = min(evals, key=lambda r: r["val_loss"])
    result.update(
        val_nats_per_char=round(best["val_loss"], 4),
        best_step=best["step"],
        evaluations=len(evals),
        goal_met=best["val_loss"] <= 1.40 if mode.name == "full" else None,
    )
    return result


def tiny_corpus(workdir: Path) -> Path:
    from baseline import synthetic_corpus

    return synthetic_corpus(workdir / "tiny.txt", 20_000)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def part_in_child(name: str):
    """A part run by this script in a child process (`--part`): its own CUDA context, so a CUDA error that
    poisons one cannot spoil the others, and a hang is killed at the part's limit."""

    def run(mode: Mode, limit: float) -> dict:
        out = Path(tempfile.mkdtemp(prefix="charnn-gpu-check-")) / f"{name}.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--part",
            name,
            "--part-out",
            str(out),
            "--mode",
            mode.name,
            "--part-limit",
            f"{limit:.0f}",
        ]
        done = run_limited(cmd, limit + 15)
        result = json.loads(out.read_text()) if out.exists() else {}
        if done["rc"] != 0 or done["timed_out"]:
            result["stderr_tail"] = done["stderr"][-2500:]
            why = "timed out" if done["timed_out"] else last_error_line(done["stderr"])
            raise PartFailed(f"exit {done['rc']}: {why}", result)
        return result

    return run


class PartFailed(Exception):
    """A part that ran and failed, with what it measured before failing."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


# --- orchestration -----------------------------------------------------------------------------------------


def plan_parts(mode: Mode) -> list[tuple[str, object, float]]:
    """(name, function, its own limit) in running order; the quality run's time is kept back for it, and the
    speed part takes what is left before it."""
    return [
        ("machine", part_machine, 30),
        ("tests", part_tests, mode.test_limit),
        ("sampling", part_in_child("sampling"), mode.sample_limit),
        ("ddp", part_ddp, mode.ddp_limit),
        ("speed", part_in_child("speed"), mode.budget),
        ("quality", part_quality, mode.quality_budget + mode.quality_overhead),
    ]


def run_all(mode: Mode, out: Path) -> dict:
    started = time.monotonic()
    report = {
        "command": " ".join(sys.argv),
        "mode": mode.name,
        "budget_s": mode.budget,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "parts": {},
    }
    parts = plan_parts(mode)
    for index, (name, function, own_limit) in enumerate(parts):
        left = mode.budget - (time.monotonic() - started)
        reserve = sum(limit for later, _, limit in parts[index + 1 :] if later == "quality")
        limit = min(own_limit, left - reserve) if name != "quality" else min(own_limit, left)
        entry = {"ok": False, "skipped": False, "seconds": 0.0, "error": None, "result": {}}
        machine = report["parts"].get("machine")
        if machine is not None and not machine["ok"] and mode.device != "cpu":
            entry["skipped"], entry["error"] = True, "skipped: the machine check failed (no usable GPU?)"
        elif limit < 5:
            entry["skipped"], entry["error"] = True, f"skipped: {left:.0f}s of the budget left"
        else:
            t0 = time.monotonic()
            try:
                entry["result"], entry["ok"] = function(mode, limit), True
            except PartFailed as err:
                entry["error"], entry["result"] = str(err), err.result
            except Exception as err:  # noqa: BLE001 - one part's failure is recorded; the next part runs
                entry["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            entry["seconds"] = round(time.monotonic() - t0, 1)
        report["parts"][name] = entry
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        out.write_text(json.dumps(report, indent=1, default=str))  # after each part: a kill leaves the rest
        print(f"[{report['elapsed_s']:6.1f}s] {name}: {'ok' if entry['ok'] else entry['error']}", flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json", help="where the full results go (JSON)")
    ap.add_argument("--quick", action="store_true", help="under 2 minutes: fewer shapes, shorter runs")
    ap.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny sizes")
    ap.add_argument("--budget", type=float, help="overall seconds (default: 455, 105 with --quick)")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this (child) process
    ap.add_argument("--part-out", help=argparse.SUPPRESS)
    ap.add_argument("--part-limit", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        from gpu_check_parts import run_part

        mode = {m.name: m for m in (FULL, QUICK, DRY)}[args.mode]
        run_part(args.part, mode, args.part_limit, Path(args.part_out))
        return
    mode = DRY if args.dry_run else QUICK if args.quick else FULL
    if args.budget:
        mode = Mode(**{**asdict(mode), "budget": args.budget})
    from gpu_check_parts import print_table

    report = run_all(mode, Path(args.out))
    print_table(report)
    print(f"full results: {args.out}")
    sys.exit(0 if all(p["ok"] for p in report["parts"].values()) else 1)


if __name__ == "__main__":
    main()
