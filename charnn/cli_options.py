"""Typer options built from the config fields: each field with a `panel` (charnn.config.opt) is one option,
with its help, bounds, spelling and panel written once, on the field. Adding an option is adding a field.

Not the commands themselves (charnn.cli); imports no torch, so `charnn --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charnn.config import PRESETS, DataConfig, ModelConfig, TrainConfig, resolve
from charnn.errors import CharnnError

# The order of the help panels; an option without a panel goes under Typer's "Options".
PANELS = ("Run", "Model", "Optimisation", "Stopping", "Evaluation & output", "Sampling", "Data", "Hardware", "Output")
METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}
TRAIN_CONFIGS = (ModelConfig, TrainConfig, DataConfig)


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


def _preset_sets(cls: type, name: str) -> bool:
    """Whether the presets choose this field (their values differ, or they name it)."""
    if cls is ModelConfig:
        return len({getattr(p.model, name) for p in PRESETS.values()}) > 1
    return cls is TrainConfig and any(name in p.train for p in PRESETS.values())


def _default_text(cls: type, f: dataclasses.Field, preset: str | None, *, flag: bool) -> str | None:
    """What the help shows as the default: the preset's value where a preset sets it, else the field's."""
    if preset is not None and _preset_sets(cls, f.name):
        chosen = PRESETS[preset]
        value = getattr(chosen.model, f.name) if cls is ModelConfig else chosen.train.get(f.name, f.default)
        return f"{_shown(value)} (preset)"
    if flag and not any("/" in spelling for spelling in f.metadata["flags"] or ()):
        return None  # a flag without a --no- form is off unless given
    return _shown(f.default) if f.default is not None else f.metadata["shown"]


def _option(cls: type, f: dataclasses.Field, hint: Any, preset: str | None) -> inspect.Parameter:
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
    default = None if preset is not None or f.default is None else f.default
    if isinstance(default, str) and isinstance(base, type) and issubclass(base, Enum):
        default = base[default]
    info = typer.Option(*(meta["flags"] or ("--" + f.name.replace("_", "-"),)), metavar=metavar,
                        show_default=False, rich_help_panel=meta["panel"],
                        help=with_default(meta["help"], _default_text(cls, f, preset, flag=flag)), **kwargs)
    annotation = Annotated[Optional[base] if default is None else base, info]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def config_options(*classes: type, preset: str | None = None, only: str | None = None) -> list[inspect.Parameter]:
    """The options of every field with a panel (or of field `only`). With `preset` (its name) every option
    defaults to None, so an explicit flag can be told from an absent one, and the help shows the preset's values."""
    params = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        params += [_option(cls, f, hints[f.name], preset) for f in dataclasses.fields(cls)
                   if f.metadata.get("panel") and only in (None, f.name)]
    return params


def with_options(*extra: inspect.Parameter) -> Callable[[Callable], Callable]:
    """Give a command the parameters written in its signature plus `extra` (they arrive in its **kwargs),
    sorted into PANELS order, as the signature Typer reads."""
    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
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


def train_configs(corpus: Path | None, values: dict[str, Any], *, preset: str | None, resume: Path | None,
                  out: Path | None) -> tuple[ModelConfig, TrainConfig, DataConfig, Path, Path | None]:
    """The configs, corpus and run directory of `charnn train`: a resumed run's own configs with the options
    given laid over them, or a preset's with the options given laid over it."""
    from charnn.runtime import pick_device
    from charnn.train import resume_configs

    model_over, train_over, data_over = (field_values(cls, plain(values)) for cls in TRAIN_CONFIGS)
    if resume is not None:
        if preset is not None:
            raise CharnnError("--preset cannot be combined with --resume (the run keeps its model)")
        model_cfg, train_cfg, data_cfg, saved_corpus = resume_configs(
            resume, model_overrides=model_over, train_overrides=train_over, data_overrides=data_over)
        return model_cfg, train_cfg, data_cfg, corpus or Path(saved_corpus), resume
    if corpus is None:
        raise CharnnError("missing CORPUS: the text file to train on (or --resume RUN)")
    model_cfg, train_cfg = resolve(preset, model_over, train_over,
                                   device_type=pick_device(train_over["device"] or "auto").type)
    data_cfg = DataConfig(**{k: v for k, v in data_over.items() if v is not None})
    return model_cfg, train_cfg, data_cfg, corpus, out
