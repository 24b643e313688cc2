"""The `charnn` command line: parse options, call one library function, render the result, map errors. Here
`sample` and `eval`, and `main`; `train` is charnn.cli.train, report, export and serve charnn.cli.tools.

Errors the user can cause print one `error: ...` line on stderr and exit non-zero (codes in the README);
anything else is a bug and keeps its traceback. stdout carries only the product (samples, eval figures).
The options of `train` and `sample` are built from the config fields (charnn.cli.options). Nothing heavy is
imported until a command runs, so `--help` is fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charnn.cli import train as cli_train  # noqa: F401  (train registers first: `charnn --help` lists it first)
from charnn.cli.app import DEVICE, RunPath, Which, WhichOption, app
from charnn.cli.options import config_options, path_value, plain, with_default, with_options
from charnn.cli.run import Command, StopFlag, run_command, say, start_up
from charnn.config import DynamicConfig, SampleConfig
from charnn.errors import CharnnError, CheckpointError, ConfigError
from charnn.novelty import DEFAULT_COPY_SPAN

_StopFlag = StopFlag  # the name tests and older callers know


# long: a Typer command declares its options as parameters, one Annotated block each
# Options: the parameters below, plus one per SampleConfig field with a `panel` and --device (charnn/config.py),
# added to the signature by with_options and config_options (charnn/cli/options.py).
@app.command("sample", cls=Command)
@with_options(*config_options(SampleConfig), *DEVICE)
def sample_cmd(
    run: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="RUN",
            show_default=False,
            parser=path_value,
            help=with_default("Run directory, checkpoint file or bundled model.", "the newest run under checkpoints/"),
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
            parser=path_value,
            help="Text file to warm the state on, as --prime (for long primes).",
        ),
    ] = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", rich_help_panel="Output", help="Write control characters as they are, even to a terminal."
        ),
    ] = False,
    novelty: Annotated[
        Optional[bool],
        typer.Option(
            "--novelty/--no-novelty",
            rich_help_panel="Output",
            show_default=False,
            help=with_default("After the samples, how much each copies from the training text.", "on a terminal"),
        ),
    ] = None,
    copy_span: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", rich_help_panel="Output", help="Novelty counts copied spans of N characters or more."
        ),
    ] = DEFAULT_COPY_SPAN,
    **options: Any,
) -> None:
    """Generate text from a trained model, streamed to stdout as it is produced.

    Examples:
    charnn sample shakespeare --prime "ROMEO:" --length 500
    charnn sample checkpoints/shakespeare -t 0.5 --top-k 10 --seed 3
    charnn sample --num-samples 4 --length 200 > samples.txt
    """

    def body():
        values = plain(options)
        device = values.pop("device")
        cfg = SampleConfig(**{**values, "prime": values["prime"] or None})
        if prime_file is not None and cfg.prime is not None:
            raise CharnnError("--prime and --prime-file: give one of them")
        with start_up():
            # what the first character needs, and no more (beam search is imported for --beam alone)
            from charnn.cli.output import (
                SampleWriter,
                say_novelty,
                stderr_is_terminal,
                stdout_is_terminal,
                write_beams,
                write_generation,
            )
            from charnn.runtime import pick_device
            from charnn.sampling.generate import generate, read_prime
            from charnn.sampling.stepper import one_thread
            from charnn.store.rundir import load_run

            with one_thread():  # checking a model file is a few tensor ops: threads would only wait for each other
                loaded = load_run(run, which=which.value, device=pick_device(device))
        if prime_file is not None:
            cfg = dataclasses.replace(cfg, prime=read_prime(prime_file, loaded.vocab, loaded.data_cfg))
        out = SampleWriter(loaded.vocab, escape=not raw and stdout_is_terminal())
        if cfg.beam is not None:  # the log-probabilities go to stderr: stdout is the text alone
            from charnn.sampling.beam import beam_search

            beams = beam_search(loaded.model, loaded.vocab, cfg.prime, cfg.beam, cfg.length, precision=cfg.precision)
            write_beams(beams[: cfg.num_samples], out, say=say)
            drawn = [list(beam.ids) for beam in beams[: cfg.num_samples]]
        else:
            gen = generate(loaded.model, loaded.vocab, cfg)
            drawn = write_generation(gen, out, num_samples=cfg.num_samples, length=cfg.length)
        if novelty or (novelty is None and stderr_is_terminal()):
            say_novelty(loaded, drawn, copy_span=copy_span)

    run_command(body)


# long: a Typer command declares its options as parameters, one Annotated block each
# Options: the parameters below, plus one per DynamicConfig field and --device (charnn/config.py), added to the
# signature by with_options and config_options (charnn/cli/options.py).
@app.command("eval", cls=Command)
@with_options(*config_options(DynamicConfig), *DEVICE)
def eval_cmd(
    run: RunPath,
    files: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="FILE",
            show_default=False,
            parser=path_value,
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
    charnn eval checkpoints/shakespeare a.txt b.txt --json --dynamic
    """

    def body():
        from charnn.dynamic import dynamic_file, dynamic_validation
        from charnn.evaluate import evaluate_file, evaluate_validation
        from charnn.runtime import pick_device
        from charnn.store.rundir import load_run

        values = plain(options)
        loaded = load_run(run, which=which.value, device=pick_device(values.pop("device")))
        dynamic = DynamicConfig(**values)
        seg = segment or loaded.eval_segment
        for target in files or [None]:
            if target is None:
                res = evaluate_validation(loaded, segment=seg, batch_size=batch_size)
                name = "validation split"
            else:
                res = evaluate_file(loaded, target, skip_unknown=skip_unknown, segment=seg, batch_size=batch_size)
                name = str(target)
            _show_eval(name, res, loaded, as_json=as_json)
            if dynamic.dynamic:
                if target is None:
                    adapted = dynamic_validation(loaded, dynamic)
                else:
                    adapted = dynamic_file(loaded, target, dynamic, skip_unknown=skip_unknown)[0]
                _show_dynamic(name, adapted, loaded, as_json=as_json)

    run_command(body)


def _show_dynamic(name: str, res, loaded, *, as_json: bool) -> None:
    """Dynamic evaluation's own line (or JSON object): never in the static figures' columns."""
    from charnn.cli.output import echo

    if not math.isfinite(res.loss):  # steps too large for this model: the weights left the range of numbers
        raise ConfigError(f"{name}: dynamic evaluation diverged ({res.loss} nats/char); use a lower --dynamic-lr")
    row = {"file": name, "checkpoint": str(loaded.path), "step": loaded.step, "mode": "dynamic", **res.as_dict()}
    if as_json:
        echo(json.dumps(row, allow_nan=False))
    else:
        echo(
            f"{name} (dynamic evaluation): {res.chars} chars  {res.loss:.4f} nats/char  {res.bpc:.4f} bits/char  "
            f"perplexity {res.perplexity:.3f}; lr {res.cfg.dynamic_lr:g}, decay {res.cfg.dynamic_decay:g}, "
            f"a step every {res.cfg.dynamic_segment} characters; {res.seconds:.1f} s, about "
            f"{res.extra_bytes / 2**20:.0f} MiB more memory than static scoring"
        )


def _show_eval(name: str, res, loaded, *, as_json: bool) -> None:
    from charnn.cli.output import echo

    if not math.isfinite(res.loss):  # a model whose outputs overflow: no figure is true, and JSON has no NaN
        raise CheckpointError(f"{name}: the model scores it as {res.loss} nats/char (its outputs overflow)")
    row = {"file": name, "checkpoint": str(loaded.path), "step": loaded.step, **res.as_dict()}
    if as_json:
        echo(json.dumps(row, allow_nan=False))
    else:
        unk = f"  ({row['unknown_chars']} unknown skipped)" if row["unknown_chars"] else ""
        echo(
            f"{name}: {res.chars} chars  {res.loss:.4f} nats/char  {res.bpc:.4f} bits/char  "
            f"perplexity {res.perplexity:.3f}{unk}"
        )
    if res.unknown:
        from charnn.data import unknown_count, unknown_symbols

        shown = unknown_symbols(loaded.vocab, res.unknown)
        say(f"warning: {name}: skipped {unknown_count(res.unknown)} not in the model's vocabulary: {shown}")


# report, export and serve register after train, sample and eval: `charnn --help` lists them in that order
from charnn.cli import tools as cli_tools  # noqa: E402, F401


def main() -> None:
    app()
