"""QVHighlights (Lei et al., NeurIPS 2021, Moment-DETR): `highlight_{train,val,test}_release.jsonl`.

`{qid:int, query, duration, vid:"<ytid>_<start>_<end>", relevant_clip_ids:[int], saliency_scores:[[3 ints]],
relevant_windows:[[s, e], ...]}`; the test release has only `qid, query, duration, vid` and loads with
`windows=None` (unlabelled, never "no relevant moment"). SeViLA pre-trains the Localizer on these windows
(paper §3.3: a frame is positive iff its time lies in a relevant window). Clip ids and saliency scores (one
row per 2 s clip) are kept for the highlight-detection metrics. qid = the integer qid as a string, so the
official prediction files (keyed by the same integer) match by `str(qid)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sevila.data.annotations import (
    AnnotationError, check_video_id, iter_json_records, parse_seconds, require_id, require_str, split_from_name,
)
from sevila.data.records import MomentRecord

DATASET = "qvhighlights"


def parse_windows(value: Any, path: Path, where: str, qid: str) -> tuple[tuple[float, float], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise AnnotationError(path, where, f"record {qid!r}: relevant_windows must be a list of [start, end]")
    out = []
    for w in value:
        if not isinstance(w, list) or len(w) != 2:
            raise AnnotationError(path, where, f"record {qid!r}: bad window {w!r} (expected [start, end])")
        s = parse_seconds(w[0], path, where, f"window {w!r} start")
        e = parse_seconds(w[1], path, where, f"window {w!r} end")
        if s is None or e is None or s > e:
            raise AnnotationError(path, where, f"record {qid!r}: bad window {w!r} (need finite 0 <= start <= end)")
        out.append((s, e))
    return tuple(out)


def _int_list(value: Any, key: str, path: Path, where: str, qid: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise AnnotationError(path, where, f"record {qid!r}: {key} must be a list of integers, got {value!r}")
    return tuple(value)


def read_qvhighlights(path: str | Path) -> list[MomentRecord]:
    path = Path(path)
    split = split_from_name(path)
    out: list[MomentRecord] = []
    for where, d in iter_json_records(path):
        qid = require_id(d, "qid", path, where)
        duration = parse_seconds(d.get("duration"), path, where, "duration")
        if duration is None or duration <= 0:
            raise AnnotationError(path, where, f"record {qid!r}: bad duration {d.get('duration')!r}")
        clip_ids = d.get("relevant_clip_ids")
        scores = d.get("saliency_scores")
        clip_ids_t = None if clip_ids is None else _int_list(clip_ids, "relevant_clip_ids", path, where, qid)
        scores_t = None
        if scores is not None:
            if not isinstance(scores, list):
                raise AnnotationError(path, where, f"record {qid!r}: saliency_scores must be a list of lists")
            scores_t = tuple(_int_list(s, "saliency_scores row", path, where, qid) for s in scores)
        if clip_ids_t is not None and scores_t is not None and len(clip_ids_t) != len(scores_t):
            raise AnnotationError(
                path, where, f"record {qid!r}: {len(clip_ids_t)} relevant_clip_ids but {len(scores_t)} saliency_scores rows"
            )
        out.append(
            MomentRecord(
                dataset=DATASET,
                qid=qid,
                query=require_str(d, "query", path, where),
                video=check_video_id(d.get("vid"), path, where, qid),
                duration=duration,
                windows=parse_windows(d.get("relevant_windows"), path, where, qid),
                relevant_clip_ids=clip_ids_t,
                saliency_scores=scores_t,
                split=split,
            )
        )
    return out
