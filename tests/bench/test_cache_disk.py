"""bench/cache_disk.py: the disk the feature cache needs per benchmark, from the formula
clips x n_frames x 257 x 1408 x 2 bytes, and the exact count of distinct clips of real records."""
from __future__ import annotations

import math

import pytest

from bench.cache_disk import BENCHMARKS, cache_bytes, count_clips, main, table
from sevila.data.records import QARecord, write_records

FRAME = 257 * 1408 * 2  # ViT-g/14 at 224 px, fp16: 723,712 bytes


def test_the_formula_per_benchmark():
    assert cache_bytes({"train": 3870, "val": 570, "test": 1000}, "test", 32, {8, 16, 32, 64}, FRAME) == (
        5440 * 32 * FRAME, 1000 * (8 + 16 + 64) * FRAME)
    rows = {r["benchmark"]: r for r in table(budget_gb=100.0)}
    assert set(rows) == {b.name for b in BENCHMARKS}
    nextqa = rows["nextqa"]  # the figure: 32 frames x 5,440 videos is over 100 GB
    assert nextqa["at_n_frames_gb"] == pytest.approx(125.983784960)
    assert nextqa["frames_study_gb"] == pytest.approx(63.686656)
    assert nextqa["unlimited_gb"] == pytest.approx(125.983784960 + 63.686656)
    assert nextqa["budget_gb"] == 100.0 and nextqa["no_cache_gb"] == 0.0
    assert rows["qvhighlights"]["frames_study_gb"] == 0.0  # pre-training only, no frames study
    tvqa = rows["tvqa"]
    assert tvqa["unlimited_gb"] == pytest.approx((122039 + 15253 + 15253) * 32 * FRAME / 1e9
                                                 + 15253 * 88 * FRAME / 1e9)


def test_distinct_clips_of_records(tmp_path, capsys):
    recs = [QARecord("star", f"q{i}", video, "q?", ("a", "b"), 0, start, end) for i, (video, start, end) in
            enumerate([("v1", 0.0, 1.0), ("v1", 0.0, 1.0), ("v1", 1.0, 2.0), ("v2", None, None),
                       ("v2", math.nan, math.nan), ("v2", math.nan, math.nan)])]
    path = write_records(tmp_path / "train.jsonl", recs)
    # two questions share one window; a NaN window is written as null, i.e. the whole video, like v2's first one
    assert count_clips([str(path)]) == {str(path): 3}
    assert main(["--records", str(path), "--budget-gb", "50"]) == 0
    out = capsys.readouterr().out
    assert "one clip at 32 frames: 23.2 MB" in out and "| nextqa | 3,870 / 570 / 1,000 videos | 126 GB | 64 GB | " \
        "190 GB | 50 GB | 0 |" in out
    assert f"{path}: 3 distinct clips = {3 * 32 * FRAME / 1e9:.2f} GB" in out
