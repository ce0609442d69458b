"""TVQA (Lei et al., EMNLP 2018) and TVQA+ (Lei et al., ACL 2020).

Two formats of the same kind of question, told apart by the file's contents (not its extension):
- TVQA `tvqa_{train,val,test_public}.jsonl`: one object per line, `{a0..a4, q, qid:int, show_name,
  ts:"<s>-<e>", vid_name, answer_idx:int}`; the test file has no `answer_idx`.
- TVQA+ `tvqa_plus_{train,val}.json`: one JSON array, `answer_idx` a *string* ("3"), `ts` a `[s, e]` list,
  plus a `bbox` dict (not used here) and no `show_name` (all Big Bang Theory).
Each record is normalised field by field, so either layout (or a mix) reads the same.

`ts == "NaN-NaN"` occurs in the real files (3 test records, at least one val record): start/end become None
(SeViLA samples the whole video then), and `count_missing_windows` reports how many. qid = the integer qid as a
string (TVQA+ qids live in the same space); qtype = `show_name` where given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sevila.data.annotations import (
    AnnotationError, check_video_id, clip_window, iter_json_records, parse_answer, parse_seconds, require_id,
    require_str, split_from_name,
)
from sevila.data.records import QARecord

DATASET = "tvqa"


def parse_ts(ts: Any, path: Path, where: str) -> tuple[float | None, float | None]:
    """`"48.62-60.02"` (TVQA) or `[48.62, 60.02]` (TVQA+) -> floats; `"NaN-NaN"` -> (None, None)."""
    if isinstance(ts, str):
        parts = ts.split("-")
        if len(parts) != 2:
            raise AnnotationError(path, where, f"bad timestamp {ts!r} (expected '<start>-<end>')")
    elif isinstance(ts, list):
        parts = ts
        if len(parts) != 2:
            raise AnnotationError(path, where, f"bad timestamp {ts!r} (expected [start, end])")
    else:
        raise AnnotationError(path, where, f"bad timestamp {ts!r} (expected '<start>-<end>' or [start, end])")
    return clip_window(
        parse_seconds(parts[0], path, where, f"timestamp {ts!r} start"),
        parse_seconds(parts[1], path, where, f"timestamp {ts!r} end"),
    )


def options_of(d: dict, path: Path, where: str) -> tuple[str, ...]:
    options = []
    while f"a{len(options)}" in d:
        options.append(require_str(d, f"a{len(options)}", path, where))
    if len(options) < 2:
        raise AnnotationError(path, where, f"expected options a0..a4, found {len(options)}")
    return tuple(options)


def read_tvqa(path: str | Path) -> list[QARecord]:
    path = Path(path)
    split = split_from_name(path)
    out: list[QARecord] = []
    for where, d in iter_json_records(path):
        qid = require_id(d, "qid", path, where)
        if "ts" not in d:
            raise AnnotationError(path, where, f"record {qid!r}: missing field 'ts'")
        options = options_of(d, path, where)
        start, end = parse_ts(d["ts"], path, where)
        show = d.get("show_name")
        out.append(
            QARecord(
                dataset=DATASET,
                qid=qid,
                video=check_video_id(d.get("vid_name"), path, where, qid),
                question=require_str(d, "q", path, where),
                options=options,
                answer=parse_answer(d.get("answer_idx"), len(options), path, where),
                start=start,
                end=end,
                qtype=show if isinstance(show, str) else None,
                split=split,
            )
        )
    return out
