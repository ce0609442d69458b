"""NExT-QA (Xiao et al., CVPR 2021): the official `{train,val,test}.csv` of doc-doc/NExT-QA.

Header `video,frame_count,width,height,question,answer,qid,type,a0..a4`. The CSV's `video` is an int id that
`map_vid_vidorID.json` maps to the on-disk `"<dir>/<id>"`; `qid` is unique only within a video. Records follow
SeViLA's preprocessing notebook (`sevila_data/Data Preprocess.ipynb`), so converting the CSV to SeViLA JSON
reproduces SeViLA's files exactly:
- video = map[video]; qid = `"<type>_<video>_<qid>"` (its prefix is the type code the metrics group by);
- question + `"?"`, each option + `"."` (the raw CSV has neither; the model saw them with);
- record order = CSV row order.
"""
from __future__ import annotations

import json
from pathlib import Path

from sevila.data.annotations import (
    AnnotationError, check_video_id, csv_rows, one_line_rows, parse_answer, split_from_name,
)
from sevila.data.records import QARecord

DATASET = "nextqa"
MAP_NAME = "map_vid_vidorID.json"
REQUIRED = ("video", "question", "qid", "type", "a0", "a1")


def load_video_map(path: str | Path) -> dict[str, str]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: NExT-QA video map not found") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"line {e.lineno}", f"not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise AnnotationError(path, None, 'video map must be a JSON object {"<video>": "<dir>/<video>"}')
    return data


def read_nextqa(path: str | Path, video_map: str | Path | dict[str, str] | None = None) -> list[QARecord]:
    """Read a NExT-QA CSV. `video_map` defaults to `map_vid_vidorID.json` next to the CSV (the official layout)."""
    path = Path(path)
    if video_map is None:
        video_map = path.with_name(MAP_NAME)
        if not video_map.is_file():
            raise FileNotFoundError(f"{path}: NExT-QA needs its video map; pass --video-map (no {MAP_NAME} next to the CSV)")
    vmap = video_map if isinstance(video_map, dict) else load_video_map(video_map)
    split = split_from_name(path)
    out: list[QARecord] = []
    with csv_rows(path) as reader:
        header = next(reader, None)
        if header is None:
            raise AnnotationError(path, None, "empty file (expected a header row)")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise AnnotationError(path, "line 1", f"header lacks column(s) {missing}; got {header}")
        col = {name: i for i, name in enumerate(header)}
        opt_cols = []
        while f"a{len(opt_cols)}" in col:
            opt_cols.append(col[f"a{len(opt_cols)}"])
        for where, row in one_line_rows(path, reader):
            if not row:
                continue
            if len(row) != len(header):
                raise AnnotationError(path, where, f"expected {len(header)} columns, got {len(row)}")
            vid, qtype, raw_qid = row[col["video"]], row[col["type"]], row[col["qid"]]
            if not qtype or not raw_qid:
                raise AnnotationError(path, where, "empty 'type' or 'qid'")
            qid = "_".join([qtype, vid, raw_qid])
            if vid not in vmap:
                raise AnnotationError(path, where, f"record {qid!r}: video {vid!r} is not in the video map")
            options = tuple(row[i] + "." for i in opt_cols)
            raw_answer = row[col["answer"]] if "answer" in col else ""
            out.append(
                QARecord(
                    dataset=DATASET,
                    qid=qid,
                    video=check_video_id(vmap[vid], path, where, qid),
                    question=row[col["question"]] + "?",
                    options=options,
                    answer=parse_answer(raw_answer or None, len(options), path, where),
                    qtype=qtype,
                    split=split,
                )
            )
    return out
