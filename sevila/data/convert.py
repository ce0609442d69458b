"""`sevila convert`: one benchmark annotation file -> canonical records (jsonl/parquet) or SeViLA's JSON.

    sevila convert DATASET INPUT [--video-map FILE] [--from official|sevila-json] --out FILE
                   [--format canonical|sevila-json]

Reading is `read_annotations`; writing is `write_records` (canonical: jsonl, or parquet when OUT ends in
.parquet) or `write_sevila_json`. Both writes are atomic. The one-line summary counts records, unlabelled
ones (test splits) and clip-window records whose window is unknown (TVQA `NaN-NaN`), so none of them pass
unnoticed. Exit status: 0 on success, 1 on a bad input file (the message names the file, line and problem).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from sevila.data.annotations import (
    AnnotationError,
    Dataset,
    SourceFormat,
    count_missing_windows,
    count_unlabelled,
    read_annotations,
)
from sevila.data.records import write_records
from sevila.data.sevila_json import write_sevila_json


class TargetFormat(str, Enum):
    CANONICAL = "canonical"
    SEVILA_JSON = "sevila-json"


@dataclass(frozen=True)
class ConvertSummary:
    dataset: Dataset
    source: SourceFormat
    target: TargetFormat
    input: Path
    out: Path
    n_records: int
    n_unlabelled: int
    n_missing_window: int

    def line(self) -> str:
        return (
            f"{self.dataset.value}: {self.n_records} records from {self.input} ({self.source.value}) -> "
            f"{self.out} ({self.target.value}); {self.n_unlabelled} unlabelled, {self.n_missing_window} NaN windows"
        )


def convert(
    dataset: Dataset | str,
    input: str | Path,
    out: str | Path,
    video_map: str | Path | None = None,
    source: SourceFormat | str = SourceFormat.OFFICIAL,
    target: TargetFormat | str = TargetFormat.CANONICAL,
) -> ConvertSummary:
    """Read `input` (a `source`-format file of `dataset`) and write it to `out` in the `target` format."""
    dataset, source, target = Dataset(dataset), SourceFormat(source), TargetFormat(target)
    input, out = Path(input), Path(out)
    records = read_annotations(dataset, input, video_map=video_map, fmt=source)
    if target is TargetFormat.SEVILA_JSON:
        write_sevila_json(out, records, dataset)
    else:
        write_records(out, records)
    return ConvertSummary(
        dataset=dataset,
        source=source,
        target=target,
        input=input,
        out=out,
        n_records=len(records),
        n_unlabelled=count_unlabelled(records),
        n_missing_window=count_missing_windows(records),
    )


def _handle(args: argparse.Namespace) -> int:
    try:
        summary = convert(args.dataset, args.input, args.out, args.video_map, args.source, args.target)
    except (AnnotationError, ValueError, FileNotFoundError) as e:
        print(f"sevila convert: error: {e}", file=sys.stderr)
        return 1
    print(summary.line())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a benchmark annotation file to canonical records or SeViLA JSON",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("dataset", choices=[d.value for d in Dataset], help="benchmark of INPUT")
    p.add_argument("input", type=Path, help="annotation file to read")
    p.add_argument("--video-map", type=Path, default=None, help="NExT-QA map_vid_vidorID.json (default: next to INPUT)")
    p.add_argument(
        "--from", dest="source", choices=[f.value for f in SourceFormat], default=SourceFormat.OFFICIAL.value,
        help="format of INPUT (default: official)",
    )
    p.add_argument("--out", type=Path, required=True, help="file to write (canonical: .jsonl or .parquet)")
    p.add_argument(
        "--format", dest="target", choices=[f.value for f in TargetFormat], default=TargetFormat.CANONICAL.value,
        help="format of OUT (default: canonical)",
    )
    p.set_defaults(func=_handle)
