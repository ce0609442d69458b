"""Stage `prepare`: the canonical records of `dataset`. A real benchmark's official files are read as they are
(sevila.data.benchmarks); the synthetic world (the embedded default) is generated, then read back the same way.

The world is written in the official NExT-QA csv and QVHighlights jsonl formats, so it passes through the same
readers as the real benchmarks (sevila.data.annotations); each question's ground-truth event span is joined in
as `evidence`, which `keyframe_in_span` scores against later.

Outputs under `paths.processed`: `{split}.jsonl` (QA records), `moments_{split}.jsonl` (moment records) and
`summary.json` (counts per split).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sevila.atomic import atomic_write_json
from sevila.config import Benchmark, Config
from sevila.data.annotations import count_unlabelled, read_annotations
from sevila.data.benchmarks import prepare_benchmark
from sevila.data.records import QARecord, write_records
from sevila.synthetic.world import generate_world


def read_spans(path: Path) -> dict[str, tuple[float, float]]:
    spans = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            row = json.loads(line)
            s, e = row["span"]
            if not s < e:
                raise ValueError(f"{path}:{lineno}: span {row['span']} of {row['qid']!r} is empty")
            spans[row["qid"]] = (float(s), float(e))
    return spans


def with_evidence(records: list[QARecord], spans: dict[str, tuple[float, float]], split: str, src: Path):
    out = []
    for r in records:
        if r.qid not in spans:
            raise ValueError(f"{src}: question {r.qid!r} has no ground-truth span in spans.jsonl")
        out.append(dataclasses.replace(r, split=split, evidence=(spans[r.qid],)))
    return out


#: What a real benchmark run writes into `paths.world`: DVC tracks that folder as prepare's output whatever the
#: dataset (dvc.yaml cannot branch on it) and empties it before the stage runs, so the note says why no world is there.
NO_WORLD = "no_world.json"
NO_WORLD_WHY = "a real benchmark runs: nothing is generated (README, Real benchmarks)"


def run(cfg: Config) -> dict:
    if cfg.dataset.real:
        summary = prepare_benchmark(cfg)
        atomic_write_json(Path(cfg.paths.world) / NO_WORLD, {"dataset": cfg.dataset.value, "why": NO_WORLD_WHY})
        return summary
    world, processed = Path(cfg.paths.world), Path(cfg.paths.processed)
    w = cfg.world
    generate_world(world, n_videos=w.videos, seed=w.seed, fps=w.fps, size=w.size)

    spans = read_spans(world / "spans.jsonl")
    video_map = world / "nextqa" / "map_vid_vidorID.json"
    summary: dict = {"dataset": Benchmark.NEXTQA.value, "splits": {}}  # the format the world's QA is written in
    for split in cfg.prepare.splits:
        qa_src = world / "nextqa" / f"{split}.csv"
        qa = with_evidence(read_annotations(Benchmark.NEXTQA, qa_src, video_map=video_map), spans, split, qa_src)
        moments = [dataclasses.replace(m, split=split) for m in read_annotations(
            Benchmark.QVHIGHLIGHTS, world / "qvhighlights" / f"highlight_{split}_release.jsonl")]
        write_records(processed / f"{split}.jsonl", qa)
        write_records(processed / f"moments_{split}.jsonl", moments)
        summary["splits"][split] = {
            "questions": len(qa), "videos": len({r.video for r in qa}), "moments": len(moments),
            "unlabelled": count_unlabelled(qa),
        }
    summary["questions"] = sum(s["questions"] for s in summary["splits"].values())
    atomic_write_json(processed / "summary.json", summary)
    return summary

