"""The ViT feature cache: hits skip decoding and the ViT, keys follow everything the features depend on, storage
precision, atomic writes, damaged entries, and per-clip grouping of questions."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from sevila.inference import features as F
from sevila.model import prompts
from sevila.data.records import MomentRecord, QARecord
from sevila.synthetic.render import write_mp4
from sevila.data.video import BadVideoPolicy, SkipLog, read_frames
from sevila.inference.features import (
    Clip, FeatureCache, StoreDtype, VideoIdentity, group_by_clip, iter_clip_features, score_frames,
)

N = 6  # frames sampled per clip


def _video(path, seed: int, n: int = 24):
    rng = np.random.default_rng(seed)
    return write_mp4(path, rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), fps=8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {name: _video(d / f"{name}.mp4", seed) for seed, name in enumerate(("v1", "v2"))}


class Spy:
    """Counts ViT passes (frames) and video decodes."""

    def __init__(self, model, monkeypatch):
        self.vit_frames = 0
        self.decodes = 0
        real_encode, real_read = model.encode_frames, F.read_frames

        def encode(pixels):
            self.vit_frames += pixels.shape[0]
            return real_encode(pixels)

        def read(*a, **k):
            self.decodes += 1
            return real_read(*a, **k)

        monkeypatch.setattr(model, "encode_frames", encode)
        monkeypatch.setattr(F, "read_frames", read)


def test_second_get_hits_without_decoding_or_vit(tmp_path, videos, fresh_model, monkeypatch):
    spy = Spy(fresh_model, monkeypatch)
    cache = FeatureCache(tmp_path / "c", fresh_model, chunk_size=4)
    f1, m1 = cache.get(videos["v1"], N)
    assert (spy.decodes, spy.vit_frames) == (1, N)  # chunks of 4 + 2, all frames once
    assert f1.shape == (N, 17, 64) and f1.dtype == torch.float32
    f2, m2 = cache.get(videos["v1"], N)
    assert (spy.decodes, spy.vit_frames) == (1, N) and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(f1, f2)  # a miss returns what a hit will: the stored precision
    assert np.array_equal(m1.indices, m2.indices) and np.array_equal(m1.timestamps, m2.timestamps)
    assert m2.indices.tolist() == [2, 6, 10, 14, 18, 22] and m2.fps == 8.0 and m2.n_video_frames == 24
    np.testing.assert_allclose(m2.timestamps, m2.indices / 8.0)
    assert cache.path_for(cache.key(videos["v1"], N)).is_file()


def test_fp16_storage_error_is_within_half_precision(tmp_path, videos, fresh_model):
    cache = FeatureCache(tmp_path / "c", fresh_model)
    got, _ = cache.get(videos["v1"], N)
    sample = read_frames(videos["v1"], N, size=32)
    want = fresh_model.encode_frames(sample.pixels)
    rel = ((got - want).abs() / want.abs().clamp_min(1e-3)).max().item()
    assert 0 < rel <= 2.0 ** -11  # fp16 rounding: half an ulp of a 10-bit mantissa
    bf = FeatureCache(tmp_path / "bf", fresh_model, store_dtype=StoreDtype.BF16).get(videos["v1"], N)[0]
    rel_bf = ((bf - want).abs() / want.abs().clamp_min(1e-3)).max().item()
    assert 2.0 ** -11 < rel_bf <= 2.0 ** -8


def test_key_follows_what_the_features_depend_on(tmp_path, videos, model_factory):
    model = model_factory(seed=1)
    cache = FeatureCache(tmp_path / "c", model)
    base = cache.key(videos["v1"], N)
    assert cache.key(videos["v1"], N) == base  # deterministic
    assert FeatureCache(tmp_path / "other-root", model).key(videos["v1"], N) == base  # root is not part of it
    different = {
        "n_frames": cache.key(videos["v1"], N + 1),
        "window": cache.key(videos["v1"], N, 0.5, 2.0),
        "window end": cache.key(videos["v1"], N, 0.5, 2.5),
        "nan window": cache.key(videos["v1"], N, math.nan, math.nan),
        "video": cache.key(videos["v2"], N),
        "dtype": FeatureCache(tmp_path / "c", model, store_dtype=StoreDtype.BF16).key(videos["v1"], N),
    }
    changed = model_factory(seed=1)
    with torch.no_grad():
        changed.vision.encoder.layers[1].mlp.fc2.bias[0] += 1e-3  # one value of the ViT
    different["vision weights"] = FeatureCache(tmp_path / "c", changed).key(videos["v1"], N)
    # the Q-Formers do not enter the key: the cache is shared by both modules, every variant and round
    same_vit = model_factory(seed=1)
    with torch.no_grad():
        same_vit.localizer.proj.bias += 1.0
    assert FeatureCache(tmp_path / "c", same_vit).key(videos["v1"], N) == base
    assert len(set(different.values()) | {base}) == len(different) + 1, different


def test_key_follows_the_file(tmp_path, fresh_model):
    path = _video(tmp_path / "v.mp4", seed=7)
    stat_cache = FeatureCache(tmp_path / "c", fresh_model)
    content_cache = FeatureCache(tmp_path / "c", fresh_model, identity=VideoIdentity.CONTENT)
    k_stat, k_content = stat_cache.key(path, N), content_cache.key(path, N)
    copy = tmp_path / "elsewhere" / "v.mp4"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert content_cache.key(copy, N) == k_content  # a copied dataset keeps its cache ...
    assert stat_cache.key(copy, N) != k_stat  # ... unless identified by path
    _video(path, seed=8)  # the file is rewritten with other frames
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    assert stat_cache.key(path, N) != k_stat and content_cache.key(path, N) != k_content


def test_failed_write_leaves_no_entry_and_no_temp_file(tmp_path, videos, fresh_model, monkeypatch):
    cache = FeatureCache(tmp_path / "c", fresh_model)
    target = cache.path_for(cache.key(videos["v1"], N))

    def dies_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 100)  # half a file ...
        raise OSError("disk full")  # ... then the process fails

    monkeypatch.setattr(F, "save_file", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        cache.get(videos["v1"], N)
    assert not target.exists() and list(target.parent.iterdir()) == []

    monkeypatch.undo()

    def vit_fails(pixels):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(fresh_model, "encode_frames", vit_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get(videos["v1"], N)
    assert not target.exists()


def test_damaged_entry_is_recomputed(tmp_path, videos, fresh_model, caplog):
    cache = FeatureCache(tmp_path / "c", fresh_model)
    good, _ = cache.get(videos["v1"], N)
    path = cache.path_for(cache.key(videos["v1"], N))
    path.write_bytes(path.read_bytes()[:-200])  # truncated
    again, _ = cache.get(videos["v1"], N)
    assert torch.equal(again, good) and cache.misses == 2 and "unusable" in caplog.text
    assert cache.get(videos["v1"], N)[0].shape == good.shape and cache.hits == 1  # rewritten whole


def test_fp16_overflow_falls_back_to_bf16(tmp_path, videos, fresh_model, monkeypatch, caplog):
    monkeypatch.setattr(fresh_model, "encode_frames", lambda px: torch.full((px.shape[0], 17, 64), 1e5))
    cache = FeatureCache(tmp_path / "c", fresh_model)
    got, _ = cache.get(videos["v1"], N)
    assert torch.isfinite(got).all() and abs(got[0, 0, 0].item() - 1e5) / 1e5 < 2 ** -8
    assert "bfloat16" in caplog.text
    assert torch.equal(cache.get(videos["v1"], N)[0], got)


def test_window_fallback_survives_the_cache(tmp_path, videos, fresh_model):
    cache = FeatureCache(tmp_path / "c", fresh_model)
    for _ in range(2):  # miss, then hit
        _, meta = cache.get(videos["v1"], N, math.nan, math.nan)
        assert meta.window_fallback
    _, meta = cache.get(videos["v1"], N, 1.0, 2.0)
    assert not meta.window_fallback and meta.indices.tolist() == [8, 9, 11, 12, 13, 15]  # segments of [8, 16)


def _qa(qid: str, video: str, start=None, end=None) -> QARecord:
    return QARecord("synth", qid, video, "q?", ("a", "b"), 0, start, end)


def test_group_by_clip_keeps_order_and_groups_nan_windows():
    recs = [_qa("1", "v1"), _qa("2", "v2", 0.0, 1.0), _qa("3", "v1"), _qa("4", "v2", 0.0, 1.0),
            _qa("5", "v2", math.nan, math.nan), _qa("6", "v2", math.nan, math.nan),
            MomentRecord("qvh", "7", "a query", "v1", 10.0)]
    groups = group_by_clip(recs)
    assert [(c.video, [r.qid for r in rs]) for c, rs in groups.items()] == [
        ("v1", ["1", "3", "7"]), ("v2", ["2", "4"]), ("v2", ["5", "6"])]
    assert list(groups)[1] == Clip("v2", 0.0, 1.0)


def test_iter_clip_features_encodes_each_clip_once(tmp_path, videos, fresh_model, monkeypatch):
    spy = Spy(fresh_model, monkeypatch)
    root = videos["v1"].parent
    recs = [_qa(f"q{i}", v) for i, v in enumerate(["v1", "v2", "v1", "v2", "v1"])] + [_qa("bad", "missing")]
    cache = FeatureCache(tmp_path / "c", fresh_model)
    skips = SkipLog()
    out = list(iter_clip_features(cache, recs, root, N, policy=BadVideoPolicy.SKIP, skip_log=skips))
    assert [(c.clip.video, [r.qid for r in c.records]) for c in out] == [("v1", ["q0", "q2", "q4"]),
                                                                          ("v2", ["q1", "q3"])]
    assert (spy.decodes, spy.vit_frames) == (2, 2 * N)  # 5 questions, 2 decodes, 2 ViT passes
    assert skips.counts == {"not_found": 1} and skips.entries[0]["id"] == "bad"
    with pytest.raises(Exception, match="missing"):
        list(iter_clip_features(cache, recs, root, N))  # FAIL is the default policy
    keys = []
    real_key = cache._key
    monkeypatch.setattr(cache, "_key", lambda *a: keys.append(a[0]) or real_key(*a))
    again = list(iter_clip_features(cache, recs[:5], root, N))
    assert spy.vit_frames == 2 * N  # a second pass over the same questions: all hits
    assert len(keys) == 2  # one cache key per clip per pass, shared with the clip's StoredFeatures
    assert [c.stored.key for c in again] == [real_key(videos[v], N, None, None)[0] for v in ("v1", "v2")]


def test_score_frames_matches_the_localizer_on_cached_features(tmp_path, videos, fresh_model):
    cache = FeatureCache(tmp_path / "c", fresh_model)
    scored = score_frames(fresh_model, videos["v2"], "a red square appears", N, cache=cache)
    feats, meta = cache.get(videos["v2"], N)
    with torch.no_grad():
        want = fresh_model.localize(feats[None], [prompts.qvh_localizer_prompt("a red square appears")]).scores[0]
    assert [t for t, _ in scored] == meta.timestamps.tolist()
    assert [s for _, s in scored] == want.tolist()
