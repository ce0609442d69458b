"""Canonical annotation records: every benchmark format is read into one of these two forms.

`QARecord` covers the multiple-choice benchmarks (NExT-QA, STAR, How2QA, TVQA, VLEP and the synthetic
world); `MomentRecord` covers moment retrieval (QVHighlights), used to pre-train the Localizer (paper §3.3).
Stored as jsonl (or parquet when the file name ends in .parquet); `write_records` is atomic. A record checks
its field types when built, so a file's `"answer": "abc"` is an error naming the file and line, never a value
that later code coerces or trips over.
"""
from __future__ import annotations

import json
import math
import numbers
import operator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar, Union

import pandas as pd
import pyarrow

from sevila.atomic import atomic_path, atomic_write_text
from sevila.errors import UserError

Window = tuple[float, float]


class AnnotationError(UserError, ValueError):
    """A malformed annotation or record file; the message names the file, the row/line and the problem."""

    def __init__(self, path: str | Path, where: str | None, problem: str):
        self.path = Path(path)
        self.where = where
        self.problem = problem
        loc = f"{self.path}" + (f", {where}" if where else "")
        super().__init__(f"{loc}: {problem}")


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
        for name in ("dataset", "qid", "video"):
            _check_str(name, getattr(self, name))
        for name in ("question", "qtype", "split"):
            _check_str(name, getattr(self, name), optional=True)
        if isinstance(self.options, (str, bytes)) or not isinstance(self.options, Sequence):
            raise TypeError(f"options must be a list of strings, got {self.options!r}")
        object.__setattr__(self, "options", tuple(self.options))
        for i, opt in enumerate(self.options):
            _check_str(f"options[{i}]", opt)
        object.__setattr__(self, "answer", _index("answer", self.answer))
        _check_number("start", self.start)
        _check_number("end", self.end)
        object.__setattr__(self, "evidence", _windows("evidence", self.evidence))

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
        for name in ("dataset", "qid", "query", "video"):
            _check_str(name, getattr(self, name))
        _check_str("split", self.split, optional=True)
        if _check_number("duration", self.duration, optional=False) is None:
            raise TypeError("duration must be a number, got None")
        object.__setattr__(self, "windows", _windows("windows", self.windows))
        if self.relevant_clip_ids is not None:
            object.__setattr__(self, "relevant_clip_ids", tuple(
                _index(f"relevant_clip_ids[{i}]", c) for i, c in enumerate(_seq("relevant_clip_ids",
                                                                                 self.relevant_clip_ids))))
        if self.saliency_scores is not None:
            object.__setattr__(self, "saliency_scores", tuple(
                tuple(_index(f"saliency_scores[{i}]", x) for x in _seq(f"saliency_scores[{i}]", row))
                for i, row in enumerate(_seq("saliency_scores", self.saliency_scores))))


Record = Union[QARecord, MomentRecord]
R = TypeVar("R", QARecord, MomentRecord)


# ------------------------------------------------------------------------------ field checks (at construction)


def _check_str(name: str, v: Any, optional: bool = False) -> None:
    if not (isinstance(v, str) or (optional and v is None)):
        raise TypeError(f"{name} must be a string{' or null' if optional else ''}, got {v!r}")


def _index(name: str, v: Any) -> int | None:
    """An integer (numpy ones included) or None; "abc", 1.5 and true are refused, never coerced."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an integer or null, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer or null, got {v!r}") from None


def _check_number(name: str, v: Any, optional: bool = True) -> Any:
    if (v is None and optional) or (isinstance(v, numbers.Real) and not isinstance(v, bool)):
        return v
    raise TypeError(f"{name} must be a number{' or null' if optional else ''}, got {v!r}")


def _seq(name: str, v: Any) -> Sequence:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise TypeError(f"{name} must be a list, got {v!r}")
    return v


def _windows(name: str, v: Any) -> tuple[Window, ...] | None:
    """[[start, end], ...] in seconds, as float pairs; None stays None."""
    if v is None:
        return None
    out = []
    for i, w in enumerate(_seq(name, v)):
        if len(_seq(f"{name}[{i}]", w)) != 2:
            raise TypeError(f"{name}[{i}] must be a [start, end] pair, got {w!r}")
        out.append(tuple(float(_check_number(f"{name}[{i}]", x, optional=False)) for x in w))
    return tuple(out)


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
        with atomic_path(path) as tmp:
            # Nested lists are stored as JSON strings: parquet cannot hold ragged nested tuples portably.
            df = pd.DataFrame([{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
            df.to_parquet(tmp, index=False)
        return path
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_records(path: str | Path) -> list[Record]:
    """Read records written by `write_records` (an empty file is no records). Every problem is an
    `AnnotationError` naming the file and line or row: not UTF-8, not JSON, a cut-off last line, a JSON array
    instead of JSON Lines, a field of the wrong type, not a parquet file."""
    path = Path(path)
    return _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)


def _read_jsonl(path: Path) -> list[Record]:
    data = path.read_bytes()
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[":
        raise AnnotationError(path, None, "a JSON array, not JSON Lines (canonical records are one JSON object "
                                          "per line; `sevila convert` writes them)")
    lines = data.splitlines(keepends=True)  # bytes split on \n and \r only: a raw U+2028 inside a string stays
    out = []
    for lineno, raw in enumerate(lines, 1):
        where = f"line {lineno}"
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise AnnotationError(path, where, f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"
                                  ) from None
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            cut = lineno == len(lines) and not raw.endswith((b"\n", b"\r"))
            hint = "; the last line is cut off (a truncated or half-written file?)" if cut else ""
            raise AnnotationError(path, where, f"not valid JSON ({e.msg}){hint}") from None
        if not isinstance(d, dict):
            raise AnnotationError(path, where, f"expected one JSON object per line, got {type(d).__name__}")
        out.append(_parse(d, path, where))
    return out


def _read_parquet(path: Path) -> list[Record]:
    try:
        df = pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError) as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise AnnotationError(path, None, f"not a readable parquet file ({' '.join(str(e).split())})") from None
    out = []
    for i, row in enumerate(df.to_dict(orient="records")):
        d = {}
        for k, v in row.items():
            if isinstance(v, str) and v[:1] == "[":
                try:
                    v = json.loads(v)
                except json.JSONDecodeError as e:
                    raise AnnotationError(path, f"row {i}", f"column {k!r}: not valid JSON ({e.msg})") from None
            elif isinstance(v, float):
                # pandas stores an int column with gaps (answer None) as float: undo both.
                v = None if math.isnan(v) else (int(v) if k in _INT_FIELDS and v.is_integer() else v)
            d[k] = v
        # A file mixing QA and moment rows has the union of columns: drop the other kind's empty ones.
        cls = MomentRecord if d.get("query") is not None else QARecord
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names or v is not None}
        out.append(_parse(d, path, f"row {i}"))
    return out


_INT_FIELDS = frozenset({"answer"})


def _parse(d: dict, path: Path, where: str) -> Record:
    try:
        return record_from_dict(d)
    except (TypeError, ValueError) as e:
        raise AnnotationError(path, where, str(e)) from None


def by_qid(records: Sequence[R]) -> dict[str, R]:
    return {r.qid: r for r in records}
