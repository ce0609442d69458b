"""Stored features (issue 9, real size): with a cache folder a stage's items keep a reference into the cache, read
back one batch at a time, so a pass over a split holds one clip's features at once and a training split never
sits in RAM whole. The references read what the tensors were, follow keyframe selection, survive eviction and
refuse a video changed under them."""
from __future__ import annotations

import gc
import os
import shutil
import weakref

import numpy as np
import pytest
import torch

from sevila.stages.common import content_digest, stack
from sevila.data.records import QARecord
from sevila.synthetic.render import write_mp4
from sevila.data.video import VideoError
from sevila.inference.features import FeatureCache, StoredFeatures, iter_clip_features, load_features, take_frames

N = 6  # frames sampled per clip


@pytest.fixture()
def videos(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "videos"
    d.mkdir()
    for name in ("v1", "v2", "v3"):
        write_mp4(d / f"{name}.mp4", rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8), fps=8)
    return d


def _qa(qid: str, video: str) -> QARecord:
    return QARecord("nextqa", qid, video, "what is it", ("a", "b"), 0)


def _records():
    return [_qa(f"q{i}", v) for i, v in enumerate(["v1", "v2", "v3", "v1"])]


def test_items_keep_references_and_read_back_the_same_features(tmp_path, videos, fresh_model):
    cache = FeatureCache(tmp_path / "cache", fresh_model)
    clips = list(iter_clip_features(cache, _records(), videos, N))
    held = {c.clip.video: c.features.clone() for c in clips}
    items = [{"features": c.held} for c in clips]
    assert all(isinstance(it["features"], StoredFeatures) for it in items)
    assert torch.equal(stack(items, "features"), torch.stack([held[v] for v in ("v1", "v2", "v3")]))
    rows = take_frames(items[1]["features"], [4, 1, 5]).take([2, 0])  # keyframes of keyframes: rows 5 and 4
    assert rows.rows == (5, 4) and torch.equal(load_features(rows), held["v2"][[5, 4]])
    assert torch.equal(take_frames(held["v2"], [5, 4]), held["v2"][[5, 4]])  # a held tensor the same way


def test_without_a_cache_folder_items_hold_the_tensor(videos, fresh_model):
    clip = next(iter_clip_features(FeatureCache(None, fresh_model), _records(), videos, N))
    assert clip.stored is None and clip.held is clip.features


def test_a_pass_holds_one_clip_at_a_time(tmp_path, videos, fresh_model):
    """What a stage keeps of a pass is references: every clip's feature tensor is freed once its items are built."""
    cache = FeatureCache(tmp_path / "cache", fresh_model)
    alive, items = [], []
    for c in iter_clip_features(cache, _records(), videos, N):
        alive.append(weakref.ref(c.features))
        items += [{"features": c.held} for _ in c.records]
    del c
    gc.collect()
    assert len(items) == 4 and len(alive) == 3
    assert [r() is None for r in alive] == [True, True, True]


def test_an_evicted_entry_is_recomputed_on_read(tmp_path, videos, fresh_model):
    cache = FeatureCache(tmp_path / "cache", fresh_model)
    clip = next(iter_clip_features(cache, _records(), videos, N))
    want = clip.features.clone()
    shutil.rmtree(tmp_path / "cache")  # a budget evicted it (or a user cleared the cache) mid-run
    misses = cache.misses
    assert torch.equal(clip.stored.load(), want) and cache.misses == misses + 1


def test_a_video_changed_under_a_reference_is_an_error_naming_it(tmp_path, videos, fresh_model):
    cache = FeatureCache(tmp_path / "cache", fresh_model)
    clip = next(iter_clip_features(cache, _records(), videos, N))
    path = videos / "v1.mp4"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced by another file of the same name
    with pytest.raises(VideoError, match=r"v1\.mp4.*changed on disk"):
        clip.stored.load()


def test_the_resume_key_digest_reads_the_reference_not_the_tensor(tmp_path, videos, fresh_model):
    cache = FeatureCache(tmp_path / "cache", fresh_model)
    a, b, _ = iter_clip_features(cache, _records(), videos, N)
    same = StoredFeatures(cache, videos / "v1.mp4", N, None, None)
    assert content_digest([{"f": a.stored}]) == content_digest([{"f": same}])
    assert content_digest([{"f": a.stored}]) != content_digest([{"f": b.stored}])
    assert content_digest([{"f": a.stored}]) != content_digest([{"f": a.stored.take([0, 1])}])
