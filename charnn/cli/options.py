"""Typer options built from the config fields: each field with a `panel` (charnn.fields.opt) is one option,
with its help, bounds, spelling and panel written once, on the field. Adding an option is adding a field.
A command lists `@with_options(*config_options(SomeConfig))` above its definition: the decorator appends those
fields' options to the function's signature, so Typer parses them and the command receives them as keywords.

Not the commands themselves (charnn.cli.commands, charnn.cli.train, charnn.cli.tools); imports no torch, so
`charnn --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from charnn.config import PLANNED, DataConfig, ModelConfig, TrainConfig
from charnn.errors import CharnnError

if TYPE_CHECKING:
    from charnn.training.plan import PlanRequest

# The order of the help panels; an option without a panel goes under Typer's "Options".
PANELS = (
    "Run",
    "Model",
    "Optimisation",
    "Stopping",
    "Evaluation & output",
    "Dynamic evaluation",
    "Sampling",
    "Data",
    "Hardware",
    "Output",
)
METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}
TRAIN_CONFIGS = (ModelConfig, TrainConfig, DataConfig)


def path_value(value: str | Path) -> Path:
    """Every path argument's parser: a name longer than the file system takes is one usage error (exit 2) here,
    not an OSError deep in a command (a path mistake is exit 2 wherever it is found)."""
    path = Path(value)
    name_max, path_max = _path_limits()
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    if longest > name_max:
        raise typer.BadParameter(f"a name in it is {longest} bytes long; this system takes {name_max}")
    if len(os.fsencode(str(path))) >= path_max:
        raise typer.BadParameter(f"is {len(os.fsencode(str(path)))} bytes long; this system takes less than {path_max}")
    return path


def _path_limits() -> tuple[int, int]:
    """The longest file name and path this system takes (POSIX's usual 255 and 4096 where it cannot say)."""
    try:
        return os.pathconf(".", "PC_NAME_MAX"), os.pathconf(".", "PC_PATH_MAX")
    except (AttributeError, OSError, ValueError):
        return 255, 4096


def choice(name: str, values: typing.Iterable[str]) -> type[Enum]:
    """A str Enum of `values`, which is how Typer takes a fixed set of choices."""
    return Enum(name, {v: v for v in values}, type=str)


def with_default(help: str, shown: str | None) -> str:
    """The one notation for defaults in every command's help: `[default: X]` after the text."""
    return help if shown is None else f"{help} \\[default: {shown}]"  # `\[`: not Rich markup


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _default_text(f: dataclasses.Field, planned: bool, *, flag: bool) -> str | None:
    """What the help shows as the default: `plan` where the training plan chooses the value, else the field's."""
    if planned and f.name in PLANNED:
        return "plan"
    if flag and not any("/" in spelling for spelling in f.metadata["flags"] or ()):
        return None  # a flag without a --no- form is off unless given
    return _shown(f.default) if f.default is not None else f.metadata["shown"]


def _option(f: dataclasses.Field, hint: Any, planned: bool) -> inspect.Parameter:
    """One keyword-only parameter for Typer: `Annotated[type, typer.Option(...)] = default`."""
    meta = f.metadata
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)  # T of `T | None`
    kwargs: dict[str, Any] = {}
    if meta["choices"] and meta["parser_checks"]:
        base = choice(f.name.title().replace("_", ""), meta["choices"])
    elif meta["parser_checks"] and meta["min"] is not None:
        kwargs["min"] = meta["min"]
    flag = base is bool
    metavar = None if flag else meta["metavar"] or METAVARS.get(base) or f.name.upper()
    default = None if planned or f.default is None else f.default
    if isinstance(default, str) and isinstance(base, type) and issubclass(base, Enum):
        default = base[default]
    info = typer.Option(
        *(meta["flags"] or ("--" + f.name.replace("_", "-"),)),
        metavar=metavar,
        show_default=False,
        rich_help_panel=meta["panel"],
        help=with_default(meta["help"], _default_text(f, planned, flag=flag)),
        **kwargs,
    )
    annotation = Annotated[Optional[base] if default is None else base, info]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def config_options(*classes: type, planned: bool = False, only: str | None = None) -> list[inspect.Parameter]:
    """The options of every field with a panel (or of field `only`). With `planned` every option defaults to
    None, so an explicit flag can be told from an absent one (the plan fills the rest: charnn.training.plan)."""
    params = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        params += [
            _option(f, hints[f.name], planned)
            for f in dataclasses.fields(cls)
            if f.metadata.get("panel") and only in (None, f.name)
        ]
    return params


def with_options(*extra: inspect.Parameter) -> Callable[[Callable], Callable]:
    """Give a command the parameters written in its signature plus `extra` (they arrive in its **kwargs),
    sorted into PANELS order, as the signature Typer reads."""

    def decorate(fn: Callable) -> Callable:
        own = [
            p
            for p in inspect.signature(fn, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        positional = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keyword = sorted([p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY] + list(extra), key=_panel_rank)
        fn.__signature__ = inspect.Signature(positional + keyword)
        return fn

    return decorate


def _panel_rank(param: inspect.Parameter) -> int:
    info = typing.get_args(param.annotation)[1]
    return PANELS.index(info.rich_help_panel) if info.rich_help_panel else -1


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Option values as the configs take them: Enum members become their strings."""
    return {k: v.value if isinstance(v, Enum) else v for k, v in values.items()}


def field_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The values of `cls`'s command-line fields among `values`, in field order."""
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}


def train_configs(
    corpus: Path | None, values: dict[str, Any], *, preset: str | None, resume: Path | None, out: Path | None
) -> tuple[TrainSetup, Path, Path | None]:
    """What `charnn train` trains with, its corpus and run directory: a resumed run's own configs with the
    options given laid over them, or a plan request (the preset and the options given) for a new run."""
    from charnn.training.plan import PlanRequest
    from charnn.training.train import resume_configs

    model_over, train_over, data_over = (field_values(cls, plain(values)) for cls in TRAIN_CONFIGS)
    if resume is not None:
        if preset is not None:
            raise CharnnError("--preset cannot be combined with --resume (the run keeps its model)")
        model_cfg, train_cfg, data_cfg, saved_corpus = resume_configs(
            resume, model_overrides=model_over, train_overrides=train_over, data_overrides=data_over
        )
        return TrainSetup(data_cfg, model_cfg=model_cfg, train_cfg=train_cfg), corpus or Path(saved_corpus), resume
    if corpus is None:
        raise CharnnError("missing CORPUS: the text file to train on (or --resume RUN)")
    data_cfg = DataConfig(**{k: v for k, v in data_over.items() if v is not None})
    request = PlanRequest(None if preset == "auto" else preset, model_over, train_over)
    return TrainSetup(data_cfg, request=request), corpus, out


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """The configs of a resumed run, or the request the plan answers for a new one."""

    data_cfg: DataConfig
    model_cfg: ModelConfig | None = None
    train_cfg: TrainConfig | None = None
    request: PlanRequest | None = None

    @property
    def device(self) -> str:
        if self.train_cfg is not None:
            return self.train_cfg.device
        return self.request.train.get("device") or "auto"
