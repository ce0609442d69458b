"""STAR (Wu et al., NeurIPS 2021): the official `STAR_{train,val,test}.json`.

A JSON list of `{question_id, question, video_id, start, end, answer (text), choices [{choice_id, choice, ...}],
situations, question_program}`; a single object (like the repo's `sample_question.json`) is accepted too.
As in SeViLA's notebook, options are the choices in list order and the answer index is the choice whose text
equals the `answer` text. An answer text that matches no choice is an error naming the question, never a silent
default; the test split has no `answer` and loads unlabelled. The question type (Interaction, Sequence,
Prediction, Feasibility: STAR's headline averages them) is the `question_id` prefix. Text is kept verbatim
(STAR already ends questions with `?` and choices with `.`).
"""
from __future__ import annotations

from pathlib import Path

from sevila.data.annotations import (
    AnnotationError, check_video_id, clip_window, iter_json_records, parse_seconds, require_str, split_from_name,
)
from sevila.data.records import QARecord

DATASET = "star"


def qtype_of(qid: str) -> str:
    """`Interaction_T1_13` -> `Interaction`."""
    return qid.split("_", 1)[0]


def answer_index(answer: str, options: tuple[str, ...], qid: str, path: Path, where: str) -> int:
    hits = [i for i, o in enumerate(options) if o == answer]
    if not hits:
        raise AnnotationError(path, where, f"question {qid!r}: answer {answer!r} is not among its choices {list(options)}")
    if len(hits) > 1:
        raise AnnotationError(path, where, f"question {qid!r}: answer {answer!r} matches several choices {hits}")
    return hits[0]


def read_star(path: str | Path) -> list[QARecord]:
    path = Path(path)
    split = split_from_name(path)
    out: list[QARecord] = []
    for where, d in iter_json_records(path):
        qid = require_str(d, "question_id", path, where)
        choices = d.get("choices")
        if not isinstance(choices, list) or not choices:
            raise AnnotationError(path, where, f"question {qid!r}: 'choices' must be a non-empty list")
        options = []
        for c in choices:
            if not isinstance(c, dict) or not isinstance(c.get("choice"), str):
                raise AnnotationError(path, where, f"question {qid!r}: each choice needs a 'choice' text")
            options.append(c["choice"])
        options_t = tuple(options)
        answer = d.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise AnnotationError(path, where, f"question {qid!r}: answer must be the choice text, got {answer!r}")
        start, end = clip_window(
            parse_seconds(d.get("start"), path, where, "start"), parse_seconds(d.get("end"), path, where, "end")
        )
        out.append(
            QARecord(
                dataset=DATASET,
                qid=qid,
                video=check_video_id(d.get("video_id"), path, where, qid),
                question=require_str(d, "question", path, where),
                options=options_t,
                answer=None if answer is None else answer_index(answer, options_t, qid, path, where),
                start=start,
                end=end,
                qtype=qtype_of(qid),
                split=split,
            )
        )
    return out
