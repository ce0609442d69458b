"""Tests for sevila.data.video: sampling rules pinned by hand, decoding with both backends, CLIP
preprocessing, typed errors for every kind of bad video, and the bad-video policy."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from sevila.data import video as V
from sevila.data.video import (
    Backend,
    BadVideoPolicy,
    FrameSample,
    Sampling,
    SkipLog,
    UnsafeVideoPath,
    VideoCorrupt,
    VideoEmpty,
    VideoError,
    VideoNotFound,
    clip_bounds,
    frame_labels,
    load_or_skip,
    read_frames,
    resolve_video_path,
    sample_indices,
    to_pixels,
    verify_video,
)

FPS = 10
N_FRAMES = 60


# ------------------------------------------------------------------------------------------ helpers


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS, faststart: bool = False) -> Path:
    """H.264 yuv420p mp4 written with PyAV (the same kind of file the synthetic world writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "10", "threads": "1"}
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def index_coded_frames(n: int = N_FRAMES, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame i is mostly flat grey 20 + 3*i (so the decoded mean tells the index), with a moving coloured
    square and mild noise so that colour conversion and motion are exercised."""
    rng = np.random.default_rng(0)
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        f = np.full((h, w, 3), 20 + 3 * i, np.int16)
        f[:8] += rng.integers(-6, 7, (8, w, 3))  # noise strip at the top
        x = (2 * i) % (w - 12)
        f[24:36, x : x + 12] = (230, 40, 40)
        frames[i] = np.clip(f, 0, 255).astype(np.uint8)
    return frames


def decoded_index(frame: np.ndarray) -> int:
    """Invert index_coded_frames from a decoded frame (read a flat grey patch away from square and noise)."""
    patch = frame[40:48, :, :].astype(np.float64)
    return int(round((patch.mean() - 20) / 3))


@pytest.fixture(scope="module")
def vid_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    frames = index_coded_frames()
    write_mp4(root / "good.mp4", frames)
    write_mp4(root / "sub" / "nested.mp4", frames[:20])
    # faststart puts the index first, so decord opens a tail-cut file and fails only on late frames
    fs = write_mp4(root / "faststart.mp4", frames, faststart=True)
    data = fs.read_bytes()
    (root / "truncated_tail.mp4").write_bytes(data[: len(data) - 200])
    good = (root / "good.mp4").read_bytes()
    (root / "truncated_half.mp4").write_bytes(good[: len(good) // 2])  # moov atom (at the end) lost
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    return root


# ------------------------------------------------------------------------------------ sample_indices


@pytest.mark.parametrize(
    "first,stop,n,expected",
    [
        (0, 100, 4, [12, 37, 62, 87]),  # linspace 0,25,50,75,100 -> middles
        (20, 50, 4, [23, 31, 38, 46]),  # linspace 20,27.5,35,42.5,50 -> int 20,27,35,42,50
        (0, 10, 3, [1, 4, 8]),  # 0,3.33,6.67,10 -> 0,3,6,10
        (0, 3, 5, [0, 1, 2, 2, 2]),  # 3 frames for 5 slots: segments [0,1),[1,2),[2,3), last repeated
        (7, 8, 3, [7, 7, 7]),  # a single frame
        (0, 1000, 1, [500]),
    ],
)
def test_uniform_indices_pinned(first, stop, n, expected):
    idx = sample_indices(first, stop, n, Sampling.UNIFORM)
    assert idx.tolist() == expected
    assert idx.dtype == np.int64


def test_random_indices_stay_in_segments_and_are_seeded():
    bounds = np.linspace(10, 90, 9).astype(int)  # 8 segments of 10 frames
    draws = [sample_indices(10, 90, 8, Sampling.RANDOM, np.random.default_rng(s)) for s in range(20)]
    for idx in draws:
        assert ((idx >= bounds[:-1]) & (idx < bounds[1:])).all()
    # deterministic per seed, and seeds actually vary the draw
    again = sample_indices(10, 90, 8, Sampling.RANDOM, np.random.default_rng(3))
    assert again.tolist() == draws[3].tolist()
    assert len({tuple(d.tolist()) for d in draws}) > 10
    # every frame of a segment is reachable (not just the middle)
    seen = {int(d[0]) for d in draws} | {
        int(sample_indices(10, 90, 8, Sampling.RANDOM, np.random.default_rng(100 + s))[0]) for s in range(80)
    }
    assert seen == set(range(10, 20))


def test_random_with_fewer_frames_than_slots_repeats_last():
    # segments [0,1),[1,2),[2,3) each hold one frame, so random mode has no choice
    idx = sample_indices(0, 3, 5, Sampling.RANDOM, np.random.default_rng(0))
    assert idx.tolist() == [0, 1, 2, 2, 2]


@pytest.mark.parametrize("first,stop,n", [(0, 0, 4), (5, 3, 2), (-1, 10, 2), (0, 10, 0)])
def test_sample_indices_rejects_bad_ranges(first, stop, n):
    with pytest.raises(ValueError):
        sample_indices(first, stop, n)


# --------------------------------------------------------------------------------------- clip_bounds


@pytest.mark.parametrize(
    "n,fps,start,end,expected",
    [
        (100, 10, 2.0, 5.0, (20, 50, False)),
        (100, 10, None, None, (0, 100, False)),  # no window asked for: whole video by design
        (100, 10, float("nan"), float("nan"), (0, 100, True)),  # TVQA's NaN-NaN
        (100, 10, 2.0, float("nan"), (0, 100, True)),
        (100, 10, 2.0, None, (0, 100, True)),  # half a window is not a window
        (100, 10, 2.0, math.inf, (0, 100, True)),
        (100, 10, 2.0, 50.0, (20, 100, False)),  # end beyond the video is clipped
        (100, 10, -1.0, 3.0, (0, 30, False)),  # negative start clipped (official code does the same)
        (100, 10, 5.0, 5.0, (0, 100, True)),  # empty window
        (100, 10, 6.0, 2.0, (0, 100, True)),  # reversed
        (100, 10, 12.0, 15.0, (0, 100, True)),  # wholly after the video
        (100, 10, 2.3, 2.9, (23, 29, False)),  # 2.3*10 is 22.999... in floating point
        (90, 29.97, 1.0, 2.0, (29, 59, False)),  # int(29.97)=29, int(59.94)=59
    ],
)
def test_clip_bounds_pinned(n, fps, start, end, expected):
    assert clip_bounds(n, fps, start, end) == expected


def test_clip_bounds_rejects_empty_video():
    with pytest.raises(ValueError):
        clip_bounds(0, 10, None, None)


def test_frame_labels_inclusive_windows():
    ts = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert frame_labels(ts, [(1.0, 2.0), (3.5, 4.0)]).tolist() == [False, True, True, False, True, False]
    assert frame_labels(ts, []).tolist() == [False] * 6


# ---------------------------------------------------------------------------------- preprocessing


def test_clip_normalisation_of_constant_colour_pinned():
    frames = np.zeros((2, 30, 50, 3), np.uint8)
    frames[:] = (255, 0, 128)
    px = to_pixels(frames, size=16)
    assert px.shape == (2, 3, 16, 16) and px.dtype == torch.float32
    # (c/255 - mean)/std by hand: (1 - 0.48145466)/0.26862954, (0 - 0.4578275)/0.26130258,
    # (0.50196078 - 0.40821073)/0.27577711
    expected = [1.930336254, -1.752097128, 0.339948643]
    for ch, want in enumerate(expected):
        assert torch.allclose(px[:, ch], torch.full_like(px[:, ch], want), atol=1e-5)


def test_resize_ignores_aspect_ratio_and_keeps_layout():
    # left half black, right half white on a 20x80 frame; the square output keeps left dark, right bright
    f = np.zeros((1, 20, 80, 3), np.uint8)
    f[:, :, 40:] = 255
    px = to_pixels(f, size=8)
    assert px.shape == (1, 3, 8, 8)
    assert (px[0, :, :, :3] < 0).all() and (px[0, :, :, 5:] > 1.5).all()
    # no overshoot beyond what a uint8 image can express
    assert px.max() <= (1 - 0.40821073) / 0.26130258 + 1e-4


def test_to_pixels_rejects_wrong_layout():
    with pytest.raises(ValueError):
        to_pixels(np.zeros((2, 3, 8, 8), np.uint8), size=8)
    with pytest.raises(ValueError):
        to_pixels(np.zeros((2, 8, 8, 3), np.float32), size=8)


# ----------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("backend", [Backend.DECORD, Backend.PYAV, Backend.AUTO])
def test_frame_count_and_rate_as_the_decoder_reports_them(vid_dir, backend):
    sample = read_frames(vid_dir / "good.mp4", 4, size=16, backend=backend)
    assert (sample.n_video_frames, sample.fps) == (N_FRAMES, pytest.approx(FPS))


@pytest.mark.parametrize("backend", [Backend.DECORD, Backend.PYAV])
def test_read_frames_returns_the_sampled_frames(vid_dir, backend, monkeypatch):
    seen = {}
    orig = V.to_pixels

    def spy(frames, size=224):  # keep the raw decoded frames to check which frames came back
        seen["raw"] = frames
        return orig(frames, size)

    monkeypatch.setattr(V, "to_pixels", spy)
    fs = read_frames(vid_dir / "good.mp4", n=4, start=2.0, end=5.0, size=32, backend=backend)
    assert isinstance(fs, FrameSample)
    assert fs.indices.tolist() == [23, 31, 38, 46]  # clip (20, 50) -> as pinned above
    np.testing.assert_allclose(fs.timestamps, [2.3, 3.1, 3.8, 4.6])
    assert fs.fps == pytest.approx(FPS) and fs.n_video_frames == N_FRAMES and not fs.window_fallback
    assert fs.pixels.shape == (4, 3, 32, 32) and fs.pixels.dtype == torch.float32
    assert [decoded_index(f) for f in seen["raw"]] == [23, 31, 38, 46]


def test_decord_and_pyav_agree(vid_dir):
    """decord seeks, PyAV decodes sequentially: same indices, same timestamps, same pixels — including
    out-of-order and repeated indices (more slots than frames repeats the last)."""
    for kwargs in [dict(n=8), dict(n=5, start=1.0, end=1.3), dict(n=16, start=5.0, end=5.9)]:
        d = read_frames(vid_dir / "good.mp4", size=40, backend=Backend.DECORD, **kwargs)
        p = read_frames(vid_dir / "good.mp4", size=40, backend=Backend.PYAV, **kwargs)
        assert d.indices.tolist() == p.indices.tolist()
        np.testing.assert_array_equal(d.timestamps, p.timestamps)
        assert torch.allclose(d.pixels, p.pixels, atol=1e-5), (kwargs, (d.pixels - p.pixels).abs().max())
    # random access in an arbitrary order through the private readers, checked by frame content
    idx = np.array([59, 0, 31, 31, 7])
    dec = V._DecordReader(vid_dir / "good.mp4").frames(idx)
    pav = V._PyAVReader(vid_dir / "good.mp4").frames(idx)
    assert [decoded_index(f) for f in dec] == idx.tolist()
    assert np.abs(dec.astype(int) - pav.astype(int)).max() <= 1


def test_repeated_last_frame_when_clip_is_short(vid_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="sevila.data.video"):
        fs = read_frames(vid_dir / "good.mp4", n=6, start=1.0, end=1.3, size=16)  # frames 10, 11, 12
    assert fs.indices.tolist() == [10, 11, 12, 12, 12, 12]
    assert torch.equal(fs.pixels[3], fs.pixels[5])
    # issue 24: said, never silent (it was): the clip, the counts, and what the official sampling does
    assert [r.getMessage() for r in caplog.records] == [
        f"{vid_dir / 'good.mp4'}: the clip has 3 frames, 6 asked: the last one is repeated 3 times (SeViLA's "
        "official sampling, LAVIS load_video, does the same)"]
    caplog.clear()
    read_frames(vid_dir / "good.mp4", n=3, start=1.0, end=1.3, size=16)
    assert not caplog.records  # enough frames: nothing to say


def test_window_fallback_flag(vid_dir):
    fs = read_frames(vid_dir / "good.mp4", n=4, start=float("nan"), end=float("nan"), size=16)
    assert fs.window_fallback and fs.indices.tolist() == sample_indices(0, N_FRAMES, 4).tolist()
    fs = read_frames(vid_dir / "good.mp4", n=4, start=3.0, end=100.0, size=16)  # end clipped, no fallback
    assert not fs.window_fallback and fs.indices.tolist() == sample_indices(30, N_FRAMES, 4).tolist()


def test_random_mode_is_seeded_and_same_across_backends(vid_dir):
    a = read_frames(vid_dir / "good.mp4", 8, mode=Sampling.RANDOM, size=16, rng=np.random.default_rng(5),
                    backend=Backend.DECORD)
    b = read_frames(vid_dir / "good.mp4", 8, mode=Sampling.RANDOM, size=16, rng=np.random.default_rng(5),
                    backend=Backend.PYAV)
    assert a.indices.tolist() == b.indices.tolist()
    bounds = np.linspace(0, N_FRAMES, 9).astype(int)
    assert ((a.indices >= bounds[:-1]) & (a.indices < bounds[1:])).all()
    assert torch.allclose(a.pixels, b.pixels, atol=1e-5)


def test_auto_falls_back_to_pyav_without_decord(vid_dir, monkeypatch):
    ref = read_frames(vid_dir / "good.mp4", 4, size=16, backend=Backend.DECORD)
    monkeypatch.setattr(V, "_decord_module", lambda: None)
    fs = read_frames(vid_dir / "good.mp4", 4, size=16, backend=Backend.AUTO)
    assert fs.indices.tolist() == ref.indices.tolist() and torch.allclose(fs.pixels, ref.pixels, atol=1e-5)
    with pytest.raises(RuntimeError, match="decord is not installed"):
        read_frames(vid_dir / "good.mp4", 4, size=16, backend=Backend.DECORD)


# --------------------------------------------------------------------------------------- bad videos


@pytest.mark.parametrize("backend", [Backend.AUTO, Backend.PYAV, Backend.DECORD])
@pytest.mark.parametrize(
    "name,error",
    [
        ("missing.mp4", VideoNotFound),
        ("empty.mp4", VideoEmpty),
        ("garbage.mp4", VideoCorrupt),
        ("truncated_tail.mp4", VideoCorrupt),
        ("truncated_half.mp4", VideoCorrupt),
    ],
)
def test_bad_video_raises_typed_error_naming_it(vid_dir, name, error, backend):
    path = vid_dir / name
    with pytest.raises(error) as ei:
        read_frames(path, n=N_FRAMES, size=16, backend=backend)  # every frame, the lost tail included
    assert name in str(ei.value) and ei.value.video == str(path)
    assert ei.value.reason and ei.value.reason in str(ei.value)


def test_truncated_tail_opens_in_decord_but_is_reported(vid_dir):
    """The faststart file keeps its index, so decord opens it and reports all frames; reading the lost tail
    fails in decord and in PyAV, and the result is VideoCorrupt naming both attempts."""
    assert V._DecordReader(vid_dir / "truncated_tail.mp4").info()[0] == N_FRAMES
    with pytest.raises(VideoCorrupt, match="decord: .*pyav: ") as ei:
        read_frames(vid_dir / "truncated_tail.mp4", n=N_FRAMES, size=16)
    assert "truncated_tail.mp4" in str(ei.value)
    # frames before the cut still decode (a decoder cannot know about the cut yet) ...
    fs = read_frames(vid_dir / "truncated_tail.mp4", n=4, size=16)
    assert fs.indices.max() < N_FRAMES - 1
    # ... which is why verify_video demuxes the whole file and finds the cut packet
    with pytest.raises(VideoCorrupt, match="corrupt.*truncated"):
        verify_video(vid_dir / "truncated_tail.mp4")
    assert verify_video(vid_dir / "good.mp4") == (N_FRAMES, pytest.approx(FPS))
    for name, err in [("empty.mp4", VideoEmpty), ("garbage.mp4", VideoCorrupt), ("missing.mp4", VideoNotFound),
                      ("truncated_half.mp4", VideoCorrupt)]:
        with pytest.raises(err, match=name):
            verify_video(vid_dir / name)


@pytest.mark.parametrize("backend", [Backend.AUTO, Backend.PYAV])
def test_zero_frame_video_is_empty(tmp_path, backend):
    path = tmp_path / "noframes.mp4"
    with av.open(str(path), "w") as c:  # a valid mp4 container in which no frame was ever written
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        c.start_encoding()
    assert path.stat().st_size > 0
    with pytest.raises(VideoEmpty, match="noframes.mp4"):
        read_frames(path, n=4, size=16, backend=backend)


# -------------------------------------------------------------------------------------- path safety


def test_resolve_video_path_ok(vid_dir):
    assert resolve_video_path(vid_dir, "good") == vid_dir / "good.mp4"
    assert resolve_video_path(vid_dir, "sub/nested") == vid_dir / "sub" / "nested.mp4"
    assert resolve_video_path(vid_dir, "good.mp4") == vid_dir / "good.mp4"  # ext not appended twice
    # VLEP YouTube clip names hold colons; they are ordinary (missing here) names, not drive letters
    with pytest.raises(VideoNotFound):
        resolve_video_path(vid_dir, "abc_subs_001_00:00:01_00:00:09_ep")


@pytest.mark.parametrize("vid", ["../x", "sub/../../x", "/etc/passwd", "/abs", "..\\x", "C:/x", ""])
def test_resolve_video_path_refuses_unsafe_ids(vid_dir, vid):
    with pytest.raises(UnsafeVideoPath) as ei:
        resolve_video_path(vid_dir, vid)
    assert repr(vid) in str(ei.value)


def test_resolve_video_path_refuses_symlink_escaping_root(tmp_path, vid_dir):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(vid_dir / "good.mp4", root / "link.mp4")  # a file outside root
    os.symlink(vid_dir, root / "dirlink")
    with pytest.raises(UnsafeVideoPath, match="outside the video root"):
        resolve_video_path(root, "link")
    with pytest.raises(UnsafeVideoPath):
        resolve_video_path(root, "dirlink/good")
    # a symlink that stays inside root is fine
    (root / "real").mkdir()
    (root / "real" / "v.mp4").write_bytes(b"x")
    os.symlink(root / "real" / "v.mp4", root / "inside.mp4")
    assert resolve_video_path(root, "inside") == root / "inside.mp4"


def test_resolve_video_path_missing(vid_dir):
    with pytest.raises(VideoNotFound, match="'nope'"):
        resolve_video_path(vid_dir, "nope")
    with pytest.raises(VideoNotFound):
        resolve_video_path(vid_dir, "sub")  # a directory is not a video (sub.mp4 does not exist either)


# ------------------------------------------------------------------------------------------- policy


def test_skip_policy_records_and_counts(vid_dir, tmp_path):
    log = SkipLog()
    out = {}
    for vid in ["good", "empty", "garbage", "missing", "../escape", "truncated_half"]:
        out[vid] = load_or_skip(vid_dir, vid, BadVideoPolicy.SKIP, log, qid=f"q_{vid}", n=4, size=16)
    assert isinstance(out["good"], FrameSample) and out["good"].pixels.shape == (4, 3, 16, 16)
    assert all(v is None for k, v in out.items() if k != "good")
    assert len(log) == 5
    assert log.counts == {"corrupt": 2, "empty": 1, "not_found": 1, "unsafe_path": 1}
    assert [e["id"] for e in log.entries] == ["q_empty", "q_garbage", "q_missing", "q_../escape", "q_truncated_half"]
    assert all(e["detail"] for e in log.entries)
    path = log.write(tmp_path / "skips" / "skipped.json")
    data = json.loads(path.read_text())
    assert data["n_skipped"] == 5 and data["counts"]["corrupt"] == 2
    assert data["entries"][1] == log.entries[1]
    assert not list((tmp_path / "skips").glob(".*.tmp"))  # atomic write left no temp file


def test_fail_policy_raises(vid_dir):
    log = SkipLog()
    with pytest.raises(VideoEmpty, match="empty.mp4"):
        load_or_skip(vid_dir, "empty", BadVideoPolicy.FAIL, log, n=4, size=16)
    with pytest.raises(UnsafeVideoPath):
        load_or_skip(vid_dir, "/abs/x", BadVideoPolicy.FAIL, log, n=4, size=16)
    assert len(log) == 0


def test_skiplog_add_uses_video_when_no_qid(vid_dir):
    log = SkipLog()
    assert load_or_skip(vid_dir, "missing", BadVideoPolicy.SKIP, log, n=4) is None
    assert log.entries[0]["id"] == "missing" and log.entries[0]["video"] == "missing"
    assert issubclass(VideoNotFound, VideoError)
