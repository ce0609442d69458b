"""Data validation with Great Expectations 1.x: suites defined in code over the canonical records.

Each check is an Expectation over a pandas frame derived from the records (one row per question, one row per
window, one row per (video, split) pair), so the report names the failing rows by qid. `sevila validate` writes
the report as JSON and exits non-zero when any expectation fails.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from sevila.data.records import MomentRecord, QARecord, Record, read_records
from sevila.io import atomic_write_json

# Options per question in each benchmark's official files (VLEP: two future events).
EXPECTED_OPTIONS = {"nextqa": 5, "star": 4, "how2qa": 4, "tvqa": 5, "vlep": 2}
# Datasets whose records carry no question text.
NO_QUESTION = {"vlep"}


@dataclass(frozen=True)
class Check:
    """One expectation over one derived frame; `frame` is 'questions', 'windows' or 'splits'."""

    name: str
    frame: str
    expectation: object


@dataclass
class CheckResult:
    name: str
    success: bool
    evaluated: int
    failing: list[str] = field(default_factory=list)  # qids (or videos) of failing rows

    def to_dict(self) -> dict:
        return {"expectation": self.name, "success": self.success, "evaluated": self.evaluated,
                "n_failing": len(self.failing), "failing": self.failing}


@dataclass
class ValidationReport:
    results: list[CheckResult]
    n_records: int

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    def to_dict(self) -> dict:
        return {"success": self.success, "n_records": self.n_records,
                "n_failed": sum(not r.success for r in self.results),
                "expectations": [r.to_dict() for r in self.results]}


def question_frame(records: Iterable[Record], split_of: Mapping[int, str], videos: Path | None) -> pd.DataFrame:
    """One row per record with the columns the expectations read."""
    rows = []
    readable = functools.lru_cache(maxsize=None)(lambda v: video_readable(videos, v))  # once per video
    for i, r in enumerate(records):
        row = {"qid": r.qid, "dataset": r.dataset, "video": r.video, "split": r.split or split_of.get(i, "")}
        if isinstance(r, QARecord):
            row |= {"kind": "qa", "n_options": len(r.options),
                    "expected_options": EXPECTED_OPTIONS.get(r.dataset, len(r.options)),
                    "answer": r.answer, "needs_question": r.dataset not in NO_QUESTION,
                    "question_len": len((r.question or "").strip()), "duration": None}
        else:
            row |= {"kind": "moment", "n_options": None, "expected_options": None, "answer": None,
                    "needs_question": True, "question_len": len(r.query.strip()), "duration": r.duration}
        row["video_readable"] = readable(r.video) if videos is not None else True
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("n_options", "expected_options", "answer", "duration"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def window_frame(records: Iterable[Record]) -> pd.DataFrame:
    """One row per window: moment relevant windows (bounded by the duration) and QA clip windows."""
    rows = []
    for r in records:
        if isinstance(r, MomentRecord):
            for s, e in r.windows or ():
                rows.append({"qid": r.qid, "start": s, "end": e, "duration": r.duration})
        elif r.has_window:
            rows.append({"qid": r.qid, "start": r.start, "end": r.end, "duration": None})
        if isinstance(r, QARecord):
            for s, e in r.evidence or ():
                rows.append({"qid": r.qid, "start": s, "end": e, "duration": None})
    df = pd.DataFrame(rows, columns=["qid", "start", "end", "duration"])
    return df.astype({"start": float, "end": float, "duration": float})


def split_frame(qdf: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (video, split): a video id appearing twice here sits in two splits."""
    pairs = qdf[["video", "split"]].drop_duplicates()
    return pairs.assign(qid=pairs["video"] + "@" + pairs["split"])


def video_readable(root: Path, video_id: str) -> bool:
    """The video exists inside `root` and every packet demuxes (a truncated file fails here, while a
    frame reader would only notice if a sampled frame fell in the lost part)."""
    from sevila.data.video import VideoError, resolve_video_path, verify_video

    try:
        n_frames, _fps = verify_video(resolve_video_path(root, video_id))
        return n_frames > 0
    except (VideoError, OSError):
        return False


def build_checks() -> list[Check]:
    import great_expectations as gx

    E = gx.expectations
    return [
        Check("option_count", "questions", E.ExpectColumnPairValuesToBeEqual(
            column_A="n_options", column_B="expected_options", ignore_row_if="either_value_is_missing")),
        Check("answer_not_negative", "questions", E.ExpectColumnValuesToBeBetween(column="answer", min_value=0)),
        Check("answer_in_range", "questions", E.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="n_options", column_B="answer", ignore_row_if="either_value_is_missing")),
        Check("question_not_empty", "questions", E.ExpectColumnValuesToBeBetween(
            column="question_len", min_value=1, row_condition="needs_question == True", condition_parser="pandas")),
        Check("video_readable", "questions", E.ExpectColumnValuesToBeInSet(column="video_readable", value_set=[True])),
        Check("duration_positive", "questions", E.ExpectColumnValuesToBeBetween(
            column="duration", min_value=0, strict_min=True, row_condition="kind == 'moment'",
            condition_parser="pandas")),
        Check("qid_unique", "questions", E.ExpectColumnValuesToBeUnique(column="qid")),
        Check("window_start_not_negative", "windows", E.ExpectColumnValuesToBeBetween(column="start", min_value=0)),
        Check("window_start_before_end", "windows", E.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="end", column_B="start")),
        Check("window_inside_duration", "windows", E.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="duration", column_B="end", or_equal=True, ignore_row_if="either_value_is_missing")),
        Check("video_in_one_split", "splits", E.ExpectColumnValuesToBeUnique(column="video")),
    ]


def validate_records(splits: Mapping[str, Sequence[Record]], videos: Path | None = None) -> ValidationReport:
    """Run every check over the records of all splits together (so cross-split leaks are seen)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network here, and none wanted
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    records: list[Record] = []
    split_of: dict[int, str] = {}
    for name, recs in splits.items():
        for r in recs:
            split_of[len(records)] = name
            records.append(r)
    qdf = question_frame(records, split_of, videos)
    frames = {"questions": qdf, "windows": window_frame(records), "splits": split_frame(qdf)}

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("sevila")
    results = []
    for check in build_checks():
        df = frames[check.frame]
        if df.empty:
            results.append(CheckResult(check.name, True, 0))
            continue
        batch_def = source.add_dataframe_asset(check.name).add_batch_definition_whole_dataframe("all")
        batch = batch_def.get_batch(batch_parameters={"dataframe": df})
        res = batch.validate(check.expectation, result_format="COMPLETE")
        bad_rows = res.result.get("unexpected_index_list") or []
        failing = sorted({str(df.loc[_row_label(i), "qid"]) for i in bad_rows})
        results.append(CheckResult(check.name, bool(res.success), int(res.result.get("element_count", len(df))),
                                   failing))
    return ValidationReport(results, len(records))


def _row_label(idx):
    # GE reports index labels (wrapped in a dict for some expectation kinds).
    if isinstance(idx, dict):
        idx = next(iter(idx.values()))
    return idx


def validate_files(files: Sequence[str | Path], videos: str | Path | None = None) -> ValidationReport:
    """Validate canonical record files; each file is one split (named by its stem)."""
    splits = {Path(f).stem: read_records(f) for f in files}
    return validate_records(splits, Path(videos) if videos is not None else None)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="validate canonical record files with Great Expectations")
    p.add_argument("files", nargs="+", help="canonical record files (.jsonl/.parquet); one split per file")
    p.add_argument("--videos", help="video root: checks that every record's video file is present")
    p.add_argument("--report", default="-", help="JSON report path ('-' prints it)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    import json

    report = validate_files(args.files, args.videos)
    payload = report.to_dict()
    if args.report == "-":
        print(json.dumps(payload, indent=2))
    else:
        atomic_write_json(args.report, payload)
    for r in report.results:
        if not r.success:
            shown = ", ".join(r.failing[:5]) + (" ..." if len(r.failing) > 5 else "")
            print(f"FAILED {r.name}: {len(r.failing)} row(s): {shown}", file=__import__("sys").stderr)
    return 0 if report.success else 1
