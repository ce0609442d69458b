"""`sevila convert`: one benchmark annotation file -> canonical records (jsonl/parquet) or SeViLA's JSON.

    sevila convert DATASET INPUT [--video-map FILE] [--from official|sevila-json] --out FILE|DIR
                   [--format canonical|sevila-json]

Reading is `read_annotations`; writing is `write_records` (canonical: jsonl, or parquet when OUT ends in
.parquet) or `write_sevila_json`. Both writes are atomic. An existing directory as OUT receives
`<INPUT stem>.jsonl` (canonical) or `<INPUT stem>.json` (sevila-json). OUT may never be a file that is read
(INPUT or the video map, however spelt: through `..`, a symlink or a hard link): the official file would be
replaced by its conversion. The one-line summary counts records, unlabelled ones (test splits) and clip-window
records whose window is unknown (TVQA `NaN-NaN`), so none of them pass unnoticed. Exit status: 0 on success,
2 on a bad input file or OUT (one line naming the file, line and problem).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from sevila.config import Benchmark
from sevila.data.annotations import SourceFormat, count_missing_windows, count_unlabelled, read_annotations
from sevila.data.records import write_records
from sevila.data.sevila_json import write_sevila_json
from sevila.errors import UserError


class TargetFormat(str, Enum):
    CANONICAL = "canonical"
    SEVILA_JSON = "sevila-json"

    @property
    def suffix(self) -> str:
        """The file suffix written into an output directory."""
        return ".json" if self is TargetFormat.SEVILA_JSON else ".jsonl"


@dataclass(frozen=True)
class ConvertSummary:
    dataset: Benchmark
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
    dataset: Benchmark | str,
    input: str | Path,
    out: str | Path,
    video_map: str | Path | None = None,
    source: SourceFormat | str = SourceFormat.OFFICIAL,
    target: TargetFormat | str = TargetFormat.CANONICAL,
) -> ConvertSummary:
    """Read `input` (a `source`-format file of `dataset`) and write it to `out` in the `target` format."""
    dataset, source, target = Benchmark(dataset), SourceFormat(source), TargetFormat(target)
    input = Path(input)
    out = output_path(input, out, target, read=[p for p in (input, video_map) if p is not None])
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


def output_path(input: Path, out: str | Path, target: TargetFormat, read: list[str | Path]) -> Path:
    """The file to write: `out`, or `<out>/<input stem><suffix>` when `out` is a directory or ends in a path
    separator (a folder that does not exist yet is made: `--out converted/`). Refuses a file that is also read
    (`read`): compared by device and inode, so another spelling, a symlink or a hard link of the input is caught
    as well as the same string."""
    folder = str(out).endswith(("/", os.sep))  # before Path() drops the trailing separator
    out = Path(out)
    if folder:
        out.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        out = out / f"{input.stem}{target.suffix}"
    if out.exists():
        for src in map(Path, read):
            if src.exists() and os.path.samefile(src, out):
                raise UserError(f"--out {out} is the input file {src}: refusing to replace it with its conversion; "
                                "choose another output path")
    return out


def _cli_convert(args: argparse.Namespace) -> int:
    print(convert(args.dataset, args.input, args.out, args.video_map, args.source, args.target).line())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a benchmark annotation file to canonical records or SeViLA JSON",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("dataset", choices=[d.value for d in Benchmark if d.real], help="benchmark of INPUT")
    p.add_argument("input", type=Path, help="annotation file to read")
    p.add_argument("--video-map", type=Path, default=None, help="NExT-QA map_vid_vidorID.json (default: next to INPUT)")
    p.add_argument(
        "--from", dest="source", choices=[f.value for f in SourceFormat], default=SourceFormat.OFFICIAL.value,
        help="format of INPUT (default: official)",
    )
    p.add_argument("--out", required=True,  # a str: Path() would drop the trailing / that says "a folder"
                   help="file to write (canonical: .jsonl or .parquet), or a directory (existing, or any path "
                        "ending in /) to write <INPUT stem>.jsonl (canonical) / <INPUT stem>.json (sevila-json) "
                        "into; never INPUT itself")
    p.add_argument(
        "--format", dest="target", choices=[f.value for f in TargetFormat], default=TargetFormat.CANONICAL.value,
        help="format of OUT (default: canonical)",
    )
    p.set_defaults(func=_cli_convert)
