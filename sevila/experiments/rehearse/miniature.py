"""A miniature of one benchmark in its official form: real annotation excerpts under the official file names, and a
small generated video under each real video id, in the official folder layout.

Annotations. Every file is an excerpt of a real official file (sevila/data/realdata, or any official file given),
copied unit for unit: a CSV row or a JSON-lines line keeps its bytes, a JSON-array element is written back with
`json.dumps` defaults. The excerpts hold no train file for any QA benchmark and no answers on most test splits,
so the miniature fills its splits by one rule (`SPLIT_RULE`, printed in the summary):
- train and val both come from the benchmark's labelled excerpt, split by VIDEO: its videos in order of first
  appearance alternate train, val, train, ... (so no question is trained and evaluated on, `validate`'s "no video
  in two splits" holds, and each split sees most question types); the evaluation runs on val;
- test is the official test excerpt (its first few videos), answers as released (none for TVQA, VLEP, STAR);
- QVHighlights keeps its own train / val / test files (their first few videos each).
Which record belongs to which video is read by the real readers (sevila.data.annotations), so a file they cannot
read is refused here with their message.

STAR is the one exception to "copied": its raw excerpts hold two questions (both Interaction), too few for its four
types, so its miniature is SeViLA's converted STAR val/test excerpt (`sevila_data/star`, 40 + 20 real questions,
every type) written back in STAR's raw format by `star_from_sevila` (the inverse of SeViLA's notebook: the fields
the readers and the notebook use; no situation graphs or programs). Given `--labelled`/`--test`, the real raw STAR
files are copied like every other benchmark's.

Videos. `<videos>/<video id>.mp4`, where the id is what the benchmark's annotation names: NExT-QA's
`map_vid_vidorID.json` value (`<dir>/<id>`), STAR's `video_id`, How2QA's YouTube id, TVQA's `vid_name`, VLEP's
`vid_name` less the `_ep` of TV clips (`video_file`), QVHighlights' `vid`. Each video lasts until one second after
the latest `end` of its annotations (QVHighlights: its `duration`; no window at all: `NO_WINDOW_SECONDS`), at `FPS`
frames per second (QVHighlights `MOMENT_FPS`) and `SIZE` pixels square: a colour gradient that drifts over time,
different per video (the content means nothing; the tiny model is random).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sevila.atomic import atomic_write_json, atomic_write_text
from sevila.config import Benchmark
from sevila.data.annotations import SourceFormat, iter_json_records, read_annotations
from sevila.data.nextqa import MAP_NAME, load_video_map
from sevila.data.records import AnnotationError, MomentRecord, QARecord, Record
from sevila.synthetic.render import write_mp4

FPS = 2  # every window of the excerpts spans a frame at 2 fps (at 1 fps two VLEP windows would fall back)
MOMENT_FPS = 1  # QVHighlights' windows are whole 2 s clips
SIZE = 32
NO_WINDOW_SECONDS = 8  # NExT-QA and QVHighlights-free records sample the whole video: any short video will do
TAIL_SECONDS = 1  # past the latest annotated end, so int(end * fps) lies inside the video
MAX_TEST_VIDEOS = 3
MAX_MOMENT_VIDEOS = {"train": 4, "val": 2, "test": 2}

SPLIT_RULE = ("train + val = the labelled excerpt split by video (alternating in order of first appearance); "
              f"test = the first {MAX_TEST_VIDEOS} videos of the test excerpt; QVHighlights = the first "
              f"{MAX_MOMENT_VIDEOS['train']}/{MAX_MOMENT_VIDEOS['val']}/{MAX_MOMENT_VIDEOS['test']} videos of its "
              "train/val/test files")


def star_from_sevila(rec: dict) -> dict:
    """A SeViLA-format STAR record back in STAR's raw form (SeViLA's notebook turned `choices[i].choice` into
    `a<i>` and the answer text into its index; this undoes that). The test split has no answer and gets none."""
    n = int(rec["num_option"])
    raw = {"question_id": rec["qid"], "question": rec["question"], "video_id": rec["video"],
           "start": rec["start"], "end": rec["end"]}
    if rec.get("answer") is not None:
        raw["answer"] = rec[f"a{rec['answer']}"]
    raw["choices"] = [{"choice_id": i, "choice": rec[f"a{i}"]} for i in range(n)]
    return raw


@dataclass(frozen=True)
class Excerpt:
    """An excerpt file under the excerpts root, and how it becomes the official form (STAR: `star_from_sevila`)."""

    path: str
    fmt: SourceFormat = SourceFormat.OFFICIAL
    rebuild: Callable[[dict], dict] | None = None


@dataclass(frozen=True)
class Spec:
    """Where a benchmark's excerpts are and the official names its miniature's files take."""

    dataset: Benchmark
    labelled: Excerpt  # excerpt with answers -> train + val
    test: Excerpt | None  # the test excerpt -> test
    names: dict[str, str]  # split -> official file name in the miniature
    video_map: str | None = None  # NExT-QA's map_vid_vidorID.json


_STAR = {"fmt": SourceFormat.SEVILA_JSON, "rebuild": star_from_sevila}
SPECS: dict[Benchmark, Spec] = {
    Benchmark.NEXTQA: Spec(Benchmark.NEXTQA, Excerpt("nextqa/val.csv"), Excerpt("nextqa/test.csv"),
                         {"train": "train.csv", "val": "val.csv", "test": "test.csv"},
                         video_map=f"nextqa/{MAP_NAME}"),
    Benchmark.STAR: Spec(Benchmark.STAR, Excerpt("sevila_data/star/val.json", **_STAR),
                       Excerpt("sevila_data/star/test.json", **_STAR),
                       {"train": "STAR_train.json", "val": "STAR_val.json", "test": "STAR_test.json"}),
    Benchmark.HOW2QA: Spec(Benchmark.HOW2QA, Excerpt("how2qa/how2QA_val_release.csv"),
                         Excerpt("how2qa/how2QA_test_public_release.csv"),
                         {"train": "how2QA_train_release.csv", "val": "how2QA_val_release.csv",
                          "test": "how2QA_test_public_release.csv"}),
    Benchmark.TVQA: Spec(Benchmark.TVQA, Excerpt("tvqa/tvqa_plus_val.json"), Excerpt("tvqa/tvqa_test_public.jsonl"),
                       {"train": "tvqa_plus_train.json", "val": "tvqa_plus_val.json",
                        "test": "tvqa_test_public.jsonl"}),
    Benchmark.VLEP: Spec(Benchmark.VLEP, Excerpt("vlep/vlep_dev_release.jsonl"), Excerpt("vlep/vlep_test_release.jsonl"),
                       {"train": "vlep_train_release.jsonl", "val": "vlep_dev_release.jsonl",
                        "test": "vlep_test_release.jsonl"}),
}
MOMENTS = {"train": "qvhighlights/highlight_train_release.jsonl", "val": "qvhighlights/highlight_val_release.jsonl",
           "test": "qvhighlights/highlight_test_release.jsonl"}
QA_BENCHMARKS: tuple[Benchmark, ...] = tuple(SPECS)


# ------------------------------------------------------------------------------------------ annotation units


@dataclass(frozen=True)
class AnnotationFile:
    """An official annotation file as units (one per record, in file order) with its records: the unit is what is
    copied (a CSV row's or JSON line's exact text; a JSON array's element), the record says what it is about."""

    path: Path
    header: str | None  # a CSV's header line (NExT-QA), kept verbatim
    units: tuple[str | dict, ...]
    records: tuple[Record, ...]

    @property
    def is_array(self) -> bool:
        return bool(self.units) and isinstance(self.units[0], dict)

    def write(self, path: Path, keep: Sequence[int], rebuild: Callable[[dict], dict] | None = None) -> Path:
        """The units at `keep` (file order) under `path`, in the source's own layout (JSON elements through
        `rebuild` where given)."""
        if self.is_array:
            return atomic_write_text(path, json.dumps([(rebuild or dict)(self.units[i]) for i in keep]))
        return atomic_write_text(path, (self.header or "") + "".join(self.units[i] for i in keep))


def read_units(dataset: Benchmark, path: Path, fmt: SourceFormat = SourceFormat.OFFICIAL,
               video_map: Path | None = None) -> AnnotationFile:
    """Read `path` through the real reader and split its text into the units those records came from."""
    records = tuple(read_annotations(dataset, path, video_map=video_map, fmt=fmt))
    text = path.read_text(encoding="utf-8")
    header = None
    if path.suffix.lower() == ".csv":
        lines = [line for line in text.splitlines(keepends=True) if line.strip()]
        if dataset is Benchmark.NEXTQA:
            header, lines = lines[0], lines[1:]
        units: list = [line if line.endswith("\n") else line + "\n" for line in lines]
        for i, line in enumerate(units):  # a row must be one line: a quoted field with a line break would split it
            if len(next(csv.reader([line]))) != len(next(csv.reader([header or units[0]]))):
                raise AnnotationError(path, f"data row {i + 1}", "a row spans several lines; cannot excerpt it")
    elif text.lstrip("\ufeff \t\r\n").startswith("[") or len(records) == 1 and "\n" in text.strip():
        units = [rec for _, rec in iter_json_records(path)]  # a JSON array (or one pretty-printed object)
    else:
        units = [line if line.endswith("\n") else line + "\n" for line in text.splitlines(keepends=True)
                 if line.strip()]
    if len(units) != len(records):
        raise AnnotationError(path, None, f"{len(records)} records in {len(units)} rows/lines; cannot excerpt it")
    return AnnotationFile(path, header, tuple(units), records)


def videos_in_order(records: Sequence[Record]) -> list[str]:
    return list(dict.fromkeys(r.video for r in records))


def split_by_video(records: Sequence[Record]) -> tuple[list[int], list[int]]:
    """(train, val) unit indices: the videos, in order of first appearance, alternate train, val, train, ..."""
    order = {v: i for i, v in enumerate(videos_in_order(records))}
    train = [i for i, r in enumerate(records) if order[r.video] % 2 == 0]
    return train, [i for i, r in enumerate(records) if order[r.video] % 2 == 1]


def first_videos(records: Sequence[Record], n: int) -> list[int]:
    keep = set(videos_in_order(records)[:n])
    return [i for i, r in enumerate(records) if r.video in keep]


# ------------------------------------------------------------------------------------------------- videos


def clip_frames(video_id: str, n_frames: int, size: int = SIZE) -> np.ndarray:
    """uint8 [n, size, size, 3]: a two-colour horizontal gradient sliding once across the video, its colours a
    pure function of the video id (deterministic, different per video)."""
    seed = int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:8], "big")
    a, b = np.random.default_rng(seed).integers(0, 256, size=(2, 3)).astype(np.float32)
    x = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = np.linspace(0.0, 1.0, n_frames, dtype=np.float32)
    phase = (x[None, :] + t[:, None]) % 1.0  # [n, size]
    row = a * (1.0 - phase[..., None]) + b * phase[..., None]  # [n, size, 3]
    return np.broadcast_to(row[:, None], (n_frames, size, size, 3)).round().astype(np.uint8)


def video_file(dataset: Benchmark, video: str) -> str:
    """The file (relative to the video folder, no extension) of an annotation's video id in the official layout:
    the id itself, but VLEP's TV clips are stored without the `_ep` their `vid_name` ends in (SeViLA's loader,
    `mc_video_vqa_datasets.py`: a `vid_name` with no `:` is a TV clip, read as `vid_name[:-3]`)."""
    if dataset is Benchmark.VLEP and ":" not in video and video.endswith("_ep"):
        return video[:-3]
    return video


def seconds_needed(dataset: Benchmark, records: Sequence[Record]) -> dict[str, float]:
    """Per video file, how long it must be to hold every annotation that names it."""
    need: dict[str, float] = {}
    for r in records:
        if isinstance(r, MomentRecord):
            s = float(r.duration)
        else:
            s = (r.end + TAIL_SECONDS) if r.end is not None else NO_WINDOW_SECONDS
        f = video_file(dataset, r.video)
        need[f] = max(need.get(f, 0.0), s)
    return need


def write_videos(root: Path, need: dict[str, float], fps: int = FPS, size: int = SIZE) -> list[Path]:
    """`<root>/<video id>.mp4` for every id, `ceil(seconds * fps)` frames long."""
    written = []
    for video, seconds in sorted(need.items()):
        path = root / f"{video}.mp4"
        if not path.resolve().is_relative_to(root.resolve()):  # the readers refuse such ids; never write outside
            raise AnnotationError(path, None, f"video id {video!r} leaves the video folder {root}")
        written.append(write_mp4(path, clip_frames(video, max(1, math.ceil(seconds * fps)), size), fps))
    return written


# ---------------------------------------------------------------------------------------------- miniature


@dataclass(frozen=True)
class SplitFile:
    split: str
    path: Path
    source: Path
    questions: int
    videos: int
    labelled: int


@dataclass(frozen=True)
class Miniature:
    """What was laid out: the benchmark's annotation files and video folder, QVHighlights' likewise."""

    dataset: Benchmark
    annotations: dict[str, SplitFile]
    videos: Path
    video_map: Path | None
    moments: dict[str, SplitFile]
    moment_videos: Path
    n_videos: int
    texts: tuple[str, ...]  # every question, option and query: what a tokenizer for them must know
    notes: tuple[str, ...] = ()

    def summary(self) -> list[str]:
        lines = [f"split rule: {SPLIT_RULE}", *self.notes]
        for name, files in ((self.dataset.value, self.annotations), ("qvhighlights", self.moments)):
            for f in files.values():
                lines.append(f"{name} {f.split}: {f.path} ({f.questions} records, {f.videos} videos, "
                             f"{f.labelled} labelled) from {f.source}")
        lines.append(f"videos: {self.n_videos} mp4 under {self.videos} and {self.moment_videos} "
                     f"({FPS} fps, QVHighlights {MOMENT_FPS} fps, {SIZE}x{SIZE})")
        return lines


def _split_file(split: str, path: Path, source: Path, records: Sequence[Record]) -> SplitFile:
    labelled = sum((r.answer is not None) if isinstance(r, QARecord) else (r.windows is not None) for r in records)
    return SplitFile(split, path, source, len(records), len(videos_in_order(records)), labelled)


def lay_out(dataset: Benchmark | str, out: Path, source: Path, labelled: Path | None = None,
            test: Path | None = None, video_map: Path | None = None) -> Miniature:
    """Write the miniature of `dataset` under `out/<dataset>/` and QVHighlights' under `out/qvhighlights/`:
    `annotations/` (official file names), `videos/` (official layout). `source` is the excerpts root;
    `labelled`/`test`/`video_map` replace its files with any official file of that benchmark (copied as is)."""
    spec = SPECS[Benchmark(dataset)]
    lab_src = Excerpt(str(labelled)) if labelled is not None else dataclasses.replace(
        spec.labelled, path=str(source / spec.labelled.path))
    test_src = Excerpt(str(test)) if test is not None else (
        dataclasses.replace(spec.test, path=str(source / spec.test.path)) if spec.test else None)
    vmap_src = video_map or (source / spec.video_map if spec.video_map else None)
    bench, qvh = out / spec.dataset.value, out / Benchmark.QVHIGHLIGHTS.value
    ann = bench / "annotations"
    vmap = ann / MAP_NAME if vmap_src else None
    lab = read_units(spec.dataset, Path(lab_src.path), lab_src.fmt, vmap_src)
    train, val = split_by_video(lab.records)
    parts = [("train", lab_src, lab, train), ("val", lab_src, lab, val)]
    if test_src is not None:
        tst = read_units(spec.dataset, Path(test_src.path), test_src.fmt, vmap_src)
        parts.append(("test", test_src, tst, first_videos(tst.records, MAX_TEST_VIDEOS)))
    files, records = {}, []
    for split, excerpt, src, keep in parts:
        if not keep:
            raise AnnotationError(src.path, None, f"too few videos to fill the {split} split (need at least 2)")
        recs = [src.records[i] for i in keep]
        written = src.write(ann / spec.names[split], keep, excerpt.rebuild)
        files[split] = _split_file(split, written, src.path, recs)
        records += recs
    if vmap is not None:  # the map's entries for the miniature's videos, in the map's order
        wanted = {Path(r.video).name for r in records}
        atomic_write_json(vmap, {k: v for k, v in load_video_map(vmap_src).items() if k in wanted}, indent=None)
    moments, moment_records = {}, []
    for split, rel in MOMENTS.items():
        src = read_units(Benchmark.QVHIGHLIGHTS, source / rel)
        keep = first_videos(src.records, MAX_MOMENT_VIDEOS[split])
        recs = [src.records[i] for i in keep]
        moments[split] = _split_file(split, src.write(qvh / "annotations" / Path(rel).name, keep), src.path, recs)
        moment_records += recs
    n = len(write_videos(bench / "videos", seconds_needed(spec.dataset, records)))
    n += len(write_videos(qvh / "videos", seconds_needed(Benchmark.QVHIGHLIGHTS, moment_records), MOMENT_FPS))
    texts = [t for r in records for t in (r.question or "", *r.options)] + [m.query for m in moment_records]
    notes = tuple(f"{e.path} is SeViLA's converted form: written back in the official raw form "
                  f"({e.rebuild.__name__})" for _, e, _, _ in parts if e.rebuild is not None)
    return Miniature(spec.dataset, files, bench / "videos", vmap, moments, qvh / "videos", n, tuple(texts),
                     tuple(dict.fromkeys(notes)))
