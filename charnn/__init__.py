"""charnn: character-level recurrent language models — train, sample and evaluate from Python or the CLI.

`import charnn` is cheap: it imports neither torch nor the CLI's typer, rich or tqdm. Each public name below
is loaded from its module on first use (`charnn.train` loads charnn.training.train, and with it torch).
"""

import importlib as _importlib

from charnn.version import __version__  # noqa: F401 (charnn.__version__: no torch)

# Public name -> the module that defines it.
_EXPORTS = {
    "LoadedModel": "store.checkpoint",
    "load_model": "store.checkpoint",
    "load_run": "store.rundir",
    "DataConfig": "config",
    "ModelConfig": "config",
    "SampleConfig": "config",
    "TrainConfig": "config",
    "Corpus": "data",
    "Vocab": "data",
    "encode_file": "data",
    "CharnnError": "errors",
    "EvalResult": "evaluate",
    "evaluate_file": "evaluate",
    "evaluate_ids": "evaluate",
    "evaluate_validation": "evaluate",
    "CharRNN": "model",
    "generate": "sampling.generate",
    "sample_text": "sampling.generate",
    "Beam": "sampling.beam",
    "beam_search": "sampling.beam",
    "Progress": "training.runstate",
    "TrainResult": "training.train",
    "train": "training.train",
    "plan": "training.setup",
    "Plan": "training.plan",
    "PlanRequest": "training.plan",
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
