"""Data validation with Great Expectations 1.x: suites defined in code over the canonical records.

Each check is an Expectation over a pandas frame derived from the records (one row per question, one row per
window, one row per (video, split) pair), so the report names the failing rows by qid, and by the source (file
or split) each row came from. `sevila validate` reports every file it was given, keyed by its path, writes the
report as JSON and exits 1 when an expectation fails; an unreadable file (empty, not UTF-8, cut off, a JSON array,
a wrong field type such as `"answer": "abc"`) is one error line naming the file and line, exit 2.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import pandas as pd

from sevila.atomic import atomic_write_json
from sevila.data.records import MomentRecord, QARecord, Record, read_records
from sevila.errors import UserError

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
    failing: list[str] = field(default_factory=list)  # qids (or video@split) of failing rows
    by_source: dict[str, list[str]] = field(default_factory=dict)  # the same, per source with failing rows

    def to_dict(self) -> dict:
        return {"expectation": self.name, "success": self.success, "evaluated": self.evaluated,
                "n_failing": len(self.failing), "failing": self.failing, "by_source": self.by_source}


@dataclass
class ValidationReport:
    results: list[CheckResult]
    n_records: int
    sources: dict[str, int] = field(default_factory=dict)  # source (file path or split) -> its record count

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    def failures_of(self, source: str) -> dict[str, list[str]]:
        """expectation -> failing rows of one source."""
        return {r.name: r.by_source[source] for r in self.results if source in r.by_source}

    def to_dict(self) -> dict:
        return {"success": self.success, "n_records": self.n_records,
                "n_failed": sum(not r.success for r in self.results),
                "sources": {s: {"n_records": n, "success": not self.failures_of(s), "failing": self.failures_of(s)}
                            for s, n in self.sources.items()},
                "expectations": [r.to_dict() for r in self.results]}


#: Where records' videos are: one folder, one folder per record `dataset`, or None (not checked).
VideoRoots = Union[Path, Mapping[str, Path], None]


def root_of(videos: Path | Mapping[str, Path], dataset: str) -> Path:
    if isinstance(videos, Mapping):
        if dataset not in videos:
            raise UserError(f"no video folder for records of dataset {dataset!r} (folders: {sorted(videos)})")
        return Path(videos[dataset])
    return Path(videos)


QUESTION_COLUMNS = ["qid", "source", "dataset", "video", "split", "kind", "n_options", "expected_options", "answer",
                    "needs_question", "question_len", "duration", "video_readable"]


def question_frame(records: Iterable[Record], source_of: Sequence[str], split_of: Mapping[str, str],
                   videos: VideoRoots) -> pd.DataFrame:
    """One row per record with the columns the expectations read; `source_of[i]` names record i's source and
    `split_of` a source's split (for records that carry none). `videos`: one folder for every record, or one per
    record `dataset` (a real benchmark's QA and QVHighlights' moments live in different folders)."""
    rows = []
    readable = functools.lru_cache(maxsize=None)(lambda d, v: video_readable(root_of(videos, d), v))  # once each
    for i, r in enumerate(records):
        src = source_of[i]
        row = {"qid": r.qid, "source": src, "dataset": r.dataset, "video": r.video, "split": r.split or split_of[src]}
        if isinstance(r, QARecord):
            row |= {"kind": "qa", "n_options": len(r.options),
                    "expected_options": EXPECTED_OPTIONS.get(r.dataset, len(r.options)),
                    "answer": r.answer, "needs_question": r.dataset not in NO_QUESTION,
                    "question_len": len((r.question or "").strip()), "duration": None}
        else:
            row |= {"kind": "moment", "n_options": None, "expected_options": None, "answer": None,
                    "needs_question": True, "question_len": len(r.query.strip()), "duration": r.duration}
        row["video_readable"] = readable(r.dataset, r.video) if videos is not None else True
        rows.append(row)
    # Records check their field types when built (sevila.data.records), so these columns are numbers or None;
    # to_numeric only turns None into NaN, which the pair expectations skip.
    df = pd.DataFrame(rows, columns=QUESTION_COLUMNS)
    for col in ("n_options", "expected_options", "answer", "duration"):
        df[col] = pd.to_numeric(df[col])
    return df


def window_frame(records: Iterable[Record], source_of: Sequence[str]) -> pd.DataFrame:
    """One row per window: moment relevant windows (bounded by the duration) and QA clip windows."""
    rows = []
    for r, src in zip(records, source_of):
        if isinstance(r, MomentRecord):
            for s, e in r.windows or ():
                rows.append({"qid": r.qid, "source": src, "start": s, "end": e, "duration": r.duration})
        elif r.has_window:
            rows.append({"qid": r.qid, "source": src, "start": r.start, "end": r.end, "duration": None})
        if isinstance(r, QARecord):
            for s, e in r.evidence or ():
                rows.append({"qid": r.qid, "source": src, "start": s, "end": e, "duration": None})
    df = pd.DataFrame(rows, columns=["qid", "source", "start", "end", "duration"])
    return df.astype({"start": float, "end": float, "duration": float})


def split_frame(qdf: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (video, split): a video id appearing twice here sits in two splits. `source` lists
    the sources holding the pair (so a leak is reported under every file it is in)."""
    pairs = qdf.groupby(["video", "split"], sort=False)["source"].agg(lambda s: sorted(set(s))).reset_index()
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


def validate_records(sources: Mapping[str, Sequence[Record]], videos: VideoRoots = None, *,
                     split_names: Mapping[str, str] | None = None) -> ValidationReport:
    """Run every check over the records of all sources together (so cross-split leaks are seen).

    `sources` maps a name (a split, or a file path) to its records; a record that carries no split of its own
    is in the split `split_names[name]` (default: the name itself)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network here, and none wanted
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    records: list[Record] = []
    source_of: list[str] = []
    for name, recs in sources.items():
        records += recs
        source_of += [name] * len(recs)
    split_of = {name: (split_names or {}).get(name, name) for name in sources}
    qdf = question_frame(records, source_of, split_of, videos)
    frames = {"questions": qdf, "windows": window_frame(records, source_of), "splits": split_frame(qdf)}

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
        bad = df.loc[[_row_label(i) for i in res.result.get("unexpected_index_list") or []]]
        by_source: dict[str, set[str]] = {}
        for qid, src in zip(bad["qid"], bad["source"]):
            for s in ([src] if isinstance(src, str) else src):
                by_source.setdefault(s, set()).add(str(qid))
        results.append(CheckResult(check.name, bool(res.success), int(res.result.get("element_count", len(df))),
                                   sorted(set(map(str, bad["qid"]))),
                                   {s: sorted(q) for s, q in sorted(by_source.items())}))
    return ValidationReport(results, len(records), {name: len(recs) for name, recs in sources.items()})


def _row_label(idx):
    # GE reports index labels (wrapped in a dict for some expectation kinds).
    if isinstance(idx, dict):
        idx = next(iter(idx.values()))
    return idx


def validate_files(files: Sequence[str | Path], videos: str | Path | None = None) -> ValidationReport:
    """Validate canonical record files together; each is reported under its path as given, and records that
    carry no split are in the split named by their file's stem (a/val.jsonl and b/val.jsonl are both 'val')."""
    paths = [Path(f) for f in files]
    for i, p in enumerate(paths):
        for q in paths[:i]:
            if p.exists() and q.exists() and os.path.samefile(p, q):
                raise UserError(f"{p} and {q} are the same file: give each file once")
    sources = {}
    for p in paths:
        sources[str(p)] = read_records(p)
        if not sources[str(p)]:
            raise UserError(f"{p}: no records (an empty file): nothing to validate")
    return validate_records(sources, Path(videos) if videos is not None else None,
                            split_names={str(p): p.stem for p in paths})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="validate canonical record files with Great Expectations")
    p.add_argument("files", nargs="+", help="canonical record files (.jsonl/.parquet); each is reported under its "
                                            "path; records without a split are in the split named by the file stem")
    p.add_argument("--videos", help="video root: checks that every record's video file is present")
    p.add_argument("--report", default="-", help="JSON report path ('-' prints it)")
    p.set_defaults(func=_cli_validate)


def _cli_validate(args: argparse.Namespace) -> int:
    report = validate_files(args.files, args.videos)
    payload = report.to_dict()
    if args.report == "-":
        print(json.dumps(payload, indent=2))
    else:
        atomic_write_json(args.report, payload)
    for source, n in report.sources.items():
        failures = report.failures_of(source)
        print(f"{'FAILED' if failures else 'ok'} {source}: {n} records", file=sys.stderr)
        for name, rows in failures.items():
            shown = ", ".join(rows[:5]) + (" ..." if len(rows) > 5 else "")
            print(f"  FAILED {name}: {len(rows)} row(s): {shown}", file=sys.stderr)
    return 0 if report.success else 1
