"""Canonical annotation records: every benchmark format is read into one of these two forms.

`QARecord` covers the multiple-choice benchmarks (NExT-QA, STAR, How2QA, TVQA, VLEP and the synthetic
world); `MomentRecord` covers moment retrieval (QVHighlights), used to pre-train the Localizer (paper §3.3).
Stored as jsonl (or parquet when the file name ends in .parquet); `write_records` is atomic.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence, TypeVar, Union

from sevila.io import atomic_write_text

Window = tuple[float, float]


@dataclass(frozen=True)
class QARecord:
    """One multiple-choice question about one video clip.

    `video` is the video id relative to the dataset's video root, without extension.
    `answer` is None for unlabelled splits (never 0 by default).
    `start`/`end` bound the annotated clip in seconds; None means the whole video.
    `evidence` holds ground-truth event windows (seconds) where a dataset has them (the synthetic world).
    """

    dataset: str
    qid: str
    video: str
    question: str | None
    options: tuple[str, ...]
    answer: int | None = None
    start: float | None = None
    end: float | None = None
    qtype: str | None = None
    split: str | None = None
    evidence: tuple[Window, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if self.evidence is not None:
            object.__setattr__(self, "evidence", tuple(tuple(map(float, w)) for w in self.evidence))

    @property
    def has_window(self) -> bool:
        """True when the record carries a usable (finite) clip window."""
        return _finite(self.start) and _finite(self.end)


@dataclass(frozen=True)
class MomentRecord:
    """One natural-language query about one video with its relevant windows (QVHighlights)."""

    dataset: str
    qid: str
    query: str
    video: str
    duration: float
    windows: tuple[Window, ...] | None = None
    relevant_clip_ids: tuple[int, ...] | None = None
    saliency_scores: tuple[tuple[int, ...], ...] | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.windows is not None:
            object.__setattr__(self, "windows", tuple(tuple(map(float, w)) for w in self.windows))
        if self.relevant_clip_ids is not None:
            object.__setattr__(self, "relevant_clip_ids", tuple(self.relevant_clip_ids))
        if self.saliency_scores is not None:
            object.__setattr__(self, "saliency_scores", tuple(tuple(s) for s in self.saliency_scores))


Record = Union[QARecord, MomentRecord]
R = TypeVar("R", QARecord, MomentRecord)


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def record_to_dict(rec: Record) -> dict:
    """Plain-JSON dict; tuples become lists, NaN becomes None."""
    out = {}
    for k, v in asdict(rec).items():
        if isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = _listify(v)
    return out


def _listify(v):
    if isinstance(v, (tuple, list)):
        return [_listify(x) for x in v]
    return v


def record_from_dict(d: dict) -> Record:
    """Inverse of `record_to_dict`; the record kind is told apart by its fields."""
    cls = MomentRecord if "query" in d else QARecord
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
    return cls(**{k: v for k, v in d.items() if k in names})


def write_records(path: str | Path, records: Iterable[Record]) -> Path:
    """Write records atomically as jsonl, or parquet when `path` ends in .parquet."""
    path = Path(path)
    rows = [record_to_dict(r) for r in records]
    if path.suffix == ".parquet":
        import pandas as pd

        from sevila.io import atomic_path

        with atomic_path(path) as tmp:
            # Nested lists are stored as JSON strings: parquet cannot hold ragged nested tuples portably.
            df = pd.DataFrame([{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
            df.to_parquet(tmp, index=False)
        return path
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_records(path: str | Path) -> list[Record]:
    """Read records written by `write_records`; errors name the file and line."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(path)
        out = []
        for i, row in enumerate(df.to_dict(orient="records")):
            d = {}
            for k, v in row.items():
                if isinstance(v, str) and v[:1] == "[":
                    v = json.loads(v)
                elif isinstance(v, float):
                    # pandas stores an int column with gaps (answer None) as float: undo both.
                    v = None if math.isnan(v) else (int(v) if k in _INT_FIELDS else v)
                d[k] = v
            # A file mixing QA and moment rows has the union of columns: drop the other kind's empty ones.
            cls = MomentRecord if d.get("query") is not None else QARecord
            names = {f.name for f in fields(cls)}
            d = {k: v for k, v in d.items() if k in names or v is not None}
            out.append(_parse(d, path, f"row {i}"))
        return out
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            out.append(_parse(d, path, lineno))
    return out


_INT_FIELDS = frozenset({"answer"})


def _parse(d: dict, path: Path, where: int | str) -> Record:
    try:
        return record_from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}:{where}: {e}") from None


def by_qid(records: Sequence[R]) -> dict[str, R]:
    return {r.qid: r for r in records}
