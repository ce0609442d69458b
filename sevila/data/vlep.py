"""VLEP (Lei et al., EMNLP 2020): `vlep_{train,dev,test}_release.jsonl`, future event prediction.

`{example_id:int, vid_name, ts:[s, e], events:[2 texts], answer:0/1 (absent in test), split}`. There is no
question: `question` is None, and the prompt builders use SeViLA's fixed VLEP wording instead. The two
events are the options. `vid_name` is kept verbatim (TV clips end in `_ep`, YouTube ones contain `:`); mapping
it to a file (SeViLA drops the `_ep` of TV clips) is the video loader's job. qid = example_id as a string;
split = the record's own `split` field, else the one in the file name.
"""
from __future__ import annotations

from pathlib import Path

from sevila.data.annotations import (
    AnnotationError, check_video_id, clip_window, iter_json_records, parse_answer, parse_seconds, require_id,
    split_from_name,
)
from sevila.data.records import QARecord

DATASET = "vlep"


def read_vlep(path: str | Path) -> list[QARecord]:
    path = Path(path)
    file_split = split_from_name(path)
    out: list[QARecord] = []
    for where, d in iter_json_records(path):
        qid = require_id(d, "example_id", path, where)
        events = d.get("events")
        if not isinstance(events, list) or len(events) != 2 or not all(isinstance(e, str) for e in events):
            raise AnnotationError(path, where, f"record {qid!r}: 'events' must be a list of 2 texts, got {events!r}")
        ts = d.get("ts")
        if not isinstance(ts, list) or len(ts) != 2:
            raise AnnotationError(path, where, f"record {qid!r}: bad timestamp {ts!r} (expected [start, end])")
        start, end = clip_window(
            parse_seconds(ts[0], path, where, f"timestamp {ts!r} start"),
            parse_seconds(ts[1], path, where, f"timestamp {ts!r} end"),
        )
        split = d.get("split")
        out.append(
            QARecord(
                dataset=DATASET,
                qid=qid,
                video=check_video_id(d.get("vid_name"), path, where, qid),
                question=None,
                options=tuple(events),
                answer=parse_answer(d.get("answer"), 2, path, where),
                start=start,
                end=end,
                split=split if isinstance(split, str) and split else file_split,
            )
        )
    return out
