"""The `charnn train` command: its options, the configs or plan request they make, one `charnn.train` call inside
the distributed set-up, the progress display and the stop flag, and the closing summary; with --plan, the plan
alone (--json: as one JSON object). Not sample or eval (charnn.cli.commands). Imports nothing heavy until it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charnn.cli.app import Backend, PresetName, app
from charnn.cli.options import (
    TRAIN_CONFIGS,
    config_options,
    path_value,
    train_configs,
    with_default,
    with_options,
)
from charnn.cli.run import Command, StopFlag, run_command, say
from charnn.errors import CharnnError


def _given_path(value: str) -> Path:
    """A path option's value; an empty one would mean the current directory (`--out ""` trained into it)."""
    if not value.strip():
        raise typer.BadParameter("is empty; give a directory")
    return path_value(value)


# long: a Typer command declares its options as parameters, one Annotated block each
# Options: the parameters below, plus one per field of ModelConfig, TrainConfig and DataConfig that has a `panel`
# (help, bounds and default on the field in charnn/config.py), added to the signature by with_options and
# config_options (charnn/cli/options.py) and passed in `options`.
@app.command("train", cls=Command)
@with_options(*config_options(*TRAIN_CONFIGS, planned=True))
def train_cmd(
    corpus: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="CORPUS",
            show_default=False,
            parser=path_value,
            help="UTF-8 text file to train on (optional with --resume).",
        ),
    ] = None,
    *,
    preset: Annotated[
        Optional[PresetName],
        typer.Option(
            metavar="PRESET",
            rich_help_panel="Run",
            show_default=False,
            help=with_default("tiny, small, medium or large instead of the plan.", "the plan"),
        ),
    ] = None,
    show_plan: Annotated[
        bool, typer.Option("--plan", rich_help_panel="Run", help="Print the training plan and exit.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", rich_help_panel="Run", help="With --plan: the plan as one JSON object.")
    ] = False,
    out: Annotated[
        Optional[Path],
        typer.Option(
            metavar="DIR",
            rich_help_panel="Run",
            parser=_given_path,
            help=with_default("Run directory for checkpoints and logs.", "checkpoints/CORPUS-TIME"),
        ),
    ] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            metavar="RUN", rich_help_panel="Run", parser=_given_path, help="Continue this run exactly where it stopped."
        ),
    ] = None,
    init_from: Annotated[
        Optional[Path],
        typer.Option(
            metavar="RUN",
            rich_help_panel="Run",
            parser=_given_path,
            help="Start from this run's best model, or a bundled one (fine-tune).",
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", rich_help_panel="Evaluation & output", help="No progress bar or samples on stderr."
        ),
    ] = False,
    report_html: Annotated[
        bool,
        typer.Option(
            "--report",
            rich_help_panel="Evaluation & output",
            help="Write RUN/report.html at each evaluation (see charnn report).",
        ),
    ] = False,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option(
            metavar="DIR",
            rich_help_panel="Data",
            parser=_given_path,
            help=with_default("Where the encoded corpus is cached, memory-mapped.", "checkpoints/.cache"),
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", rich_help_panel="Data", help="Encode the corpus in memory; write no cache.")
    ] = False,
    backend: Annotated[
        Backend,
        typer.Option(
            metavar="BACKEND",
            rich_help_panel="Hardware",
            show_default=False,
            help=with_default("torch.distributed backend under torchrun: auto, nccl or gloo.", "auto"),
        ),
    ] = Backend.auto,
    **options: Any,
) -> None:
    """Train a model on a text file, fitted to it by a plan that any flag overrides.

    Examples:
    charnn train poems.txt --plan
    charnn train data/tinyshakespeare.txt --out checkpoints/shakespeare
    charnn train letters.txt --init-from shakespeare --time-budget 60

    Under `torchrun --nproc_per_node=N` the --batch-size streams are split across the N processes.
    """
    run_command(
        lambda: _train(
            corpus,
            options,
            preset=preset.value if preset else None,
            out=out,
            resume=resume,
            quiet=quiet,
            report=report_html,
            cache_dir=cache_dir,
            no_cache=no_cache,
            backend=backend.value,
            show_plan=show_plan,
            as_json=as_json,
            init_from=init_from,
        )
    )


# long: the option checks, then one train call inside the distributed set-up, the display and the stop flag
def _train(
    corpus: Path | None,
    options: dict[str, Any],
    *,
    preset: str | None,
    out: Path | None,
    resume: Path | None,
    quiet: bool,
    report: bool,
    cache_dir: Path | None,
    no_cache: bool,
    backend: str,
    show_plan: bool,
    as_json: bool,
    init_from: Path | None,
) -> None:
    """The configs (or the plan request), then one `charnn.training.train` call inside the distributed set-up, the
    display and the stop flag; with --plan, the plan alone."""
    from charnn.runtime import CUBLAS_WORKSPACE

    if options.get("deterministic"):  # cuBLAS reads it once, when it starts: before anything touches the GPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    from charnn.cli.progress import TrainDisplay
    from charnn.distributed import setup_distributed, teardown_distributed
    from charnn.runtime import pick_device
    from charnn.store.corpus_cache import DEFAULT_CACHE_DIR
    from charnn.training.train import plan, train

    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise CharnnError(
            f"--out {out} with --resume {resume}: a resumed run continues in its own directory; "
            f"drop --out (or start a new run with --out alone)"
        )
    if as_json and not show_plan:
        raise CharnnError("--json prints the plan: give --plan too")
    setup, source, out_dir = train_configs(corpus, options, preset=preset, resume=resume, out=out)
    if show_plan:
        if setup.request is None:
            raise CharnnError("--plan shows the plan of a new run; a resumed run keeps its configs")
        chosen = plan(source, request=setup.request, data_cfg=setup.data_cfg, init_from=init_from, out_dir=out_dir)
        _show_plan(chosen, as_json=as_json)
        return
    info = setup_distributed(backend, device_type=pick_device(setup.device).type)
    try:
        with TrainDisplay(quiet=quiet or not info.is_main) as display, StopFlag() as stop:
            on_progress = display
            if report and info.is_main:
                from charnn.report import ReportRefresher

                on_progress = ReportRefresher(display)
            result = train(
                source,
                model_cfg=setup.model_cfg,
                train_cfg=setup.train_cfg,
                data_cfg=setup.data_cfg,
                request=setup.request,
                out_dir=out_dir,
                resume=resume is not None,
                init_from=init_from,
                on_progress=on_progress,
                should_stop=stop,
                cache_dir=None if no_cache else cache_dir or DEFAULT_CACHE_DIR,
                on_encode=display.encode,
            )
    finally:
        teardown_distributed()
    if info.is_main:
        _say_done(result, report=report)


def _show_plan(chosen, *, as_json: bool) -> None:
    """The plan's lines on stdout, or the plan as one JSON object (RFC 8259: no NaN) on one line."""
    from charnn.cli.output import echo

    if as_json:
        echo(json.dumps(chosen.to_json(), allow_nan=False))
    else:
        echo("\n".join(chosen.lines))


def _say_done(result, *, report: bool) -> None:
    if result.best_val_loss is not None:
        best = f"best val {result.best_val_loss:.4f} nats/char"
        best += f" at step {result.best_step}" if result.best_step is not None else ""
    else:
        best = "no validation loss (no validation split, or none finite)"
    say(
        f"done: {result.steps} steps in {result.elapsed:.0f}s ({result.stop_reason}); {best}; validation and "
        f"checkpoints took {result.eval_share:.0%} of the time; run {result.run_dir}"
    )
    say(f'next: charnn sample {result.run_dir} --prime "..."   |   charnn eval {result.run_dir}')
    if report:
        say(f"report: {result.run_dir / 'report.html'}")
