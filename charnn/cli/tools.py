"""The commands that work on a trained run beyond sampling and scoring: `report` (the HTML training report),
`export` (the playground page or an ONNX model) and `serve` (the HTTP server); and `models`, the list of the
models shipped with charnn. Each body is one library call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charnn.cli.app import DEVICE, RunPath, Which, WhichOption, app
from charnn.cli.options import choice, with_default, with_options
from charnn.cli.run import Command, run_command, say


# Options: all written in this signature (none come from a config's fields).
@app.command("report", cls=Command)
def report_cmd(
    run: RunPath,
    *,
    text: Annotated[
        Optional[Path],
        typer.Option(metavar="FILE", help=with_default("Text file to analyse.", "the run's validation split")),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", metavar="FILE", help=with_default("HTML file to write.", "RUN/report.html")),
    ] = None,
    chars: Annotated[
        int,
        typer.Option(
            min=2,
            max=1_000_000,
            metavar="INT",
            show_default=False,
            help=with_default("Characters of the passage to analyse.", "5000"),
        ),
    ] = 5000,
    which: WhichOption = Which.best,
) -> None:
    """Write one self-contained HTML page: curves, samples, surprise heatmap, neuron explorer, gates.

    Examples:
    charnn report checkpoints/shakespeare
    charnn report checkpoints/shakespeare --text heldout.txt --chars 2000
    charnn report checkpoints/shakespeare --which latest -o latest.html
    """

    def body():
        import time

        from charnn.report import write_report

        start = time.perf_counter()
        path = write_report(run, output, text=text, max_chars=chars, which=which.value)
        say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f}s")

    run_command(body)


# Options: the parameters below, plus --device (TrainConfig.device in charnn/config.py, via with_options).
@app.command("serve", cls=Command)
@with_options(*DEVICE)
def serve_cmd(
    run: RunPath,
    *,
    which: WhichOption = Which.best,
    host: Annotated[
        str, typer.Option(metavar="ADDR", help="Address to listen on; 0.0.0.0 lets the whole network in.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="INT", help="Port to listen on.")] = 8000,
    max_batch: Annotated[
        int,
        typer.Option(min=1, max=4096, metavar="INT", help="Streams generated together; more requests wait in a queue."),
    ] = 64,
    max_length: Annotated[
        int, typer.Option(min=1, metavar="INT", help="Most characters a request may generate, prime or score.")
    ] = 10_000,
    **options: Any,
) -> None:
    """Serve a model over HTTP: generate (streamed), score, next characters; a playground at /.

    Needs FastAPI and uvicorn (the serve extra). API reference at /docs; more in docs/serve.md.

    Examples:
    charnn serve checkpoints/shakespeare
    charnn serve checkpoints/shakespeare --port 8080 --max-batch 128
    charnn serve checkpoints/shakespeare --host 0.0.0.0 --max-length 2000
    """

    def body():
        from charnn.runtime import pick_device
        from charnn.serve import require_server, serve
        from charnn.store.rundir import load_run

        require_server()  # before loading the model: the missing extra is the first thing to hear about
        loaded = load_run(run, which=which.value, device=pick_device(options["device"]))
        serve(loaded, host=host, port=port, max_batch=max_batch, max_length=max_length)

    run_command(body)


ExportFormat = choice("ExportFormat", ("html", "onnx"))
ExportPrecision = choice("ExportPrecision", ("fp32", "fp16"))


# Options: all written in this signature (none come from a config's fields).
@app.command("export", cls=Command)
def export_cmd(
    run: RunPath,
    *,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="FILE", show_default=False, help="File to write (model.html or model.onnx)."
        ),
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            metavar="FORMAT",
            show_default=False,
            help=with_default("html (an offline playground page) or onnx (a step model).", "html"),
        ),
    ] = ExportFormat.html,
    which: WhichOption = Which.best,
    precision: Annotated[
        ExportPrecision,
        typer.Option(
            metavar="PRECISION",
            show_default=False,
            help=with_default("Weights in the page: fp32, or fp16 for half the size.", "fp32"),
        ),
    ] = ExportPrecision.fp32,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output file if it exists.")] = False,
) -> None:
    """Take a model out of Python: a self-contained HTML playground page, or an ONNX step model.

    Examples:
    charnn export checkpoints/shakespeare -o shakespeare.html
    charnn export checkpoints/shakespeare -o small.html --precision fp16 --force
    charnn export checkpoints/shakespeare --format onnx -o shakespeare.onnx
    """

    def body():
        from charnn.errors import ConfigError
        from charnn.export import export_html, export_onnx
        from charnn.store.rundir import load_run

        if fmt is ExportFormat.onnx and precision is not ExportPrecision.fp32:
            raise ConfigError("--precision applies to --format html; ONNX weights are fp32")
        loaded = load_run(run, which=which.value, device="cpu")
        if fmt is ExportFormat.onnx:
            path = export_onnx(loaded, output, force=force)
        else:
            path = export_html(loaded, output, precision=precision.value, force=force)
        say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) from {loaded.path.name}")

    run_command(body)


# Options: all written in this signature (none come from a config's fields).
@app.command("models", cls=Command)
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per model on stdout.")] = False,
) -> None:
    """List the models shipped with charnn: any command that takes RUN accepts their names.

    Examples:
    charnn models
    charnn sample shakespeare --prime "ROMEO:"
    charnn train mytext.txt --init-from shakespeare
    """

    def body():
        import json

        from charnn.cli.output import echo
        from charnn.store.bundled import bundled_models
        from charnn.store.checkpoint import read_meta

        for m in bundled_models():
            cfg = read_meta(m.path).model_cfg
            kind = f"{cfg.model.upper()} {cfg.layers}x{cfg.hidden}"
            if as_json:
                echo(json.dumps({**m.as_dict(), "model": kind}))
                continue
            echo(
                f"{m.name}  {kind}, {m.bytes / 1e6:.1f} MB  trained on {m.trained_on} ({m.corpus_chars:,} characters, "
                f"{m.steps:,} steps)  validation {m.val_loss:.4f} nats/char"
            )

    run_command(body)
