"""The disk the ViT feature cache takes per benchmark, under each cache setting (README "Disk and GPU memory").

    python bench/cache_disk.py [--params params.yaml] [--budget-gb 100] [--records data/processed/<benchmark>/*.jsonl]

One cached clip is n_frames x 257 tokens x 1408 channels x 2 bytes (ViT-g/14 at 224 px: (224/14)^2 patches + CLS;
fp16, or bf16 for an entry past fp16's range: 2 bytes either way) = 0.72 MB per frame, 23.2 MB at 32 frames
(`sevila.inference.features.entry_bytes`, the sizes read from `sevila.model.configuration.sevila_flant5xl`). A clip is
a cache key: a video
and the window its questions sample from, so a benchmark whose questions carry their own start/end (STAR, How2QA,
TVQA, VLEP) has up to one clip per question, and NExT-QA and QVHighlights (whole videos) one per video.

What the chain caches (params.yaml): every split at `frames.n_frames` (pseudo-labels, refinement, fine-tuning and
most ablation variants), plus the evaluation split once more for each other `n_frames` the variants use (the frames
study: 8, 16 and 64). Settings: `frames.cache_budget_gb: null` takes all of it; a budget B takes at most B (least
recently used clips are recomputed when needed again); `frames.cache: null` takes nothing on disk (the ViT runs on
every clip in every stage: per 32-frame clip 16.7 TFLOP, README "Cost at real size").

The published counts below are questions or videos per split as the benchmarks' papers and release files give them
(the STAR/How2QA/TVQA/VLEP ones count questions, an upper bound on distinct clips); `--records` counts the distinct
clips of your canonical records exactly (`sevila.inference.features.group_by_clip`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sevila.config import load_config  # noqa: E402
from sevila.data.records import read_records  # noqa: E402
from sevila.inference.features import entry_bytes, group_by_clip  # noqa: E402
from sevila.model.configuration import sevila_flant5xl  # noqa: E402

GB = 1e9


@dataclass(frozen=True)
class Benchmark:
    name: str
    clips: dict[str, int]  # split -> cached clips (videos, or questions when each has its own window)
    eval_split: str  # the split the ablation variants are evaluated on
    unit: str  # what `clips` counts
    source: str


BENCHMARKS = (
    Benchmark("nextqa", {"train": 3870, "val": 570, "test": 1000}, "test", "videos",
              "NExT-QA paper; val/test = videos of the release csv files"),
    Benchmark("star", {"train": 45731, "val": 7098, "test": 7377}, "val", "questions (own window)",
              "STAR paper; val/test = records of SeViLA's converted files (test has no answers)"),
    Benchmark("how2qa", {"train": 38218, "val": 2852, "test": 2937}, "val", "questions (own window)",
              "HERO: 44,007 questions in all; val/test = rows of the release csv files, train the rest"),
    Benchmark("tvqa", {"train": 122039, "val": 15253, "test": 15253}, "val", "questions (own window)",
              "TVQA paper (test = public + challenge)"),
    Benchmark("vlep", {"train": 20142, "dev": 4392, "test": 4192}, "dev", "questions (own window)",
              "VLEP paper: 28,726 in all; dev/test = records of the release jsonl files, train the rest"),
    Benchmark("qvhighlights", {"train": 7218, "val": 1550, "test": 1542}, "val", "queries (whole videos)",
              "QVHighlights paper; Localizer pre-training only (frames.n_frames, no frames study)"),
)


def cache_bytes(clips: dict[str, int], eval_split: str, n_frames: int, study_frames: set[int],
                per_frame: int) -> tuple[int, int]:
    """(bytes of every split at n_frames, bytes of the eval split at each other n_frames of the variants)."""
    base = sum(clips.values()) * n_frames * per_frame
    extra = clips[eval_split] * sum(f for f in study_frames if f != n_frames) * per_frame
    return base, extra


def table(params: str | Path = REPO / "params.yaml", budget_gb: float = 100.0) -> list[dict]:
    cfg = load_config(params)
    real = sevila_flant5xl()
    per_frame = entry_bytes(1, real.n_vision_tokens, real.vision["hidden_size"])
    study = {v.n_frames for v in cfg.evaluate.variants.values()}
    rows = []
    for b in BENCHMARKS:
        base, extra = cache_bytes(b.clips, b.eval_split, cfg.frames.n_frames,
                                  set() if b.name == "qvhighlights" else study, per_frame)
        rows.append({"benchmark": b.name, "clips": b.clips, "unit": b.unit, "source": b.source,
                     "at_n_frames_gb": base / GB, "frames_study_gb": extra / GB, "unlimited_gb": (base + extra) / GB,
                     "budget_gb": min(budget_gb, (base + extra) / GB), "no_cache_gb": 0.0})
    return rows


def count_clips(paths: list[str]) -> dict[str, int]:
    """Distinct clips (cache keys at one n_frames) of canonical records files."""
    return {str(p): len(group_by_clip(read_records(p))) for p in paths}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--budget-gb", type=float, default=100.0, help="the budget column's frames.cache_budget_gb")
    ap.add_argument("--records", nargs="*", default=[], help="canonical records files to count distinct clips of")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    real = sevila_flant5xl()
    per_frame = entry_bytes(1, real.n_vision_tokens, real.vision["hidden_size"])
    print(f"one frame: {real.n_vision_tokens} x {real.vision['hidden_size']} x 2 B = {per_frame:,} B; one clip at "
          f"{cfg.frames.n_frames} frames: {cfg.frames.n_frames * per_frame / 1e6:.1f} MB")
    print(f"| benchmark | clips (train/val/test) | all splits at {cfg.frames.n_frames} frames | + frames study | "
          f"no budget | budget {args.budget_gb:g} GB | `cache: null` |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in table(args.params, args.budget_gb):
        clips = " / ".join(f"{n:,}" for n in r["clips"].values())
        print(f"| {r['benchmark']} | {clips} {r['unit']} | {r['at_n_frames_gb']:,.0f} GB | "
              f"{r['frames_study_gb']:,.0f} GB | {r['unlimited_gb']:,.0f} GB | {r['budget_gb']:,.0f} GB | 0 |")
    for path, n in count_clips(args.records).items():
        print(f"{path}: {n:,} distinct clips = {n * cfg.frames.n_frames * per_frame / GB:.2f} GB at "
              f"{cfg.frames.n_frames} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
