"""The `charnn` Typer application, its root callback (`--version`) and the options several commands share.
The commands register themselves on `app`: train in charnn.cli.train, sample and eval in charnn.cli.commands,
report, export and serve in charnn.cli.tools. Imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charnn.cli.options import choice, config_options, path_value, with_default
from charnn.cli.run import OneLineErrors
from charnn.config import BACKENDS, TrainConfig
from charnn.presets import PRESETS
from charnn.version import __version__

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    help="Train, sample and evaluate character-level LSTM/GRU/RNN language models.",
)

PresetName = choice("PresetName", [*PRESETS, "auto"])
Backend = choice("Backend", BACKENDS)
Which = choice("Which", ("best", "latest"))

# Options several commands share, written once.
RunPath = Annotated[
    Path,
    typer.Argument(
        metavar="RUN", help="Run directory, checkpoint file or bundled model.", show_default=False, parser=path_value
    ),
]
WhichOption = Annotated[
    Which,
    typer.Option(
        metavar="WHICH",
        show_default=False,
        rich_help_panel="Run",
        help=with_default("Checkpoint of a run: best (by validation loss) or latest.", "best"),
    ),
]
DEVICE = config_options(TrainConfig, only="device")  # --device: TrainConfig's field, for commands that run a model


def _version(value: bool) -> None:
    if value:
        import torch

        typer.echo(f"charnn {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Train, sample and evaluate character-level LSTM/GRU/RNN language models."""
