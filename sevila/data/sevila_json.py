"""SeViLA's converted annotation JSON (`sevila_data/<dataset>/{train,val,test}.json`), read and written.

The layout is the one produced by SeViLA's `sevila_data/Data Preprocess.ipynb` and read by its loader
`lavis/datasets/datasets/mc_video_vqa_datasets.py`: one JSON array written with `json.dumps` defaults (no
trailing newline). Per dataset, in key order:
- nextqa: video, num_option, qid (`<type>_<video>_<qid>`), a0..a4, answer, question
- star:   video, num_option, qid (`question_id`), a0..a3, answer, question, start, end (floats)
- how2qa: video, num_option, qid `HOW2QA_<id>`, a0..a3, answer, question, start, end (strings, from `ts.split('-')`)
- tvqa:   as how2qa with `TVQA_<id>` and 5 options; start/end strings that can be `"NaN"`
- vlep:   video, num_option, qid `VLEP_<example_id>`, a0, a1, answer, start, end (floats); no question key
- qvhighlights: video, qid `QVHighlight_<qid>`, query, duration, relevant_windows
Unlabelled splits omit `answer` (as the STAR test conversion does) / `relevant_windows` (as the notebook's QVH
test conversion does).

qid prefixes: SeViLA's loader recognises VLEP and QVHighlights records by the substrings `VLEP` and
`QVHighlight` in the qid, so those prefixes (and `HOW2QA_`/`TVQA_`) are added on writing and removed on
reading; canonical qids are the benchmark's own (VLEP example_id, QVH/TVQA qid). Note the notebook numbers
How2QA/TVQA by *row index*, so reading an official SeViLA file of those gives row-index qids.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from sevila.atomic import atomic_write_text
from sevila.config import Benchmark
from sevila.data.annotations import (
    AnnotationError, check_video_id, clip_window, iter_json_records, parse_answer, parse_seconds, require_str,
    split_from_name,
)
from sevila.data.qvhighlights import parse_windows
from sevila.data.records import MomentRecord, QARecord, Record

QID_PREFIX: dict[Benchmark, str] = {
    Benchmark.HOW2QA: "HOW2QA_",
    Benchmark.TVQA: "TVQA_",
    Benchmark.VLEP: "VLEP_",
    Benchmark.QVHIGHLIGHTS: "QVHighlight_",
}
# Datasets whose SeViLA records carry start/end as strings (the notebook's `ts.split('-')`).
_STRING_TIMES = (Benchmark.HOW2QA, Benchmark.TVQA)


# ----------------------------------------------------------------------------------------------- reading


def _strip_prefix(qid: str, dataset: Benchmark) -> str:
    prefix = QID_PREFIX.get(dataset, "")
    return qid[len(prefix):] if prefix and qid.startswith(prefix) and len(qid) > len(prefix) else qid


def _qa_from_sevila(d: dict, dataset: Benchmark, path: Path, where: str, split: str | None) -> QARecord:
    raw_qid = require_str(d, "qid", path, where)
    qid = _strip_prefix(raw_qid, dataset)
    n = d.get("num_option")
    if n is None:
        n = 0
        while f"a{n}" in d:
            n += 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise AnnotationError(path, where, f"record {raw_qid!r}: bad num_option {d.get('num_option')!r}")
    missing = [f"a{i}" for i in range(n) if f"a{i}" not in d]
    if missing:
        raise AnnotationError(path, where, f"record {raw_qid!r}: num_option is {n} but {missing} are missing")
    options = tuple(require_str(d, f"a{i}", path, where) for i in range(n))
    if dataset is Benchmark.VLEP:
        question = None  # VLEP has no question; SeViLA uses a fixed prompt
    else:
        question = require_str(d, "question", path, where)
    start, end = clip_window(
        parse_seconds(d.get("start"), path, where, "start"), parse_seconds(d.get("end"), path, where, "end")
    )
    qtype = raw_qid.split("_", 1)[0] if dataset in (Benchmark.NEXTQA, Benchmark.STAR) else None
    return QARecord(
        dataset=dataset.value,
        qid=qid,
        video=check_video_id(d.get("video"), path, where, raw_qid),
        question=question,
        options=options,
        answer=parse_answer(d.get("answer"), n, path, where),
        start=start,
        end=end,
        qtype=qtype,
        split=split,
    )


def _moment_from_sevila(d: dict, path: Path, where: str, split: str | None) -> MomentRecord:
    raw_qid = require_str(d, "qid", path, where)
    qid = _strip_prefix(raw_qid, Benchmark.QVHIGHLIGHTS)
    duration = parse_seconds(d.get("duration"), path, where, "duration")
    if duration is None or duration <= 0:
        raise AnnotationError(path, where, f"record {raw_qid!r}: bad duration {d.get('duration')!r}")
    return MomentRecord(
        dataset=Benchmark.QVHIGHLIGHTS.value,
        qid=qid,
        query=require_str(d, "query", path, where),
        video=check_video_id(d.get("video"), path, where, raw_qid),
        duration=duration,
        windows=parse_windows(d.get("relevant_windows"), path, where, raw_qid),
        split=split,
    )


def read_sevila_json(dataset: Benchmark | str, path: str | Path) -> list[QARecord] | list[MomentRecord]:
    """Read a SeViLA-format JSON file of `dataset` into canonical records (split from the file name)."""
    dataset, path = Benchmark(dataset), Path(path)
    split = split_from_name(path)
    if dataset is Benchmark.QVHIGHLIGHTS:
        return [_moment_from_sevila(d, path, where, split) for where, d in iter_json_records(path)]
    return [_qa_from_sevila(d, dataset, path, where, split) for where, d in iter_json_records(path)]


# ----------------------------------------------------------------------------------------------- writing


def _num(x: float) -> int | float:
    """Integral values as ints, as in the source files (QVH `duration: 150`, windows `[70, 110]`)."""
    return int(x) if float(x).is_integer() else x


def _time_str(x: float | None) -> str:
    """SeViLA's How2QA/TVQA times are the pieces of `"<s>-<e>"`: `0`, `48.62`, `NaN`."""
    if x is None or math.isnan(x):
        return "NaN"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def to_sevila_dict(rec: Record, dataset: Benchmark | str) -> dict[str, Any]:
    """One canonical record as SeViLA's converted JSON object (see the module docstring for the layouts)."""
    dataset = Benchmark(dataset)
    if rec.dataset != dataset.value:
        raise ValueError(f"record {rec.qid!r} is from {rec.dataset!r}, not {dataset.value!r}")
    prefix = QID_PREFIX.get(dataset, "")
    if dataset is Benchmark.QVHIGHLIGHTS:
        if not isinstance(rec, MomentRecord):
            raise ValueError(f"record {rec.qid!r}: QVHighlights needs a MomentRecord")
        out: dict[str, Any] = {"video": rec.video, "qid": prefix + rec.qid, "query": rec.query, "duration": _num(rec.duration)}
        if rec.windows is not None:
            out["relevant_windows"] = [[_num(s), _num(e)] for s, e in rec.windows]
        return out
    if not isinstance(rec, QARecord):
        raise ValueError(f"record {rec.qid!r}: {dataset.value} needs a QARecord")
    out = {"video": rec.video, "num_option": len(rec.options), "qid": prefix + rec.qid}
    for i, opt in enumerate(rec.options):
        out[f"a{i}"] = opt
    if rec.answer is not None:
        out["answer"] = rec.answer
    if dataset is not Benchmark.VLEP:
        if rec.question is None:
            raise ValueError(f"record {rec.qid!r}: {dataset.value} needs a question")
        out["question"] = rec.question
    if dataset in _STRING_TIMES:
        out["start"], out["end"] = _time_str(rec.start), _time_str(rec.end)
    elif dataset in (Benchmark.STAR, Benchmark.VLEP) and rec.has_window:
        out["start"], out["end"] = rec.start, rec.end
    return out


def dumps_sevila_json(records: Sequence[Record], dataset: Benchmark | str) -> str:
    """The file's text: `json.dumps` defaults over the list, no trailing newline (as the notebook's `save_json`)."""
    return json.dumps([to_sevila_dict(r, dataset) for r in records])


def write_sevila_json(path: str | Path, records: Sequence[Record], dataset: Benchmark | str) -> Path:
    return atomic_write_text(path, dumps_sevila_json(records, dataset))
