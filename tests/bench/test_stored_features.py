"""bench/stored_features.py runs end to end on a few clips and measures what it says: a reference per clip adds no
memory, held features add every clip's float32 tensor."""
from __future__ import annotations

import json

from bench.stored_features import main


def test_the_bench_measures_held_and_stored_items(tmp_path):
    out = tmp_path / "stored.json"
    result = main(["--clips", "8", "--n-frames", "8", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["clip_mb_float32"] == round(8 * 257 * 256 * 4 / 1e6, 2)  # 8 frames x 257 tokens x 256 wide
    rss = result["rss_added_mb"]
    assert rss["held_expected"] == round(8 * 8 * 257 * 256 * 4 / 1e6, 1)
    assert rss["stored"] < 0.5 * rss["held_expected"] <= rss["held"] * 1.5  # references only vs every tensor
    assert set(result["batch_read_ms"]) == {"held", "stored"} and result["stored_read_share_of_a_localizer_step"] > 0
