"""The fields of charnn's configs: an option's default, help and bounds in one place (`opt`), checked the same way
whether a value comes from the command line, from Python or from a run's config.json (`check_fields`,
`from_dict`, strict about types). No config of its own: those are `charnn.config`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import field
from typing import Any

from charnn.errors import ConfigError


def opt(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    gt: float | None = None,
    panel: str | None = None,
    flags: tuple[str, ...] | None = None,
    metavar: str | None = None,
    shown: str | None = None,
    parser_checks: bool = False,
    absent: Any = None,
) -> Any:
    """A dataclass field with its help text and bounds, checked by `validate` and shown by the CLI.

    A field with a `panel` is a command-line option, listed under that heading of `--help` (charnn.cli.options
    builds it): `flags` are its spellings (default `--field-name`), `metavar` the placeholder for its value,
    `shown` the default to print where the field's own is None. With `parser_checks` the command-line parser
    refuses a bad choice or a value under `min` before the config sees it (its own error wording). `absent` is
    what a saved config without the field means (`from_dict`: a file written before the field existed), where that
    is not the default.
    """
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "choices": choices,
        "gt": gt,
        "panel": panel,
        "flags": flags,
        "metavar": metavar,
        "shown": shown,
        "parser_checks": parser_checks,
        "absent": absent,
    }
    return field(default=default, metadata=meta)


def flag_text(cls: type, name: str, value: Any) -> str:
    """Field `name` of `cls` set to `value`, as a user types it: `--hidden 64`, `--tie-weights`,
    `--no-tie-weights` (a switch's spellings are its `flags`)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    flag = "--" + name.replace("_", "-")
    if not isinstance(value, bool):
        return f"{flag} {value}"
    on, _, off = ((f.metadata.get("flags") or (flag,))[0]).partition("/")
    return on if value else off or f"no {on}"


def validate(obj: Any) -> None:
    """Every field of a config object against its type and bounds (its `__post_init__` calls this)."""
    check_fields(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


def check_fields(cls: type, values: dict[str, Any], *, where: str | None = None) -> None:
    """Each value (None: not given) against its field's type, choices and bounds (those of `cls`), before any
    config is built. Errors name the command-line flag, or `where.field` when `where` is given (a file's
    section)."""
    for f in dataclasses.fields(cls):
        value = values.get(f.name)
        if value is None:
            continue
        label = f"{where}.{f.name}" if where else "--" + f.name.replace("_", "-")
        _check_type(cls, f.name, value, label)
        meta = f.metadata
        if not meta:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{label} must be one of {', '.join(meta['choices'])}, not {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{label} must be a finite number, not {value}")
            if meta.get("min") is not None and value < meta["min"]:
                raise ConfigError(f"{label} must be at least {meta['min']}, not {value}")
            if meta.get("max") is not None and value > meta["max"]:
                raise ConfigError(f"{label} must be at most {meta['max']}, not {value}")
            if meta.get("gt") is not None and value <= meta["gt"]:
                raise ConfigError(f"{label} must be greater than {meta['gt']}, not {value}")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field's accepted types, from its annotation: `int | None` -> (int, NoneType)."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) or (hints[f.name],) for f in dataclasses.fields(cls)}


def _check_type(cls: type, name: str, value: Any, label: str) -> None:
    """The value has its field's type exactly: a bool is not an int (nor a number), "32" is not an int, and
    neither is 32.0 (strict: a hand-edited file is refused rather than guessed at). An int is a float."""
    types = _field_types(cls)[name]
    if not any(_is(value, t) for t in types):
        kinds = " or ".join(_KINDS.get(t, "null" if t is type(None) else t.__name__) for t in types)
        raise ConfigError(f"{label} must be {kinds}, not {json.dumps(value, default=repr)}")


def _is(value: Any, t: type) -> bool:
    if t is type(None):
        return value is None
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return not isinstance(t, type) or isinstance(value, t)  # a generic (dict[str, Any]): not checked here


def default_of(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: Any, *, where: str | None = None) -> Any:
    """Build `cls` from parsed JSON: unknown keys are ignored (older and newer files), missing ones take their
    `absent` value where the field has one (what a file from before the field meant), else their defaults, and
    each value must have its field's type exactly (see `_check_type`; null only where the field may be None) and
    pass the command line's bounds. ConfigError names `where.field` (default: the class)."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, not {type(data).__name__ if data is not None else 'null'}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.metadata.get("absent") is not None:
                values[f.name] = f.metadata["absent"]
            continue
        value = data[f.name]
        if value is None and type(None) not in _field_types(cls)[f.name]:
            raise ConfigError(f"{where}.{f.name} must not be null")
        if isinstance(value, int) and not isinstance(value, bool) and float in _field_types(cls)[f.name]:
            try:
                value = float(value)  # a hand-written 1 for 1.0
            except OverflowError:  # 400 digits
                raise ConfigError(f"{where}.{f.name} must be a finite number, not {len(str(value))} digits") from None
        values[f.name] = value
    check_fields(cls, values, where=where)
    try:
        return cls(**values)
    except ConfigError as err:  # a rule between fields (e.g. --min-lr above --lr)
        raise ConfigError(f"{where}: {err}") from None
