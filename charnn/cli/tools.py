"""The commands that work on a trained run beyond sampling and scoring: `report` (the HTML training report),
`export` (the playground page or an ONNX model) and `serve` (the HTTP server); and `models`, the list of the
models shipped with charnn. Each body is one library call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charnn.cli.app import DEVICE, RunPath, Which, WhichOption, app
from charnn.cli.options import choice, path_value, with_default, with_options
from charnn.cli.run import Command, run_command, say
from charnn.serve import GRACE_S


# Options: all written in this signature (none come from a config's fields).
@app.command("report", cls=Command)
def report_cmd(
    run: RunPath,
    *,
    text: Annotated[
        Optional[Path],
        typer.Option(
            metavar="FILE", parser=path_value, help=with_default("Text file to analyse.", "the run's validation split")
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            parser=path_value,
            help=with_default("HTML file to write.", "RUN/report.html"),
        ),
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


EngineKind = choice("EngineKind", ("thread", "process"))


# long: a Typer command declares its options as parameters, one Annotated block each
# Options: the parameters below, plus --device (TrainConfig.device in charnn/config.py, via with_options).
@app.command("serve", cls=Command)
@with_options(*DEVICE)
def serve_cmd(
    runs: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN",
            show_default=False,
            help="Run directories or checkpoint files, each as RUN or NAME=RUN (named after its directory).",
        ),
    ],
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
        int,
        typer.Option(min=1, metavar="INT", help="Most characters (bytes with --bytes) a request may generate or send."),
    ] = 10_000,
    grace: Annotated[
        float,
        typer.Option(min=0, max=3600, metavar="SECONDS", help="On SIGTERM or Ctrl-C, time to let generations finish."),
    ] = GRACE_S,
    engine: Annotated[
        EngineKind,
        typer.Option(
            metavar="KIND",
            show_default=False,
            help=with_default("Where the model steps: thread (in the server) or process (its own).", "thread"),
        ),
    ] = EngineKind.thread,
    **options: Any,
) -> None:
    """Serve models over HTTP: generate (streamed), score, next characters; OpenAI-compatible; a playground at /.

    Needs the serve extra. API reference at /docs, Prometheus metrics at /metrics; more in docs/serve.md.

    Examples:
    charnn serve checkpoints/shakespeare
    charnn serve checkpoints/shakespeare --port 8080 --max-batch 128
    charnn serve lyrics=checkpoints/lyrics poems=checkpoints/poems
    charnn serve checkpoints/shakespeare --host 0.0.0.0 --max-length 2000
    """

    def body():
        from charnn.runtime import pick_device
        from charnn.serve import require_server, serve

        require_server()  # before loading the models: the missing extra is the first thing to hear about
        from charnn.serve.models import served_runs
        from charnn.store.rundir import load_run

        device = pick_device(options["device"])
        loaded = {name: load_run(run, which=which.value, device=device) for name, run in served_runs(runs)}
        process = engine.value == "process"
        serve(loaded, host=host, port=port, max_batch=max_batch, max_length=max_length, grace=grace, process=process)

    run_command(body)


ExportFormat = choice("ExportFormat", ("html", "onnx"))
ExportPrecision = choice("ExportPrecision", ("fp32", "fp16"))


# long: a Typer command declares its options as parameters, one Annotated block each
# Options: all written in this signature (none come from a config's fields).
@app.command("export", cls=Command)
def export_cmd(
    run: RunPath,
    *,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            show_default=False,
            parser=path_value,
            help="File to write (model.html or model.onnx).",
        ),
    ],
    given: Annotated[
        Optional[ExportFormat],
        typer.Option(
            "--format",
            metavar="FORMAT",
            show_default=False,
            help=with_default("html (an offline playground page) or onnx (a step model).", "from -o's suffix"),
        ),
    ] = None,
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
    with_novelty: Annotated[
        bool,
        typer.Option(
            "--with-novelty", help="The page marks what samples copy from the training text (corpora up to ~1 MB)."
        ),
    ] = False,
) -> None:
    """Take a model out of Python: a self-contained HTML playground page, or an ONNX step model.

    The format follows the output's suffix (.onnx: ONNX, anything else: the page) unless --format says it.

    Examples:
    charnn export checkpoints/shakespeare -o shakespeare.html
    charnn export checkpoints/shakespeare -o small.html --precision fp16 --force
    charnn export checkpoints/shakespeare -o shakespeare.onnx
    """

    def body():
        from charnn.errors import ConfigError
        from charnn.export import export_html, export_onnx
        from charnn.store.rundir import load_run

        fmt = export_format(output, given)
        if fmt is ExportFormat.onnx and precision is not ExportPrecision.fp32:
            raise ConfigError("--precision applies to --format html; ONNX weights are fp32")
        if fmt is ExportFormat.onnx and with_novelty:
            raise ConfigError("--with-novelty applies to --format html")
        loaded = load_run(run, which=which.value, device="cpu")
        if fmt is ExportFormat.onnx:
            path = export_onnx(loaded, output, force=force)
        else:
            path = export_html(loaded, output, precision=precision.value, force=force, with_novelty=with_novelty)
        say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) from {loaded.path.name}")

    run_command(body)


def export_format(output: Path, given: ExportFormat | None = None) -> ExportFormat:
    """The export's format: `given` (--format), else the output's suffix (.onnx: ONNX, anything else: the page).
    A --format that contradicts the suffix (.html or .onnx) is refused rather than writing one under the
    other's name."""
    from charnn.errors import ConfigError

    by_suffix = {".onnx": ExportFormat.onnx, ".html": ExportFormat.html, ".htm": ExportFormat.html}.get(
        output.suffix.lower()
    )
    if given is None:
        return by_suffix or ExportFormat.html
    if by_suffix is not None and by_suffix is not given:
        raise ConfigError(
            f"--format {given.value} writes {'an ONNX model' if given is ExportFormat.onnx else 'an HTML page'}, "
            f"but {output.name} names {'an ONNX file' if by_suffix is ExportFormat.onnx else 'a page'}: "
            f"drop --format or rename the output"
        )
    return given


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
