"""The files a run reads, as MLflow datasets (part of the sevila.tracking package, whose __init__ re-exports
these names).

MLflow's dataset inputs show in the UI's Datasets column (name, digest, context) and link runs that read the same
bytes: the pseudo-label file a `pseudo_label` run writes has the digest its `refine` run logs as input."""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

# MLflow's source type for a local file (its LocalArtifactDatasetSource writes {"uri": <path>}); written directly
# because resolving a path through MLflow's registry warns that two local source classes match it.
LOCAL_SOURCE = "local"


class InputContext(str, enum.Enum):
    """How a run uses a dataset (MLflow's `mlflow.data.context` input tag)."""

    TRAIN = "train"
    EVAL = "eval"


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file's bytes (MLflow allows digests up to 36 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _count_rows(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


@dataclass(frozen=True)
class InputFile:
    """A file a run reads (records, pseudo-labels). Logged as an MLflow dataset: name (default: the file name),
    digest of its bytes, its row count (non-empty lines) as the profile, its absolute path as a local source."""

    path: Path
    context: InputContext
    name: str | None = None

    def entity(self):
        from mlflow.entities import Dataset

        p = Path(self.path)
        if not p.is_file():
            raise FileNotFoundError(f"input dataset {p} does not exist (logging the run's inputs)")
        return Dataset(name=self.name or p.name, digest=file_digest(p), source_type=LOCAL_SOURCE,
                       source=json.dumps({"uri": str(p.resolve())}), profile=json.dumps({"num_rows": _count_rows(p)}))
