"""The `charnn` command line: parse options, call one library function, render the result, map errors.

Errors the user can cause print one `error: ...` line on stderr and exit non-zero (codes in the README);
anything else is a bug and keeps its traceback. stdout carries only the product (samples, eval figures).
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from charnn import __version__
from charnn.config import (
    BACKENDS,
    MODEL_KINDS,
    PRECISIONS,
    PRESETS,
    SAMPLE_PRECISIONS,
    DataConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    default_of,
    help_of,
    resolve,
)
from charnn.errors import CharnnError

# Typer vendors click in newer releases and uses click itself in older ones: find the classes either way.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _OneLineErrors(TyperGroup):
    """Click's usage errors as one `error: ...` line (exit 2) instead of a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name or "charnn", complete_var=complete_var,
                                standalone_mode=False, **extra)
        except _USAGE_ERROR as err:
            message = " ".join(err.format_message().split())
            if not message:  # bare `charnn`: the help was shown, nothing went wrong
                return 0 if not standalone_mode else sys.exit(0)
            command = err.ctx.command_path if err.ctx else "charnn"
            typer.echo(f"error: {message} (see {command} --help)", err=True)
            code = 2
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 130
        except _CLICK_EXCEPTION as err:
            typer.echo(f"error: {err.format_message()}", err=True)
            code = err.exit_code
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False,
                  help="Train, sample and evaluate character-level LSTM/GRU/RNN language models.")


# Choices as str Enums for Typer, built from the config's own lists so they are defined once.
ModelKind = Enum("ModelKind", {k: k for k in MODEL_KINDS}, type=str)
PresetName = Enum("PresetName", {k: k for k in [*PRESETS, "auto"]}, type=str)
Backend = Enum("Backend", {k: k for k in BACKENDS}, type=str)
Which = Enum("Which", {k: k for k in ("best", "latest")}, type=str)
Precision = Enum("Precision", {k: k for k in PRECISIONS}, type=str)
SamplePrecision = Enum("SamplePrecision", {k: k for k in SAMPLE_PRECISIONS}, type=str)


def _version(value: bool) -> None:
    if value:
        import torch

        typer.echo(f"charnn {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Train, sample and evaluate character-level LSTM/GRU/RNN language models."""


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _run(fn):
    """Run a command body; user errors become one line on stderr and their exit code."""
    def show_warning(message, category, filename, lineno, file=None, line=None):
        _err(f"warning: {message}")

    warnings.showwarning = show_warning
    try:
        return fn()
    except CharnnError as err:
        _err(f"error: {err}")
        raise typer.Exit(err.exit_code) from None
    except BrokenPipeError:  # `charnn sample | head`: the reader left; not an error
        sys.stderr.close()
        raise typer.Exit(0) from None


def _h(cls, name: str, suffix: str = "") -> str:
    return help_of(cls, name) + suffix


def _hd(cls, name: str) -> str:
    """Help with the dataclass default spelled out (options whose CLI default is None, "keep the config's")."""
    return f"{help_of(cls, name)} (default: {default_of(cls, name)})"


_SAMPLE = SampleConfig()  # the sample command's defaults are the library's
PRESET_DEFAULT = " (default: from --preset)"
OFF = " (default: off)"


@app.command("train")
def train_cmd(
    corpus: Annotated[Optional[Path], typer.Argument(help="UTF-8 text file to train on (optional with --resume).",
                                                     show_default=False)] = None,
    *,
    preset: Annotated[Optional[PresetName], typer.Option(help="Model size and schedule (auto: by device and "
                                                         "--time-budget); explicit flags override it. "
                                                         "(default: small)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default: checkpoints/<corpus>-<time>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory (model, optimizer, "
                                                   "schedule, RNG, data position).")] = None,
    model: Annotated[Optional[ModelKind], typer.Option(help=_h(ModelConfig, "model", PRESET_DEFAULT))] = None,
    layers: Annotated[Optional[int], typer.Option(min=1, help=_h(ModelConfig, "layers", PRESET_DEFAULT))] = None,
    hidden: Annotated[Optional[int], typer.Option(min=1, help=_h(ModelConfig, "hidden", PRESET_DEFAULT))] = None,
    embed: Annotated[Optional[int], typer.Option(min=1, help=_h(ModelConfig, "embed", PRESET_DEFAULT))] = None,
    dropout: Annotated[Optional[float], typer.Option(help=_h(ModelConfig, "dropout", PRESET_DEFAULT))] = None,
    tie_weights: Annotated[Optional[bool], typer.Option("--tie-weights/--no-tie-weights", show_default=False,
                                                        help=_h(ModelConfig, "tie_weights", OFF))] = None,
    layer_norm: Annotated[Optional[bool], typer.Option("--layer-norm/--no-layer-norm", show_default=False,
                                                       help=_h(ModelConfig, "layer_norm", OFF))] = None,
    locked_dropout: Annotated[Optional[float], typer.Option(help=_hd(ModelConfig, "locked_dropout"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_h(TrainConfig, "batch_size", PRESET_DEFAULT))] = None,
    seq_len: Annotated[Optional[int], typer.Option(help=_h(TrainConfig, "seq_len", PRESET_DEFAULT))] = None,
    lr: Annotated[Optional[float], typer.Option(help=_h(TrainConfig, "lr", PRESET_DEFAULT))] = None,
    min_lr: Annotated[Optional[float], typer.Option(help=_h(TrainConfig, "min_lr"))] = None,
    warmup_iters: Annotated[Optional[int], typer.Option(help=_h(TrainConfig, "warmup_iters", PRESET_DEFAULT))
                            ] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help=_hd(TrainConfig, "weight_decay"))
                            ] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help=_hd(TrainConfig, "grad_clip"))] = None,
    max_iters: Annotated[Optional[int], typer.Option(help=_h(TrainConfig, "max_iters", PRESET_DEFAULT))] = None,
    epochs: Annotated[Optional[float], typer.Option(help=_h(TrainConfig, "epochs"))] = None,
    time_budget: Annotated[Optional[float], typer.Option(help=_h(TrainConfig, "time_budget"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_hd(TrainConfig, "seed"))] = None,
    eval_every: Annotated[Optional[int], typer.Option(help=_h(TrainConfig, "eval_every", PRESET_DEFAULT))] = None,
    sample_every: Annotated[Optional[int], typer.Option(help=_h(TrainConfig, "sample_every"))] = None,
    sample_length: Annotated[Optional[int], typer.Option(help=_hd(TrainConfig, "sample_length"))
                             ] = None,
    log_every: Annotated[Optional[int], typer.Option(help=_hd(TrainConfig, "log_every"))] = None,
    keep_last: Annotated[Optional[int], typer.Option(help=_hd(TrainConfig, "keep_last"))] = None,
    patience: Annotated[Optional[int], typer.Option(help=_h(TrainConfig, "patience", OFF))] = None,
    device: Annotated[Optional[str], typer.Option(help=_hd(TrainConfig, "device"))] = None,
    precision: Annotated[Optional[Precision], typer.Option(help=_h(TrainConfig, "precision"))] = None,
    threads: Annotated[Optional[int], typer.Option(help=_h(TrainConfig, "threads"))] = None,
    val_frac: Annotated[Optional[float], typer.Option(help=_hd(DataConfig, "val_frac"))] = None,
    test_frac: Annotated[Optional[float], typer.Option(help=_hd(DataConfig, "test_frac"))] = None,
    encoding: Annotated[Optional[str], typer.Option(help=_hd(DataConfig, "encoding"))] = None,
    errors: Annotated[Optional[str], typer.Option(help=_hd(DataConfig, "errors"))] = None,
    keep_newlines: Annotated[Optional[bool], typer.Option("--keep-newlines", help=_h(DataConfig, "keep_newlines"))
                             ] = None,
    bytes_mode: Annotated[Optional[bool], typer.Option("--bytes", help=_h(DataConfig, "bytes_mode"))] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or samples on stderr.")] = False,
    report_html: Annotated[bool, typer.Option("--report", help="Write RUN/report.html (curves, samples, "
                                              "neurons) at each evaluation; see `charnn report`.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where the encoded corpus is cached as memory-mapped "
                                                      "ids, keyed by its sha256 (default: checkpoints/.cache).")
                         ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Encode the corpus in memory; write no cache.")
                        ] = False,
    backend: Annotated[Backend, typer.Option(help="torch.distributed backend under torchrun: auto (NCCL on "
                                             "CUDA, gloo on CPU), nccl or gloo.")] = Backend.auto,
) -> None:
    """Train a model on a text file; samples appear as it learns; checkpoints go to the run directory.

    Under `torchrun --nproc_per_node=N` the --batch-size streams are split across the N processes.
    """
    from charnn.train import resume_configs, train

    model_over = dict(model=model.value if model else None, layers=layers, hidden=hidden, embed=embed,
                      dropout=dropout, tie_weights=tie_weights, layer_norm=layer_norm, locked_dropout=locked_dropout)
    train_over = dict(batch_size=batch_size, seq_len=seq_len, lr=lr, min_lr=min_lr, warmup_iters=warmup_iters,
                      weight_decay=weight_decay, grad_clip=grad_clip, max_iters=max_iters, epochs=epochs,
                      time_budget=time_budget, seed=seed, eval_every=eval_every, sample_every=sample_every,
                      sample_length=sample_length, log_every=log_every, keep_last=keep_last, patience=patience,
                      device=device,
                      precision=precision.value if precision else None, threads=threads)
    data_over = dict(val_frac=val_frac, test_frac=test_frac, encoding=encoding, errors=errors,
                     keep_newlines=keep_newlines, bytes_mode=bytes_mode)

    def body():
        from charnn.distributed import setup_distributed, teardown_distributed
        from charnn.runtime import pick_device

        if resume is not None:
            if preset is not None:
                raise CharnnError("--preset cannot be combined with --resume (the run keeps its model)")
            model_cfg, train_cfg, data_cfg, saved_corpus = resume_configs(
                resume, model_overrides=model_over, train_overrides=train_over, data_overrides=data_over)
            source = corpus or Path(saved_corpus)
            out_dir = resume
        else:
            if corpus is None:
                raise CharnnError("missing CORPUS: the text file to train on (or --resume RUN)")
            model_cfg, train_cfg = resolve(preset.value if preset else None, model_over, train_over,
                                           device_type=pick_device(device or "auto").type)
            data_cfg = DataConfig(**{k: v for k, v in data_over.items() if v is not None})
            source, out_dir = corpus, out
        from charnn.corpus_cache import DEFAULT_CACHE_DIR
        from charnn.progress import TrainDisplay

        info = setup_distributed(backend.value, device_type=pick_device(train_cfg.device).type)
        try:
            with TrainDisplay(quiet=quiet or not info.is_main) as display, _StopFlag() as stop:
                on_progress = display
                if report_html and info.is_main:
                    from charnn.report import ReportRefresher

                    on_progress = ReportRefresher(display)
                result = train(source, model_cfg=model_cfg, train_cfg=train_cfg, data_cfg=data_cfg,
                               out_dir=out_dir, resume=resume is not None, on_progress=on_progress,
                               should_stop=stop, cache_dir=None if no_cache else cache_dir or DEFAULT_CACHE_DIR,
                               on_encode=display.encode)
        finally:
            teardown_distributed()
        if not info.is_main:
            return
        best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
        _err(f"done: {result.steps} steps in {result.elapsed:.0f}s; best val {best} nats/char; run {result.run_dir}")
        _err(f"next: charnn sample {result.run_dir} --prime \"...\"   |   charnn eval {result.run_dir}")
        if report_html:
            _err(f"report: {result.run_dir / 'report.html'}")

    _run(body)


class _StopFlag:
    """SIGINT/SIGTERM set a flag the training loop polls between steps; a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        if hasattr(signal, "SIGXFSZ"):  # a file-size limit must fail the write (EFBIG), not kill us
            self._old[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            import os

            os.write(2, b"error: interrupted again; exiting now (checkpoints on disk are intact)\n")
            os._exit(130)
        self.signum = signum

    def __call__(self) -> int | None:
        return self.signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


@app.command("sample")
def sample_cmd(
    run: Annotated[Optional[Path], typer.Argument(help="Run directory or checkpoint file (default: the newest run "
                                                  "under checkpoints/).", show_default=False)] = None,
    *,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help=_h(SampleConfig, "temperature"))
                           ] = _SAMPLE.temperature,
    length: Annotated[int, typer.Option("--length", "-n", help=_h(SampleConfig, "length"))] = _SAMPLE.length,
    prime: Annotated[str, typer.Option(help=_h(SampleConfig, "prime"))] = "",
    top_k: Annotated[Optional[int], typer.Option(help=_h(SampleConfig, "top_k"))] = None,
    top_p: Annotated[Optional[float], typer.Option(help=_h(SampleConfig, "top_p"))] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help=_h(SampleConfig, "greedy"))] = False,
    seed: Annotated[Optional[int], typer.Option(help=_h(SampleConfig, "seed"))] = None,
    num_samples: Annotated[int, typer.Option(help=_h(SampleConfig, "num_samples"))] = _SAMPLE.num_samples,
    precision: Annotated[SamplePrecision, typer.Option(help=_h(SampleConfig, "precision"))
                         ] = SamplePrecision[_SAMPLE.precision],
    which: Annotated[Which, typer.Option(help="Which checkpoint of a run: best (by validation loss) or latest.")
                     ] = Which.best,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
    raw: Annotated[bool, typer.Option("--raw", help="Write control characters as they are, even to a terminal.")
                   ] = False,
) -> None:
    """Generate text from a trained model, streamed to stdout as it is produced."""
    from charnn.rundir import load_run
    from charnn.runtime import pick_device
    from charnn.sample import generate

    def body():
        cfg = SampleConfig(length=length, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                           prime=prime or None, seed=seed, num_samples=num_samples, precision=precision.value)
        loaded = load_run(run, which=which.value, device=pick_device(device))
        out = _Output(loaded.vocab, escape=sys.stdout.isatty() and not raw)
        gen = generate(loaded.model, loaded.vocab, cfg)
        if num_samples == 1:
            out.write(gen.prime)
            for ids in gen.steps:
                out.write(ids.tolist())
            out.write_text("\n")
        else:
            rows = [list(gen.prime) for _ in range(num_samples)]
            for ids in gen.steps:
                for row, i in zip(rows, ids.tolist(), strict=True):
                    row.append(i)
            for k, row in enumerate(rows):
                if k:
                    out.write_text("\n---------------\n")
                out.write(row)
            out.write_text("\n")
        out.flush()

    _run(body)


class _Output:
    """Writes sampled ids to stdout: text (escaping control characters on a terminal) or raw bytes."""

    def __init__(self, vocab, *, escape: bool) -> None:
        self.vocab, self.escape = vocab, escape
        self.tty = sys.stdout.isatty()

    def write(self, ids) -> None:
        if not ids:
            return
        if self.vocab.bytes_mode:
            sys.stdout.buffer.write(bytes(self.vocab.decode_symbols(ids)))
            if self.tty:
                sys.stdout.buffer.flush()
            return
        self.write_text(self.vocab.decode(ids))

    def write_text(self, text: str) -> None:
        if self.escape:
            text = "".join(c if c in "\n\t" or c.isprintable() else c.encode("unicode_escape").decode()
                           for c in text)
        if self.vocab.bytes_mode:
            sys.stdout.buffer.write(text.encode())
        else:
            sys.stdout.write(text)
        if self.tty:
            sys.stdout.flush()

    def flush(self) -> None:
        sys.stdout.flush()


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.", show_default=False)],
    files: Annotated[Optional[list[Path]], typer.Argument(help="Text files to score (default: the run's own "
                                                          "validation split).", show_default=False)] = None,
    *,
    which: Annotated[Which, typer.Option(help="Which checkpoint of a run: best or latest.")] = Which.best,
    skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="Drop characters outside the vocabulary "
                                               "(counted and reported) instead of failing.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Segments scored side by side (speed only; the result "
                                            "does not depend on it).")] = 64,
    segment: Annotated[Optional[int], typer.Option(min=2, help="Characters per independently scored segment "
                                                   "(default: the run's, 4096).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per file on stdout.")] = False,
) -> None:
    """Score text with a model: characters, nats/char, bits/char and perplexity."""
    from charnn.evaluate import evaluate_file, evaluate_validation
    from charnn.rundir import load_run
    from charnn.runtime import pick_device

    def body():
        loaded = load_run(run, which=which.value, device=pick_device(device))
        seg = segment or loaded.eval_segment
        targets = files or [None]
        for target in targets:
            if target is None:
                res = evaluate_validation(loaded, segment=seg, batch_size=batch_size)
                name = "validation split"
            else:
                res = evaluate_file(loaded, target, skip_unknown=skip_unknown, segment=seg, batch_size=batch_size)
                name = str(target)
            row = {"file": name, "checkpoint": str(loaded.path), "step": loaded.step, **res.as_dict()}
            if as_json:
                typer.echo(json.dumps(row))
            else:
                unk = f"  ({row['unknown_chars']} unknown skipped)" if row["unknown_chars"] else ""
                typer.echo(f"{name}: {res.chars} chars  {res.loss:.4f} nats/char  {res.bpc:.4f} bits/char  "
                           f"perplexity {res.perplexity:.3f}{unk}")
            if res.unknown:
                shown = ", ".join(loaded.vocab.symbol_str(s) for s in list(res.unknown)[:10])
                _err(f"warning: {name}: skipped {sum(res.unknown.values())} unknown character(s): {shown}")

    _run(body)


@app.command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint file.", show_default=False)],
    *,
    text: Annotated[Optional[Path], typer.Option(help="Text file to analyse (default: the run's validation "
                                                 "split).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="HTML file to write (default: "
                                                   "RUN/report.html).")] = None,
    chars: Annotated[int, typer.Option(min=2, max=1_000_000, help="Characters of the passage to analyse.")
                     ] = 5000,
    which: Annotated[Which, typer.Option(help="Which checkpoint of a run: best or latest.")] = Which.best,
) -> None:
    """Write one self-contained HTML page: curves, samples, surprise heatmap, neuron explorer, gates."""
    import time

    from charnn.report import write_report

    def body():
        start = time.perf_counter()
        path = write_report(run, output, text=text, max_chars=chars, which=which.value)
        _err(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f}s")

    _run(body)


def main() -> None:
    app()
