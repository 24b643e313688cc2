"""charnn: character-level recurrent language models — train, sample and evaluate from Python or the CLI.

Importing charnn imports torch but not the CLI's typer, rich or tqdm.
"""

from charnn.checkpoint import LoadedModel, load_model  # noqa: E402
from charnn.config import DataConfig, ModelConfig, SampleConfig, TrainConfig  # noqa: E402
from charnn.data import Corpus, Vocab, encode_file  # noqa: E402
from charnn.errors import CharnnError  # noqa: E402
from charnn.evaluate import EvalResult, evaluate_file, evaluate_ids, evaluate_validation  # noqa: E402
from charnn.model import CharRNN  # noqa: E402
from charnn.rundir import load_run  # noqa: E402
from charnn.sample import generate, sample_text  # noqa: E402
from charnn.train import Progress, TrainResult, train  # noqa: E402
from charnn.version import __version__  # noqa: F401 (charnn.__version__)

__all__ = [
    "CharRNN", "CharnnError", "Corpus", "DataConfig", "EvalResult", "LoadedModel", "ModelConfig", "Progress",
    "SampleConfig", "TrainConfig", "TrainResult", "Vocab", "encode_file", "evaluate_file", "evaluate_ids",
    "evaluate_validation", "generate", "load_model", "load_run", "sample_text", "train",
]
