"""The parts of benchmarks/gpu_check.py that measure inside one process (sampling, training speed), run by it in
a child process each (`--part`), and the table it prints last. Not meant to be run by itself.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path


def run_part(name: str, mode, limit: float, out: Path) -> None:
    """Run part `name` within `limit` seconds, writing what it has measured to `out` as it goes."""
    deadline = time.monotonic() + limit
    {"sampling": part_sampling, "speed": part_speed}[name](mode, deadline, out)


def _save(out: Path, result: dict) -> None:
    out.write_text(json.dumps(result, indent=1, default=str))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_sample(model, vocab, cfg, tuning, device) -> tuple[float, list, list[str]]:
    """(seconds, texts, warnings) of one sample_text call, after a short warm-up call of the same kind (kernels,
    cuDNN plans; the graph is captured in each call, as it is for a user)."""
    from charnn.sampling.generate import sample_text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample_text(model, vocab, replace(cfg, length=min(cfg.length, 50)), tuning=tuning)
        _sync(device)
        t0 = time.perf_counter()
        texts = sample_text(model, vocab, cfg, tuning=tuning)
        _sync(device)
        seconds = time.perf_counter() - t0
    return seconds, texts, sorted({str(w.message) for w in caught})


def part_sampling(mode, deadline: float, out: Path) -> None:
    """The CUDA-graph path against eager stepping (the same fast kernel, no graph): chars/s for 1 and many
    streams, and whether both give the same text for a seed. On the CPU both are eager (no graphs there)."""
    import torch

    from charnn.config import ModelConfig, SampleConfig
    from charnn.data import Vocab
    from charnn.model import CharRNN
    from charnn.sampling.stepper import Tuning

    device = torch.device(mode.device)
    vocab = Vocab((10, *range(32, 127)))  # newline and printable ASCII
    result = {"device": str(device), "rows": []}
    for layers, hidden in mode.sample_models:
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(layers=layers, hidden=hidden, embed=min(hidden, 128)), len(vocab)).to(device)
        for streams, length in mode.sample_streams:
            row = {"model": f"LSTM {layers}x{hidden}", "streams": streams, "chars": length}
            if time.monotonic() > deadline - 5:
                row["skipped"] = "out of time"
                result["rows"].append(row)
                continue
            cfg = SampleConfig(length=length, temperature=1.0, seed=7, num_samples=streams, prime="The ")
            texts = {}
            for path, tuning in (("graph", Tuning()), ("eager", Tuning(cuda_graphs=False))):
                seconds, texts[path], caught = _timed_sample(model, vocab, cfg, tuning, device)
                row[f"{path}_chars_per_s"] = round(streams * length / seconds)
                row[f"{path}_warnings"] = caught
            row["same_text"] = texts["graph"] == texts["eager"]
            row["graph_speedup"] = round(row["graph_chars_per_s"] / row["eager_chars_per_s"], 2)
            result["rows"].append(row)
            _save(out, result)
    result["all_same_text"] = all(r.get("same_text", True) for r in result["rows"])
    _save(out, result)
    if not result["all_same_text"]:
        raise SystemExit("the CUDA-graph and eager paths drew different texts for the same seed")


def part_speed(mode, deadline: float, out: Path) -> None:
    """charnn's loop against the bare loop for each shape and precision, while time lasts (the most wanted
    shapes first); an out-of-memory or other failure of one shape is recorded and the next one runs."""
    import torch

    from charnn.runtime import native_bf16_cpu

    device = torch.device(mode.device)
    workdir = Path(tempfile.mkdtemp(prefix="charnn-gpu-check-speed-"))
    result = {"device": str(device), "steps": mode.speed_steps, "rows": []}
    slowest = 0.0
    # bf16 rows where the device has it: every CUDA card measured (an old one records its error), a CPU only with
    # native bf16 (elsewhere charnn refuses --precision bf16 with exit 6)
    precisions = ("bf16", "fp32") if device.type != "cpu" or native_bf16_cpu() else ("fp32",)
    for label, layers, hidden, batch, seq, embed in mode.speed_shapes:
        for precision in precisions:
            row = {
                "shape": label,
                "layers": layers,
                "hidden": hidden,
                "batch": batch,
                "seq": seq,
                "embed": embed,
                "precision": precision,
            }
            result["rows"].append(row)
            if time.monotonic() + 1.3 * slowest > deadline - 5:
                row["skipped"] = "out of time"
                continue
            t0 = time.monotonic()
            try:
                row.update(_measure(layers, hidden, batch, seq, embed, precision, mode, device, workdir))
            except Exception as err:  # noqa: BLE001 - out of memory on a big shape must not end the part
                row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err) else ''}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            slowest = max(slowest, time.monotonic() - t0)
            _save(out, result)
    shutil.rmtree(workdir, ignore_errors=True)
    _save(out, result)


def _measure(layers, hidden, batch, seq, embed, precision, mode, device, workdir: Path) -> dict:
    from baseline import bare_loop
    from gpu_grid import charnn_loop, peak_mb, reset_peak

    steps = mode.speed_steps
    reset_peak(device)
    bare = bare_loop(
        layers,
        hidden,
        embed,
        batch,
        seq,
        steps=steps,
        warmup=3,
        device=device,
        bf16=precision == "bf16",
        optimizer="adamw",
    )
    bare_mem = peak_mb(device)
    reset_peak(device)
    ours = charnn_loop(
        layers,
        hidden,
        batch,
        seq,
        embed=embed,
        device=device,
        steps=steps,
        workdir=workdir,
        precision=precision,
        corpus_chars=mode.corpus_chars,
    )
    ours_mem = peak_mb(device)
    for run in workdir.glob("run-*"):  # the checkpoints of a large shape are hundreds of MB
        shutil.rmtree(run, ignore_errors=True)
    return {
        "charnn_chars_per_s": round(ours),
        "bare_chars_per_s": round(bare),
        "ratio": round(ours / bare, 3),
        "charnn_ms_per_iter": round(1000 * batch * seq / ours, 2),
        "bare_ms_per_iter": round(1000 * batch * seq / bare, 2),
        "charnn_peak_mb": ours_mem and round(ours_mem),
        "bare_peak_mb": bare_mem and round(bare_mem),
    }


# --- the table -----------------------------------------------------------------------------------------------


def _summary(name: str, result: dict) -> str:
    if name == "machine":
        return (
            f"{result.get('name')} (cc {result.get('capability', '-')}, auto={result.get('auto_precision', '-')})"
            f", torch {result.get('torch')}, CUDA {result.get('cuda')}, cuDNN {result.get('cudnn')}"
        )
    if name == "tests":
        failed = "; ".join(result.get("failures", [])[:2])
        return (
            f"{result.get('passed', 0)} passed, {result.get('failed', 0)} failed, {result.get('skipped', 0)} "
            f"skipped" + (f": {failed}" if failed else "")
        )
    if name == "sampling":
        rows = [r for r in result.get("rows", []) if "graph_chars_per_s" in r]
        cells = [
            f"{r['model']} x{r['streams']}: graph {r['graph_chars_per_s']:,} / eager {r['eager_chars_per_s']:,}"
            for r in rows
        ]
        return "; ".join(cells) + f"; same text: {result.get('all_same_text')}"
    if name == "ddp":
        val, rate = result.get("val_loss"), result.get("chars_per_s")
        rate = f"{round(rate):,}" if rate else "-"
        return (
            f"{result.get('steps')} steps, val {val and round(val, 4)}, {rate} chars/s, "
            f"{result.get('nccl') or 'no NCCL line'}"
        )
    if name == "quality":
        goal = {True: "goal <= 1.40 met", False: "goal <= 1.40 NOT met", None: "no goal in this mode"}
        return (
            f"val {result.get('val_nats_per_char')} nats/char at step {result.get('best_step')} "
            f"({goal[result.get('goal_met')]}), {result.get('time_budget')} s budget, {result.get('steps')} steps"
        )
    if name == "speed":
        done = [r for r in result.get("rows", []) if "ratio" in r]
        return f"{len(done)} of {len(result.get('rows', []))} measured (table below)"
    return ""


def print_table(report: dict) -> None:
    """The short table, printed last: one line per part, then the speed rows."""
    print(f"\ngpu_check ({report['mode']}), {report.get('elapsed_s')} s of {report['budget_s']:g}")
    print(f"{'part':<10}{'ok':<6}{'time':>7}  result")
    for name, entry in report["parts"].items():
        text = _summary(name, entry["result"]) if entry["result"] else ""
        if entry["error"]:
            text = f"{entry['error']}" + (f" | {text}" if text else "")
        status = "ok" if entry["ok"] else "skip" if entry.get("skipped") else "FAIL"
        print(f"{name:<10}{status:<6}{entry['seconds']:>6.0f}s  {text[:150]}")
    rows = report["parts"].get("speed", {}).get("result", {}).get("rows", [])
    if rows:
        print(
            f"\n{'shape':<20}{'LSTM':>9}{'B x T':>10}{'prec':>6}{'charnn c/s':>12}{'bare c/s':>12}{'ratio':>7}"
            f"{'peak MB':>9}"
        )
    for r in rows:
        lstm, shape = f"{r['layers']}x{r['hidden']}", f"{r['batch']}x{r['seq']}"
        head = f"{r['shape']:<20}{lstm:>9}{shape:>10}{r['precision']:>6}"
        if "ratio" in r:
            print(
                f"{head}{r['charnn_chars_per_s']:>12,}{r['bare_chars_per_s']:>12,}{r['ratio']:>7}"
                f"{str(r['charnn_peak_mb'] or '-'):>9}"
            )
        else:
            print(f"{head}  {r.get('skipped') or r.get('error', '')}"[:150])
