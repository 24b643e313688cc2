"""The `charnn` command line: parse options, call one library function, render the result, map errors.

Errors the user can cause print one `error: ...` line on stderr and exit non-zero (codes in the README);
anything else is a bug and keeps its traceback. stdout carries only the product (samples, eval figures).
The options of `train` and `sample` are built from the config fields (charnn.cli.options). Nothing heavy is
imported until a command runs, so `--help` is fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charnn.cli.app import DEVICE, Backend, PresetName, RunPath, Which, WhichOption, app
from charnn.cli.options import (
    TRAIN_CONFIGS,
    config_options,
    plain,
    train_configs,
    with_default,
    with_options,
)
from charnn.cli.run import Command, StopFlag, run_command, say
from charnn.config import SampleConfig
from charnn.errors import CharnnError

_StopFlag = StopFlag  # the name tests and older callers know


def _given_path(value: str) -> Path:
    """A path option's value; an empty one would mean the current directory (`--out ""` trained into it)."""
    if not value.strip():
        raise typer.BadParameter("is empty; give a directory")
    return Path(value)


@app.command("train", cls=Command)
@with_options(*config_options(*TRAIN_CONFIGS, planned=True))
def train_cmd(
    corpus: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="CORPUS", show_default=False, help="UTF-8 text file to train on (optional with --resume)."
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
            help="Start from this run's best model (fine-tune).",
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
    charnn train notes.txt --time-budget 60 --model gru

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
            init_from=init_from,
        )
    )


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
    setup, source, out_dir = train_configs(corpus, options, preset=preset, resume=resume, out=out)
    if show_plan:
        if setup.request is None:
            raise CharnnError("--plan shows the plan of a new run; a resumed run keeps its configs")
        from charnn.cli.output import echo

        echo("\n".join(plan(source, request=setup.request, data_cfg=setup.data_cfg, init_from=init_from).lines))
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


def _say_done(result, *, report: bool) -> None:
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    at = f" at step {result.best_step}" if result.best_step is not None else ""
    say(
        f"done: {result.steps} steps in {result.elapsed:.0f}s ({result.stop_reason}); best val {best} nats/char"
        f"{at}; validation and checkpoints took {result.eval_share:.0%} of the time; run {result.run_dir}"
    )
    say(f'next: charnn sample {result.run_dir} --prime "..."   |   charnn eval {result.run_dir}')
    if report:
        say(f"report: {result.run_dir / 'report.html'}")


@app.command("sample", cls=Command)
@with_options(*config_options(SampleConfig), *DEVICE)
def sample_cmd(
    run: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="RUN",
            show_default=False,
            help=with_default("Run directory or checkpoint file.", "the newest run under checkpoints/"),
        ),
    ] = None,
    *,
    which: WhichOption = Which.best,
    prime_file: Annotated[
        Optional[Path],
        typer.Option(
            metavar="FILE",
            rich_help_panel="Sampling",
            show_default=False,
            help="Text file to warm the state on, as --prime (for long primes).",
        ),
    ] = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", rich_help_panel="Output", help="Write control characters as they are, even to a terminal."
        ),
    ] = False,
    **options: Any,
) -> None:
    """Generate text from a trained model, streamed to stdout as it is produced.

    Examples:
    charnn sample checkpoints/shakespeare --prime "ROMEO:" --length 500
    charnn sample checkpoints/shakespeare -t 0.5 --top-k 10 --seed 3
    charnn sample --num-samples 4 --length 200 > samples.txt
    """

    def body():
        # what the first character needs, and no more (beam search is imported for --beam alone)
        from charnn.cli.output import SampleWriter, stdout_is_terminal, write_beams, write_generation
        from charnn.runtime import pick_device
        from charnn.sampling.generate import generate, read_prime
        from charnn.sampling.stepper import one_thread
        from charnn.store.rundir import load_run

        values = plain(options)
        device = values.pop("device")
        cfg = SampleConfig(**{**values, "prime": values["prime"] or None})
        if prime_file is not None and cfg.prime is not None:
            raise CharnnError("--prime and --prime-file: give one of them")
        with one_thread():  # checking a model file is a few tensor ops: threads would only wait for each other
            loaded = load_run(run, which=which.value, device=pick_device(device))
        if prime_file is not None:
            cfg = dataclasses.replace(cfg, prime=read_prime(prime_file, loaded.vocab, loaded.data_cfg))
        out = SampleWriter(loaded.vocab, escape=not raw and stdout_is_terminal())
        if cfg.beam is not None:  # the log-probabilities go to stderr: stdout is the text alone
            from charnn.sampling.beam import beam_search

            beams = beam_search(loaded.model, loaded.vocab, cfg.prime, cfg.beam, cfg.length, precision=cfg.precision)
            write_beams(beams[: cfg.num_samples], out, say=say)
            return
        write_generation(generate(loaded.model, loaded.vocab, cfg), out, num_samples=cfg.num_samples, length=cfg.length)

    run_command(body)


@app.command("eval", cls=Command)
@with_options(*DEVICE)
def eval_cmd(
    run: RunPath,
    files: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="FILE",
            show_default=False,
            help=with_default("Text files to score.", "the run's own validation split"),
        ),
    ] = None,
    *,
    which: WhichOption = Which.best,
    skip_unknown: Annotated[
        bool,
        typer.Option(
            "--skip-unknown", help="Drop characters outside the vocabulary (counted and reported) instead of failing."
        ),
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="INT",
            show_default=False,
            help=with_default("Segments scored side by side (speed only, not the result).", "64"),
        ),
    ] = 64,
    segment: Annotated[
        Optional[int],
        typer.Option(
            min=2, metavar="INT", help=with_default("Characters per independently scored segment.", "the run's")
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per file on stdout.")] = False,
    **options: Any,
) -> None:
    """Score text with a model: characters, nats/char, bits/char and perplexity.

    Examples:
    charnn eval checkpoints/shakespeare
    charnn eval checkpoints/shakespeare heldout.txt --skip-unknown
    charnn eval checkpoints/shakespeare a.txt b.txt --json --which latest
    """

    def body():
        from charnn.evaluate import evaluate_file, evaluate_validation
        from charnn.runtime import pick_device
        from charnn.store.rundir import load_run

        loaded = load_run(run, which=which.value, device=pick_device(options["device"]))
        seg = segment or loaded.eval_segment
        for target in files or [None]:
            if target is None:
                res = evaluate_validation(loaded, segment=seg, batch_size=batch_size)
                name = "validation split"
            else:
                res = evaluate_file(loaded, target, skip_unknown=skip_unknown, segment=seg, batch_size=batch_size)
                name = str(target)
            _show_eval(name, res, loaded, as_json=as_json)

    run_command(body)


def _show_eval(name: str, res, loaded, *, as_json: bool) -> None:
    from charnn.cli.output import echo

    row = {"file": name, "checkpoint": str(loaded.path), "step": loaded.step, **res.as_dict()}
    if as_json:
        echo(json.dumps(row))
    else:
        unk = f"  ({row['unknown_chars']} unknown skipped)" if row["unknown_chars"] else ""
        echo(
            f"{name}: {res.chars} chars  {res.loss:.4f} nats/char  {res.bpc:.4f} bits/char  "
            f"perplexity {res.perplexity:.3f}{unk}"
        )
    if res.unknown:
        shown = ", ".join(loaded.vocab.symbol_str(s) for s in list(res.unknown)[:10])
        say(f"warning: {name}: skipped {sum(res.unknown.values())} unknown character(s): {shown}")


# report, export and serve register after train, sample and eval: `charnn --help` lists them in that order
from charnn.cli import tools as cli_tools  # noqa: E402, F401


def main() -> None:
    app()
