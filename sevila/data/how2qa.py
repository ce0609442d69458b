"""How2QA (Li et al., EMNLP 2020, HERO): the official `how2QA_{train,val,test_public}_release.csv`.

No header; 7 columns `youtube_id, [start:end], wrong1, wrong2, wrong3, question, CORRECT` (FrozenBiLM reads
them as `vid_id, timesteps, a2, a3, a4, question, a1`). Fields with commas are quoted; the test file has CRLF
endings. Timestamps are seconds in the YouTube video, so `video` is the YouTube id and frames are sampled
inside `[start, end]`.

Option order. The file puts the correct answer last; keeping that (answer always 3) or moving it first (always
0, as some loaders do) gives the model a constant positional tell. Instead the three wrong answers keep their
file order and the correct one is inserted at position `sha256(row) mod 4`, where `row` is the seven parsed
fields joined by U+001F. The position is deterministic (a pure function of the row's content, independent of
Python's hash seed, the file path or row order) and spread evenly over A-D.

qid: `how2qa_<file stem>_<row index>` (0-based over data rows, like SeViLA's `HOW2QA_<i>` which also counts
rows), stable for a given file.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sevila.data.annotations import (
    AnnotationError, check_video_id, clip_window, csv_rows, one_line_rows, parse_seconds, split_from_name,
)
from sevila.data.records import QARecord

DATASET = "how2qa"
N_COLUMNS = 7
N_OPTIONS = 4
_TS = re.compile(r"\[\s*([^:\]]*?)\s*:\s*([^:\]]*?)\s*\]")


def correct_position(fields: list[str], n_options: int = N_OPTIONS) -> int:
    """Where the correct answer goes among the options: a stable hash of the row's fields."""
    digest = hashlib.sha256("\x1f".join(fields).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_options


def parse_timestamps(text: str, path: Path, where: str) -> tuple[float | None, float | None]:
    m = _TS.fullmatch(text.strip())
    if m is None:
        raise AnnotationError(path, where, f"bad timestamp {text!r} (expected '[start:end]' in seconds)")
    start = parse_seconds(m.group(1), path, where, f"timestamp {text!r} start")
    end = parse_seconds(m.group(2), path, where, f"timestamp {text!r} end")
    return clip_window(start, end)


def read_how2qa(path: str | Path) -> list[QARecord]:
    path = Path(path)
    split = split_from_name(path)
    out: list[QARecord] = []
    with csv_rows(path) as reader:
        index = 0
        for where, row in one_line_rows(path, reader):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != N_COLUMNS:
                raise AnnotationError(
                    path, where, f"expected {N_COLUMNS} columns (youtube_id,[start:end],wrong1,wrong2,wrong3,question,correct), got {len(row)}"
                )
            vid, ts, w1, w2, w3, question, correct = row
            qid = f"how2qa_{path.stem}_{index}"
            pos = correct_position(row)
            options = [w1, w2, w3]
            options.insert(pos, correct)
            start, end = parse_timestamps(ts, path, where)
            out.append(
                QARecord(
                    dataset=DATASET,
                    qid=qid,
                    video=check_video_id(vid.strip(), path, where, qid),
                    question=question,
                    options=tuple(options),
                    answer=pos,
                    start=start,
                    end=end,
                    split=split,
                )
            )
            index += 1
    return out
