"""Reading benchmark annotations into canonical records: the dataset/format enums, the shared checks every
reader applies, and the `read_annotations` dispatcher.

One reader module per benchmark (nextqa, star, how2qa, tvqa, vlep, qvhighlights) turns the *official* files
into `QARecord`/`MomentRecord`; `sevila_json` reads and writes the converted JSON that SeViLA's own loader
(`lavis/datasets/datasets/mc_video_vqa_datasets.py`) consumes. All readers fail loudly: an `AnnotationError`
names the file, the row or line, and what is wrong.

Canonical text convention: a record holds the text the official SeViLA pipeline shows the model. That matters
only for NExT-QA, whose raw CSV has no `?`/`.`, which SeViLA's preprocessing notebook appends
(`question + '?'`, `option + '.'`); every other benchmark's text is kept verbatim. Reading the raw file or
SeViLA's converted JSON therefore gives the same records.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import re
from enum import Enum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator, Sequence

from sevila.config.modes import Benchmark
from sevila.data.records import AnnotationError, MomentRecord, QARecord, Record  # AnnotationError: re-exported


class SourceFormat(str, Enum):
    """Which kind of file is read: the benchmark's official release, or SeViLA's converted JSON."""

    OFFICIAL = "official"
    SEVILA_JSON = "sevila-json"


# Short alias, so callers can write `fmt=Format.OFFICIAL`.
Format = SourceFormat


# ----------------------------------------------------------------------------------------------- checks


def check_video_id(video: Any, path: str | Path, where: str, qid: str | None = None) -> str:
    """Return `video` if it is a safe relative id; reject ids that could escape the video root.

    Video ids become `<root>/<id>.mp4` (SeViLA's loader joins them the same way), so an absolute id or a
    `..` part would read outside the data directory. The video loader checks again; this catches it at read time.
    """
    who = f"record {qid!r}: " if qid is not None else ""
    if not isinstance(video, str) or not video.strip():
        raise AnnotationError(path, where, f"{who}video id must be a non-empty string, got {video!r}")
    if "\x00" in video:
        raise AnnotationError(path, where, f"{who}video id {video!r} contains a NUL character")
    posix, win = PurePosixPath(video), PureWindowsPath(video)
    if posix.is_absolute() or win.is_absolute() or win.drive or video.startswith(("/", "\\")):
        raise AnnotationError(path, where, f"{who}video id {video!r} is an absolute path; it must be relative to the video root")
    if ".." in posix.parts or ".." in win.parts:
        raise AnnotationError(path, where, f"{who}video id {video!r} contains a '..' path part; it must stay inside the video root")
    return video


def parse_answer(value: Any, n_options: int, path: str | Path, where: str) -> int | None:
    """Answer index from an int or a digit string (TVQA+ stores `"3"`); None stays None (unlabelled split).

    Never defaults to 0: a test split without answers must stay unlabelled, not become "all answers are A"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AnnotationError(path, where, f"answer must be an integer index, got {value!r}")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*\d+\s*", value):
            raise AnnotationError(path, where, f"answer must be an integer index, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise AnnotationError(path, where, f"answer must be an integer index, got {value!r}")
    if not 0 <= value < n_options:
        raise AnnotationError(path, where, f"answer {value} out of range for {n_options} options")
    return value


def parse_seconds(value: Any, path: str | Path, where: str, what: str = "timestamp") -> float | None:
    """A time in seconds from a number or a numeric string; `NaN` (TVQA) becomes None, so "no window" has one form."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AnnotationError(path, where, f"bad {what} {value!r}: not a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise AnnotationError(path, where, f"bad {what} {value!r}: not a number") from None
    if not isinstance(value, (int, float)):
        raise AnnotationError(path, where, f"bad {what} {value!r}: not a number")
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value) or value < 0:
        raise AnnotationError(path, where, f"bad {what} {value!r}: must be finite and >= 0")
    return value


def clip_window(start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """A window is usable only when both ends are known: one NaN end makes the whole window unknown (None, None)."""
    if start is None or end is None:
        return None, None
    return start, end


def require_id(d: dict, key: str, path: str | Path, where: str) -> str:
    """A record id given as an int or a non-empty string (the files mix both), as a string."""
    raw = d.get(key)
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or str(raw) == "":
        raise AnnotationError(path, where, f"missing or bad {key!r} {raw!r}")
    return str(raw)


def require_str(d: dict, key: str, path: str | Path, where: str) -> str:
    if key not in d:
        raise AnnotationError(path, where, f"missing field {key!r}")
    v = d[key]
    if not isinstance(v, str):
        raise AnnotationError(path, where, f"field {key!r} must be a string, got {type(v).__name__}")
    return v


_SPLIT_TOKENS = ("train", "val", "dev", "test")


def split_from_name(path: str | Path) -> str | None:
    """The split named in a file name (`how2QA_val_release.csv` -> val, `vlep_dev_release` -> dev), else None."""
    for tok in re.split(r"[^0-9A-Za-z]+", Path(path).stem.lower()):
        if tok in _SPLIT_TOKENS:
            return tok
    return None


# ----------------------------------------------------------------------------------------------- CSV files

#: Python's csv module refuses fields over 131072 characters by default (`field_size_limit`); a long question
#: or answer in an official CSV is data, not an attack on memory (the whole file is read anyway).
CSV_FIELD_LIMIT = 2**31 - 1  # the largest a C long takes on every platform


@contextlib.contextmanager
def csv_rows(path: Path) -> Iterator[Any]:
    """A `csv.reader` over a UTF-8 CSV, with no field-size limit while it is read; the process-wide limit is
    restored afterwards, so other csv users keep theirs. `reader.line_num` names the line of each row."""
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            yield reader
    except UnicodeDecodeError as e:  # decoded in blocks: the line is not known, the byte is
        raise AnnotationError(path, None, f"not UTF-8 text (byte {e.object[e.start]:#04x})") from None
    finally:
        csv.field_size_limit(previous)


def one_line_rows(path: Path, reader) -> Iterator[tuple[str, list[str]]]:
    """(where, row) for each row of an official CSV, `where` = "line N" of the row's first line. No official
    benchmark CSV holds a field over several lines, so a row that spans some is a stray quote: it is named on the
    line where the quote opened, not on the line where the csv module finally closed it (issue 24)."""
    while True:
        first = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise AnnotationError(path, f"line {first}", f"not CSV ({e}): an unclosed quote on this line?") from None
        if reader.line_num > first:
            raise AnnotationError(path, f"line {first}", f"a quoted field runs on to line {reader.line_num}: an "
                                                         "unclosed \" on this line (no official CSV field spans lines)")
        yield f"line {first}", row


# ----------------------------------------------------------------------------------------------- JSON files


def iter_json_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield `(where, record)` from a JSON array, a single JSON object, or JSON lines.

    The layout is detected from the contents, not the extension: TVQA ships jsonl while TVQA+ ships one
    array; STAR's `sample_question.json` is a lone object. `where` is "line N" or "record N" (1-based)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AnnotationError(path, None, f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
                              ) from None
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        return
    if stripped[0] == "[":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise AnnotationError(path, f"line {e.lineno}", f"not valid JSON ({e.msg})") from None
        for i, rec in enumerate(data, 1):
            if not isinstance(rec, dict):
                raise AnnotationError(path, f"record {i}", f"expected a JSON object, got {type(rec).__name__}")
            yield f"record {i}", rec
        return
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None  # several objects: JSON lines
    if isinstance(whole, dict):
        # A one-line file is JSON lines with a single record; a pretty-printed object is one record.
        yield ("line 1" if len(stripped.strip().splitlines()) == 1 else "record 1"), whole
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise AnnotationError(path, f"line {lineno}", f"not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise AnnotationError(path, f"line {lineno}", f"expected a JSON object, got {type(rec).__name__}")
        yield f"line {lineno}", rec


# ----------------------------------------------------------------------------------------------- dispatch


def read_annotations(
    dataset: Benchmark | str,
    path: str | Path,
    video_map: str | Path | None = None,
    fmt: SourceFormat | str = SourceFormat.OFFICIAL,
) -> list[QARecord] | list[MomentRecord]:
    """Read one annotation file of `dataset` into canonical records, in file order.

    `video_map` is NExT-QA's `map_vid_vidorID.json` (default: the one next to the CSV); other datasets
    take none. Qids must be unique within the file."""
    # Imported here: the reader modules import this one for the shared checks above.
    from sevila.data import how2qa, nextqa, qvhighlights, sevila_json, star, tvqa, vlep

    dataset, fmt, path = Benchmark(dataset), SourceFormat(fmt), Path(path)
    if not dataset.real:
        raise AnnotationError(path, None, f"{dataset.value} has no annotation format of its own: the synthetic "
                                          "world is written as NExT-QA and QVHighlights files; read them as those")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    if video_map is not None and not (dataset is Benchmark.NEXTQA and fmt is SourceFormat.OFFICIAL):
        raise AnnotationError(video_map, None,
                              f"a video map applies only to official NExT-QA CSVs, not {dataset.value} {fmt.value}")
    if fmt is SourceFormat.SEVILA_JSON:
        records: list = sevila_json.read_sevila_json(dataset, path)
    elif dataset is Benchmark.NEXTQA:
        records = nextqa.read_nextqa(path, video_map)
    else:
        reader = {
            Benchmark.STAR: star.read_star,
            Benchmark.HOW2QA: how2qa.read_how2qa,
            Benchmark.TVQA: tvqa.read_tvqa,
            Benchmark.VLEP: vlep.read_vlep,
            Benchmark.QVHIGHLIGHTS: qvhighlights.read_qvhighlights,
        }[dataset]
        records = reader(path)
    check_unique_qids(records, path)
    return records


def check_unique_qids(records: Sequence[Record], path: str | Path) -> None:
    """Predictions and metrics are keyed by qid, so a repeated qid would silently merge two questions."""
    seen: dict[str, int] = {}
    for i, r in enumerate(records, 1):
        if r.qid in seen:
            raise AnnotationError(path, f"record {i}", f"duplicate qid {r.qid!r} (first seen at record {seen[r.qid]})")
        seen[r.qid] = i


def count_unlabelled(records: Sequence[Record]) -> int:
    """Questions without an answer / queries without relevant windows (test splits)."""
    return sum((r.answer is None) if isinstance(r, QARecord) else (r.windows is None) for r in records)


def count_missing_windows(records: Sequence[Record]) -> int:
    """Records of a clip-window benchmark whose window is unknown (TVQA `NaN-NaN`): these fall back to the
    whole video, and the count is reported rather than hidden."""
    n = 0
    for r in records:
        if isinstance(r, QARecord) and r.dataset in _CLIP_DATASETS and not r.has_window:
            n += 1
    return n


_CLIP_DATASETS = frozenset(d.value for d in Benchmark if d.has_clip_window)
