"""The feature cache at real size: a size budget with least-recently-used eviction (safe beside writes in progress
and beside another process sharing the cache), no cache at all (the same numbers), and the disk it takes."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sevila.inference import features as F
from sevila.stages.common import feature_cache
from sevila.config import Config, ConfigError, FramesConfig, build, load_config
from sevila.synthetic.render import write_mp4
from sevila.inference.features import FeatureCache, entry_bytes
from sevila.model.configuration import sevila_flant5xl

N = 4  # frames per clip
WINDOWS = [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (0.0, 2.0), (0.5, 2.5), (1.0, 2.5), (0.0, 2.5)]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("videos") / "v.mp4"
    return write_mp4(path, rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8), fps=8)


@pytest.fixture
def clock(monkeypatch):
    """A last-use clock that ticks once per use (file times can tie within one filesystem tick)."""
    ticks = iter(range(10**9, 10**12, 10**9))
    monkeypatch.setattr(F, "_now_ns", lambda: next(ticks))


def _entry_size(tmp_path, model, video) -> int:
    probe = FeatureCache(tmp_path / "probe", model)
    probe.get(video, N, *WINDOWS[0])
    return probe.usage().bytes


def _names(cache: FeatureCache, video, windows) -> set[str]:
    return {cache.path_for(cache.key(video, N, *w)).name for w in windows}


def test_budget_holds_after_every_write(tmp_path, fresh_model, video, clock):
    size = _entry_size(tmp_path, fresh_model, video)
    cache = FeatureCache(tmp_path / "c", fresh_model, budget_bytes=int(3.5 * size))
    for i, window in enumerate(WINDOWS):
        cache.get(video, N, *window)
        assert cache.usage().bytes <= 3.5 * size
        assert cache.usage().entries == min(i + 1, 3)
    assert cache.evicted == len(WINDOWS) - 3 and cache.misses == len(WINDOWS)
    assert {p.name for p, _, _ in cache.entries()} == _names(cache, video, WINDOWS[-3:])  # the 3 newest


def test_least_recently_used_is_evicted_first(tmp_path, fresh_model, video, clock, caplog):
    size = _entry_size(tmp_path, fresh_model, video)
    cache = FeatureCache(tmp_path / "c", fresh_model, budget_bytes=int(3.5 * size))
    a, b, c, d, e = WINDOWS[:5]
    for w in (a, b, c):
        cache.get(video, N, *w)
    cache.get(video, N, *a)  # a hit: `a` is now used more recently than b and c
    assert cache.hits == 1
    with caplog.at_level(logging.INFO, logger="sevila.inference.features"):
        cache.get(video, N, *d)  # over budget: b goes (least recently used), not a (oldest written)
    assert {p.name for p, _, _ in cache.entries()} == _names(cache, video, [a, c, d])
    assert "evicted 1 least recently used entry" in caplog.text and str(video) in caplog.text
    assert "3 entries" in caplog.text  # the cache's size after eviction
    cache.get(video, N, *c)  # hit
    cache.get(video, N, *e)  # a is now the least recently used
    assert {p.name for p, _, _ in cache.entries()} == _names(cache, video, [c, d, e])
    assert [p.name for p, _, _ in cache.entries()] == [*_names(cache, video, [d]), *_names(cache, video, [c]),
                                                       *_names(cache, video, [e])]  # oldest use first


def test_the_entry_in_use_and_writes_in_progress_are_never_evicted(tmp_path, fresh_model, video, clock, caplog):
    size = _entry_size(tmp_path, fresh_model, video)
    cache = FeatureCache(tmp_path / "c", fresh_model, budget_bytes=size // 2)  # smaller than one entry
    first, _ = cache.get(video, N, *WINDOWS[0])
    assert cache.usage().entries == 1 and "over the" in caplog.text  # kept (in use), and said
    in_progress = cache.path_for(cache.key(video, N, *WINDOWS[0])).parent / ".x.safetensors.123.tmp"
    in_progress.write_bytes(b"\0" * (4 * size))  # another process's write, not yet renamed
    cache.get(video, N, *WINDOWS[1])
    assert {p.name for p, _, _ in cache.entries()} == _names(cache, video, [WINDOWS[1]])
    assert in_progress.is_file() and cache.usage().bytes < 2 * size  # neither deleted nor counted


def test_two_processes_share_one_cache(tmp_path, fresh_model, video, clock, caplog):
    size = _entry_size(tmp_path, fresh_model, video)
    one = FeatureCache(tmp_path / "c", fresh_model)  # unlimited
    two = FeatureCache(tmp_path / "c", fresh_model, budget_bytes=int(1.5 * size))
    want, _ = one.get(video, N, *WINDOWS[0])
    two.get(video, N, *WINDOWS[1])  # evicts the entry `one` wrote
    assert _names(one, video, [WINDOWS[0]]).isdisjoint(p.name for p, _, _ in one.entries())
    got, _ = one.get(video, N, *WINDOWS[0])  # gone under `one`: recomputed, the same bits
    assert torch.equal(got, want) and one.misses == 2 and "unusable" not in caplog.text


def test_an_entry_evicted_during_a_read_is_a_plain_miss(tmp_path, fresh_model, video, monkeypatch, caplog):
    cache = FeatureCache(tmp_path / "c", fresh_model)
    want, _ = cache.get(video, N)

    def gone(*a, **k):  # another process deleted it between is_file() and the read
        raise FileNotFoundError("evicted")

    monkeypatch.setattr(F, "safe_open", gone)
    got, _ = cache.get(video, N)
    assert torch.equal(got, want) and cache.misses == 2 and "unusable" not in caplog.text


def test_no_cache_computes_the_cached_features_bit_for_bit(tmp_path, fresh_model, video):
    cached = FeatureCache(tmp_path / "c", fresh_model)
    miss, meta = cached.get(video, N, 0.5, 2.0)
    hit, _ = cached.get(video, N, 0.5, 2.0)
    off = FeatureCache(None, fresh_model)
    got, got_meta = off.get(video, N, 0.5, 2.0)
    assert torch.equal(got, miss) and torch.equal(got, hit) and got.dtype == torch.float32
    assert np.array_equal(got_meta.indices, meta.indices)
    again, _ = off.get(video, N, 0.5, 2.0)
    assert off.misses == 2 and off.hits == 0 and torch.equal(again, got)  # nothing kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # nothing written anywhere else
    with pytest.raises(ValueError, match="off"):
        off.path_for("ab" * 32)


@pytest.mark.parametrize("damage", [b"", b"not a safetensors file", None])
def test_a_corrupt_or_partial_entry_is_recomputed(tmp_path, fresh_model, video, damage, caplog):
    cache = FeatureCache(tmp_path / "c", fresh_model)
    good, _ = cache.get(video, N)
    path = cache.path_for(cache.key(video, N))
    path.write_bytes(damage if damage is not None else path.read_bytes()[: path.stat().st_size // 2])
    again, _ = cache.get(video, N)
    assert torch.equal(again, good) and cache.misses == 2 and "unusable" in caplog.text
    assert torch.equal(cache.get(video, N)[0], good) and cache.hits == 1  # rewritten whole


def test_frames_settings_for_the_cache(tmp_path):
    cfg = load_config("params.yaml")
    assert cfg.frames.cache == "data/features" and cfg.frames.cache_budget_gb is None
    off = build(FramesConfig, {"cache": None}, "frames")
    assert off.cache is None
    assert build(FramesConfig, {"cache_budget_gb": 100}, "frames").cache_budget_gb == 100.0
    with pytest.raises(ConfigError, match="frames.cache_budget_gb: 0.0 must be > 0"):
        build(FramesConfig, {"cache_budget_gb": 0}, "frames")
    with pytest.raises(ConfigError, match="frames.cache_budget_gb: 5.0 is a budget for the feature cache, but "
                                          "frames.cache is null"):
        build(FramesConfig, {"cache": None, "cache_budget_gb": 5}, "frames")


def test_the_chain_builds_the_cache_its_settings_ask_for(tmp_path, fresh_model):
    cfg = build(Config, {"frames": {"cache": str(tmp_path / "f"), "cache_budget_gb": 0.25}}, "")
    cache = feature_cache(cfg, fresh_model)
    assert cache.root == tmp_path / "f" and cache.budget_bytes == 250_000_000
    assert feature_cache(build(Config, {"frames": {"cache": None}}, ""), fresh_model).root is None


def test_entry_bytes_at_real_size():
    real = sevila_flant5xl()
    assert real.n_vision_tokens == 257 and real.vision["hidden_size"] == 1408  # ViT-g/14 at 224 px
    assert entry_bytes(32, 257, 1408) == 32 * 257 * 1408 * 2 == 23_158_784  # 0.72 MB per frame
    assert entry_bytes(1, 17, 64, F.StoreDtype.BF16) == 17 * 64 * 2


def test_an_entry_used_again_since_the_scan_is_kept(tmp_path, fresh_model, video, clock, monkeypatch):
    size = _entry_size(tmp_path, fresh_model, video)
    cache = FeatureCache(tmp_path / "c", fresh_model, budget_bytes=int(2.5 * size))
    a, b, c = WINDOWS[:3]
    cache.get(video, N, *a)
    cache.get(video, N, *b)
    real_entries = cache.entries

    def scan_then_other_process_hits_a():
        listed = real_entries()
        F._touch(cache.path_for(cache.key(video, N, *a)))  # another process read `a` after this scan
        return listed

    monkeypatch.setattr(cache, "entries", scan_then_other_process_hits_a)
    cache.get(video, N, *c)  # the scan says `a` is least recent, but it was used since: `b` goes instead
    monkeypatch.undo()
    assert {p.name for p, _, _ in cache.entries()} == _names(cache, video, [a, c])
