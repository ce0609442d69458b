"""A real benchmark into canonical records (stage `prepare` when `dataset` is not `synth`): the official annotation
files of `datasets.<name>` read through the readers of sevila.data (never anything generated), each record's video
located in the benchmark's official folder layout, and each video's path, length and file identity written down.

Official layouts (SeViLA's loader, `lavis/datasets/datasets/mc_video_vqa_datasets.py`: `<vis_root>/<video>.mp4`):
- NExT-QA: the csv's video id goes through `map_vid_vidorID.json` to `<dir>/<id>` (sevila.data.nextqa), so the
  file is `<videos>/<dir>/<id>.mp4`;
- STAR, How2QA, TVQA, QVHighlights: `<videos>/<video>.mp4`, the question's clip being its start/end window;
- VLEP: `<videos>/<vid_name>.mp4` for YouTube clips (their name holds a `:`), and the TV clips' `vid_name` less its
  `_ep` suffix, as SeViLA's loader reads them.
A record's `video` becomes that file's id under the folder (no extension), so every later stage resolves it the same
way (sevila.data.video.resolve_video_path, which keeps an annotation's id from escaping the folder).

Outputs (beside `{split}.jsonl` / `moments_{split}.jsonl`): `videos.jsonl`, one line per video (benchmark, id,
path, n_frames, fps, duration, size, mtime_ns): the stand-in for the video folders, which DVC does not hash; and
`skipped.json` when `prepare.bad_video` is `skip` and videos were missing (each skipped question named).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sevila.atomic import atomic_write_json, atomic_write_text
from sevila.config import BadVideoPolicyName, Benchmark, Config
from sevila.data.annotations import count_unlabelled, read_annotations
from sevila.data.records import AnnotationError, MomentRecord, Record, write_records
from sevila.data.video import SkipLog, VideoError, probe_video, resolve_video_path
from sevila.errors import UserError

VIDEOS_FILE = "videos.jsonl"
SKIPPED_FILE = "skipped.json"
VLEP_TV_SUFFIX = "_ep"


class MissingVideo(UserError):
    """A record whose video is not in the benchmark's folder (or not a usable file); names annotation and path."""


def video_file_id(dataset: Benchmark, video: str) -> str:
    """The file id (relative to the benchmark's video folder, no extension) of a record's video id."""
    if dataset is Benchmark.VLEP and ":" not in video and video.endswith(VLEP_TV_SUFFIX):
        return video[: -len(VLEP_TV_SUFFIX)]
    return video


@dataclass(frozen=True)
class Source:
    """One official annotation file and what it feeds."""

    dataset: Benchmark
    split: str
    path: Path
    videos: Path
    moments: bool


MOMENT_SPLITS = ("train", "val")  # the QVHighlights splits Localizer pre-training reads


def sources(cfg: Config) -> list[Source]:
    """Every annotation file `prepare.splits` needs, each checked to be set: the QA benchmark's, and QVHighlights'
    (the Localizer's pre-training moments: train and val always, any other split only when its file is set).
    Raised before anything is read or written."""
    out = []
    for bench, moments in ((cfg.dataset, False), (Benchmark.QVHIGHLIGHTS, True)):
        entry = cfg.datasets[bench]
        if entry.videos is None:
            raise UserError(f"datasets.{bench.value}.videos is not set: the folder of its videos (official layout)")
        for split in cfg.prepare.splits:
            path = entry.annotations.get(split)
            if path is None and moments and split not in MOMENT_SPLITS:
                continue  # QVHighlights only feeds pre-training: a QA split needs no moments of its own (issue 24)
            if path is None:
                why = ("pretrain_localizer trains and validates on QVHighlights' train and val moments" if moments
                       else f"prepare.splits has {split!r}")
                raise UserError(f"datasets.{bench.value}.annotations.{split} is not set ({why}): name the official "
                                "file" + ("" if moments else ", or drop the split from prepare.splits"))
            out.append(Source(Benchmark(bench.value), split, Path(path), Path(entry.videos), moments))
    return out


def read_source(cfg: Config, src: Source) -> list[Record]:
    """The file's records in file order, stamped with the pipeline split and their video's file id; a labelled split
    whose file lost a label is refused (`check_labelled`)."""
    video_map = cfg.datasets.nextqa.video_map if src.dataset is Benchmark.NEXTQA else None
    records = read_annotations(src.dataset, src.path, video_map=video_map)
    check_labelled(src, records, cfg.datasets[src.dataset].unlabelled)
    return [dataclasses.replace(r, split=src.split, video=video_file_id(src.dataset, r.video)) for r in records]


def check_labelled(src: Source, records: Sequence[Record], unlabelled: Sequence[str]) -> None:
    """Every question of a labelled split has its answer, every query of a labelled QVHighlights split at least one
    relevant window (a blank cell or `relevant_windows: []` would train on nothing and pass silently)."""
    if src.split in unlabelled:
        return
    for i, r in enumerate(records, 1):
        lost = not r.windows if isinstance(r, MomentRecord) else r.answer is None
        if lost:
            what = "no relevant window (relevant_windows is empty)" if isinstance(r, MomentRecord) else "no answer"
            raise AnnotationError(src.path, f"record {i} ({r.qid!r})", f"{what} in split {src.split!r}, which is "
                                  f"labelled; only datasets.{src.dataset.value}.unlabelled ({list(unlabelled)}) "
                                  "may lack labels")


@dataclass(frozen=True)
class VideoEntry:
    dataset: str
    video: str
    path: str
    n_frames: int
    fps: float
    duration: float
    size: int
    mtime_ns: int


def locate(src: Source, records: Sequence[Record], found: dict[tuple[str, str], VideoEntry | VideoError],
           policy: BadVideoPolicyName, skipped: SkipLog) -> list[Record]:
    """The records whose video is in `src.videos` and opens; `found` caches each video's entry (or its error).
    A bad video stops here under `fail`, naming the annotation file, the record and the path; under `skip` each of
    its records is written down in `skipped` and left out (never substituted)."""
    kept = []
    for i, r in enumerate(records, 1):
        key = (src.dataset.value, r.video)
        if key not in found:
            try:
                path = resolve_video_path(src.videos, r.video)
                n, fps = probe_video(path)
                st = path.stat()
                found[key] = VideoEntry(src.dataset.value, r.video, str(path), n, fps, n / fps, st.st_size,
                                        st.st_mtime_ns)
            except VideoError as e:
                found[key] = e
        entry = found[key]
        if isinstance(entry, VideoEntry):
            kept.append(r)
        elif policy is BadVideoPolicyName.FAIL:
            raise MissingVideo(f"{src.path}, record {i} ({r.qid!r}): video {r.video!r} under {src.videos}: "
                               f"{entry.reason} (prepare.bad_video: skip leaves such questions out)")
        else:
            skipped.add(r.qid, r.video, entry.kind, detail=f"{src.path}, record {i}: {entry.reason}")
    return kept


def prepare_benchmark(cfg: Config) -> dict:
    """Read, locate and check everything first; only then write (so a bad file or video loses nothing)."""
    found: dict[tuple[str, str], VideoEntry | VideoError] = {}
    skipped = SkipLog()
    outputs: dict[str, list[Record]] = {}
    left_out: dict[str, int] = {}
    for src in sources(cfg):
        records = read_source(cfg, src)
        kept = locate(src, records, found, cfg.prepare.bad_video, skipped)
        outputs[f"moments_{src.split}" if src.moments else src.split] = kept
        left_out[src.split] = left_out.get(src.split, 0) + len(records) - len(kept)
    processed = Path(cfg.paths.processed)
    summary: dict = {"dataset": cfg.dataset.value, "splits": {}}
    for split in cfg.prepare.splits:
        qa, moments = outputs[split], outputs.get(f"moments_{split}", [])  # none: QVHighlights' file unset
        write_records(processed / f"{split}.jsonl", qa)
        write_records(processed / f"moments_{split}.jsonl", moments)
        summary["splits"][split] = {
            "questions": len(qa), "videos": len({r.video for r in qa}), "moments": len(moments),
            "unlabelled": count_unlabelled(qa), "skipped": left_out[split],
        }
    videos = [e for e in found.values() if isinstance(e, VideoEntry)]
    atomic_write_text(processed / VIDEOS_FILE,
                      "".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in sorted(
                          videos, key=lambda e: (e.dataset, e.video))))
    if len(skipped):
        skipped.write(processed / SKIPPED_FILE)
    else:
        (processed / SKIPPED_FILE).unlink(missing_ok=True)
    summary["questions"] = sum(s["questions"] for s in summary["splits"].values())
    summary["videos"] = len(videos)
    summary["skipped"] = len(skipped)
    atomic_write_json(processed / "summary.json", summary)
    return summary
