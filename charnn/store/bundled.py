"""The models shipped inside the package (`charnn models`): ordinary model files with 16-bit weights under
charnn/store/models/, and the manifest beside them (models.json: each file's sha256, size, corpus and validation
loss). A name that is not an existing path resolves here (`charnn.store.rundir.load_run`). Not how the starter is
built: benchmarks/starter.py trains it and writes the file and its manifest entry.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from charnn.errors import CheckpointError

MANIFEST = "models.json"
STARTER = "shakespeare"  # the model the plan suggests fine-tuning for a small corpus (charnn.training.plan)


@dataclass(frozen=True)
class BundledModel:
    """One entry of the manifest: a model file in the package and what it is."""

    name: str
    file: str  # the model file's name under charnn/store/models/
    sha256: str  # of the whole file
    bytes: int
    trained_on: str  # the corpus, in words
    corpus_chars: int
    val_loss: float  # nats/char on the corpus's validation split, of the 16-bit weights as shipped
    steps: int
    build: str  # the command that rebuilds it

    @property
    def path(self) -> Path:
        return models_dir() / self.file

    def as_dict(self) -> dict:
        return asdict(self)


def models_dir() -> Path:
    """The folder of the bundled model files (a real folder: charnn is installed unzipped)."""
    return Path(str(resources.files("charnn.store").joinpath("models")))


def bundled_models(folder: Path | None = None) -> list[BundledModel]:
    """The manifest's models, by name; none when the package ships no manifest."""
    path = (folder or models_dir()) / MANIFEST
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: the bundled models' manifest is unreadable ({err})") from None
    try:
        return [BundledModel(name=name, **entry) for name, entry in sorted(entries.items())]
    except (AttributeError, TypeError) as err:
        raise CheckpointError(f"{path}: the bundled models' manifest is malformed ({err})") from None


def bundled_path(name: str) -> Path | None:
    """The model file a bundled model's name stands for; None when no bundled model has that name."""
    found = next((m for m in bundled_models() if m.name == name), None)
    return found.path if found else None


def write_manifest(folder: Path, models: list[BundledModel]) -> None:
    """The manifest of `models`, sorted by name (benchmarks/starter.py writes it after building a model)."""
    entries = {m.name: {k: v for k, v in m.as_dict().items() if k != "name"} for m in sorted(models, key=_name)}
    (folder / MANIFEST).write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


def _name(model: BundledModel) -> str:
    return model.name
