"""charnn: character-level recurrent language models — train, sample and evaluate from Python or the CLI.

`import charnn` is cheap: it imports neither torch nor the CLI's typer, rich or tqdm. Each public name below
is loaded from its module on first use (`charnn.train` loads charnn.train, and with it torch).
"""

import importlib as _importlib
import sys as _sys
import types as _types

from charnn.version import __version__  # noqa: F401 (charnn.__version__: no torch)

# Public name -> the module that defines it.
_EXPORTS = {
    "LoadedModel": "checkpoint", "load_model": "checkpoint", "load_run": "rundir",
    "DataConfig": "config", "ModelConfig": "config", "SampleConfig": "config", "TrainConfig": "config",
    "Corpus": "data", "Vocab": "data", "encode_file": "data",
    "CharnnError": "errors",
    "EvalResult": "evaluate", "evaluate_file": "evaluate", "evaluate_ids": "evaluate",
    "evaluate_validation": "evaluate",
    "CharRNN": "model",
    "generate": "sample", "sample_text": "sample", "Beam": "beam", "beam_search": "beam",
    "Progress": "train", "TrainResult": "train", "train": "train", "plan": "train",
    "Plan": "planning", "PlanRequest": "planning",
}

__all__ = sorted(_EXPORTS, key=str.lower)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'charnn' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"charnn.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(_types.ModuleType):
    """Importing a submodule binds it on the package; where a public name is also a submodule's (`train`),
    the name keeps meaning the function, whichever was imported first."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
