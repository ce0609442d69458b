"""Tests for sevila.data.synth: determinism, official annotation formats, split hygiene, consistency of the
spans across files, option lists, and that the rendered frames really show what the annotations say."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from sevila.synthetic import world as S
from sevila.synthetic.world import (
    CAPTION_VOCAB, SHAPES, frame_caption, generate_world, load_world, sample_video_meta, split_assignment,
    world_text,
)
from sevila.synthetic.render import COLOURS, render_frame
from sevila.data.video import Backend, frame_labels, read_frames, sample_indices

N_VIDEOS = 10
ANNOTATION_FILES = [
    "nextqa/train.csv", "nextqa/val.csv", "nextqa/test.csv", "nextqa/map_vid_vidorID.json",
    "qvhighlights/highlight_train_release.jsonl", "qvhighlights/highlight_val_release.jsonl",
    "qvhighlights/highlight_test_release.jsonl", "spans.jsonl", "world.jsonl", "world_summary.json",
]
QVH_KEYS = ["qid", "query", "duration", "vid", "relevant_clip_ids", "saliency_scores", "relevant_windows"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_a")
    summary = generate_world(out, N_VIDEOS, seed=7)
    return out, summary


@pytest.fixture(scope="module")
def metas(world):
    return load_world(world[0])


def decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------- determinism


def test_same_seed_same_world_different_seed_differs(world, tmp_path):
    out_a, _ = world
    out_b = tmp_path / "b"
    decode_all(next((out_a / "videos").rglob("*.mp4")))  # other FFmpeg work in the process must not matter
    generate_world(out_b, N_VIDEOS, seed=7)
    for rel in ANNOTATION_FILES:
        assert (out_a / rel).read_bytes() == (out_b / rel).read_bytes(), rel
    for m in load_world(out_a)[:3]:
        rel = f"videos/{m['video']}.mp4"
        np.testing.assert_array_equal(decode_all(out_a / rel), decode_all(out_b / rel))
        assert (out_a / rel).read_bytes() == (out_b / rel).read_bytes()  # byte-identical too (DVC caching)
    out_c = tmp_path / "c"
    generate_world(out_c, N_VIDEOS, seed=8)
    for rel in ["world.jsonl", "spans.jsonl", "nextqa/train.csv"]:
        assert (out_a / rel).read_bytes() != (out_c / rel).read_bytes(), rel
    # no temp files left behind by the atomic writes
    assert not [p for p in out_b.rglob("*.tmp")]


def test_render_frame_is_pure_and_matches_the_video(world, metas):
    out, _ = world
    m = metas[0]
    a, b = m["event_frames"]
    frames = decode_all(out / "videos" / f"{m['video']}.mp4")
    assert frames.shape == (m["n_frames"], m["size"], m["size"], 3)
    for i in [0, a, (a + b) // 2, m["n_frames"] - 1]:
        r1, r2 = render_frame(m, i), render_frame(m, i)
        np.testing.assert_array_equal(r1, r2)
        assert np.abs(r1.astype(int) - frames[i]).mean() < 4.0  # only codec loss


# ------------------------------------------------------------------------------------ splits, sizes


def test_split_assignment_shares():
    rng = np.random.default_rng(0)
    assert Counter(split_assignment(100, rng)) == {"train": 70, "val": 15, "test": 15}
    c = Counter(split_assignment(10, rng))
    assert sum(c.values()) == 10 and min(c.values()) >= 1 and c["train"] >= 6
    assert Counter(split_assignment(1, rng)) == {"train": 1}


def test_splits_are_disjoint_and_complete(world, metas):
    out, summary = world
    vids = {s: {int(r["video"]) for r in read_csv(out / f"nextqa/{s}.csv")} for s in S.SPLITS}
    assert not (vids["train"] & vids["val"]) and not (vids["train"] & vids["test"]) and not (vids["val"] & vids["test"])
    assert set().union(*vids.values()) == {m["video_id"] for m in metas}
    assert all(vids[s] for s in S.SPLITS)
    for s in S.SPLITS:
        qvh = read_jsonl(out / f"qvhighlights/highlight_{s}_release.jsonl")
        assert {r["vid"] for r in qvh} == {m["video"] for m in metas if m["split"] == s}
        assert summary.videos_per_split[s] == len(vids[s])


def test_event_share_and_position(metas):
    for m in metas:
        s, e = m["event"]
        assert 0.10 <= (e - s) / m["duration"] <= 0.20
        assert 1.0 - 0.5 / m["fps"] <= s and e <= m["duration"] - 1.0  # a second of distractors each side
        assert 8 <= m["duration"] <= 12 and m["n_frames"] == m["duration"] * m["fps"]


def test_uniform_four_frames_often_miss_the_event():
    metas = [sample_video_meta(i, "train", seed=3) for i in range(300)]
    hits = [frame_labels(sample_indices(0, m["n_frames"], 4) / m["fps"], [m["event"]]).any() for m in metas]
    dense = [frame_labels(sample_indices(0, m["n_frames"], 32) / m["fps"], [m["event"]]).any() for m in metas]
    assert 0.3 < np.mean(hits) < 0.85  # often missed by 4 frames ...
    assert np.mean(dense) == 1.0  # ... never by SeViLA's 32 candidate frames


# ---------------------------------------------------------------------------------------- formats


def test_nextqa_csv_format(world, metas):
    out, _ = world
    by_id = {m["video_id"]: m for m in metas}
    n_rows = 0
    for s in S.SPLITS:
        raw = (out / f"nextqa/{s}.csv").read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n") and b'"' not in raw
        lines = raw.decode().splitlines()
        assert lines[0] == "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4"
        seen = set()
        for line in lines[1:]:
            f = line.split(",")
            assert len(f) == 13, line
            video, frames, w, h, q, ans, qid, qtype = int(f[0]), int(f[1]), int(f[2]), int(f[3]), f[4], int(f[5]), int(f[6]), f[7]
            m = by_id[video]
            assert (frames, w, h) == (m["n_frames"], m["size"], m["size"])
            assert (video, qid) not in seen
            seen.add((video, qid))
            assert qtype in {"DC", "DO", "TN", "TP", "CW"} and 0 <= ans <= 4
            assert not q.endswith("?") and not any(o.endswith(".") for o in f[8:])
            n_rows += 1
    assert n_rows == sum(len(m["questions"]) for m in metas)
    mapping = json.loads((out / "nextqa/map_vid_vidorID.json").read_text())
    assert mapping == {str(m["video_id"]): m["video"] for m in metas}
    for key, value in mapping.items():
        d, vid = value.split("/")
        assert vid == key and len(d) == 4 and d.isdigit()
        assert (out / "videos" / f"{value}.mp4").stat().st_size > 0


def test_qvhighlights_format(world, metas):
    out, _ = world
    recs = [r for s in S.SPLITS for r in read_jsonl(out / f"qvhighlights/highlight_{s}_release.jsonl")]
    assert len(recs) == len(metas) and len({r["qid"] for r in recs}) == len(recs)
    for r in recs:
        assert list(r) == QVH_KEYS
        assert isinstance(r["qid"], int) and isinstance(r["duration"], int)
        (s, e), = r["relevant_windows"]
        assert 0 <= s < e <= r["duration"]
        # clip k covers [2k, 2k+2): exactly the clips overlapping the window
        assert r["relevant_clip_ids"] == [k for k in range(r["duration"] // 2) if 2 * k < e and 2 * k + 2 > s]
        assert len(r["saliency_scores"]) == len(r["relevant_clip_ids"])
        assert all(len(x) == 3 and all(1 <= v <= 4 for v in x) for x in r["saliency_scores"])
        assert r["query"].startswith("a big ") and r["query"].endswith("with a white outline appears")


def test_qvh_clips_pinned():
    # window [1.5, 4.25] in a 10 s video: clip 0 overlaps 0.5 s, clip 1 2 s, clip 2 0.25 s
    assert S.qvh_clips([1.5, 4.25], 10) == ([0, 1, 2], [[1, 1, 1], [4, 4, 4], [1, 1, 1]])


def test_spans_consistent_across_files(world, metas):
    out, _ = world
    by_video = {m["video"]: m for m in metas}
    spans = read_jsonl(out / "spans.jsonl")
    rows = [r for s in S.SPLITS for r in read_csv(out / f"nextqa/{s}.csv")]
    assert {sp["qid"] for sp in spans} == {f"{r['type']}_{r['video']}_{r['qid']}" for r in rows}
    assert len(spans) == len(rows)
    qvh = {r["vid"]: r for s in S.SPLITS for r in read_jsonl(out / f"qvhighlights/highlight_{s}_release.jsonl")}
    for sp in spans:
        m = by_video[sp["video"]]
        assert sp["qid"].split("_")[1] == str(m["video_id"])
        assert sp["span"] == m["event"] == qvh[sp["video"]]["relevant_windows"][0]
        # the span picks exactly the event frames with SeViLA's inclusive idx/fps rule
        a, b = m["event_frames"]
        labels = frame_labels(np.arange(m["n_frames"]) / m["fps"], [sp["span"]])
        assert labels.nonzero()[0].tolist() == list(range(a, b))


def test_world_summary(world, metas):
    out, summary = world
    data = json.loads((out / "world_summary.json").read_text())
    assert data == summary.to_dict()
    assert data["n_videos"] == N_VIDEOS and data["seed"] == 7 and data["codec"] in {"libx264", "mpeg4"}
    assert sum(data["questions_per_type"].values()) == sum(len(m["questions"]) for m in metas)
    assert 0.10 <= data["event_share"]["min"] <= data["event_share"]["mean"] <= data["event_share"]["max"] <= 0.20
    assert sorted(data["files"]) == sorted(ANNOTATION_FILES)
    assert summary.seconds > 0


# ------------------------------------------------------------------------------------- questions


def test_options_are_fair_and_correct(metas):
    for m in metas:
        tc, ts = m["target"]["colour"], m["target"]["shape"]
        d_colours = {d["colour"] for d in m["distractors"]}
        assert tc not in d_colours and ts not in {d["shape"] for d in m["distractors"]}
        types = [q["type"] for q in m["questions"]]
        assert 2 <= len(types) <= 3 and len(set(types)) == len(types)
        for q in m["questions"]:
            opts = q["options"]
            assert len(opts) == 5 and len(set(opts)) == 5
            assert not any("," in o or o.endswith(".") for o in opts) and "," not in q["question"]
            right = opts[q["answer"]]
            if q["type"] == "DC":
                assert right == tc and d_colours <= set(opts)
            elif q["type"] == "DO":
                assert right == ts and set(opts) == set(SHAPES)
            else:
                assert f"big {tc} {ts}" in right
                a, b = m["distractors"][0], m["distractors"][1]
                assert any(f"big {a['colour']} {a['shape']}" in o for o in opts)
                assert any(f"big {b['colour']} {b['shape']}" in o for o in opts)
            if q["type"] in ("TN", "CW"):
                assert f"small {m['distractors'][0]['colour']} {m['distractors'][0]['shape']}" in q["question"]


def test_option_list_does_not_give_the_answer_away():
    """Across many videos: the answer's position is uniform, and in the combined options the answer is no
    more likely than a decoy to share its shape with another option (the decoys are exchangeable with it)."""
    metas = [sample_video_meta(i, "train", seed=11) for i in range(600)]
    positions = Counter(q["answer"] for m in metas for q in m["questions"])
    total = sum(positions.values())
    assert all(abs(positions[k] / total - 0.2) < 0.04 for k in range(5)), positions
    share_t, share_d = [], []
    for m in metas:
        for q in m["questions"]:
            if q["type"] not in ("TN", "TP"):
                continue
            shapes = [o.split()[-1] for o in q["options"]]
            colours = [o.split()[-2] for o in q["options"]]
            d_colours = {d["colour"] for d in m["distractors"]}
            for k, sh in enumerate(shapes):
                repeated = shapes.count(sh) > 1
                if k == q["answer"]:
                    share_t.append(repeated)
                elif colours[k] not in d_colours:
                    share_d.append(repeated)
    assert len(share_t) > 100
    assert abs(np.mean(share_t) - np.mean(share_d)) < 0.06, (np.mean(share_t), np.mean(share_d))


# ---------------------------------------------------------------------------------- what is shown


def _near(frame: np.ndarray, rgb, tol: float = 60.0) -> np.ndarray:
    return np.linalg.norm(frame.astype(float) - np.array(rgb, float), axis=-1) < tol


def test_event_frames_show_the_target_and_others_do_not(world, metas):
    out, _ = world
    for m in metas:
        frames = decode_all(out / "videos" / f"{m['video']}.mp4")
        size = m["size"]
        c0, c1 = size // 2 - size // 8, size // 2 + size // 8
        target_rgb = COLOURS[m["target"]["colour"]]
        labels = frame_labels(np.arange(m["n_frames"]) / m["fps"], [m["event"]])
        centre_share = np.array([_near(f[c0:c1, c0:c1], target_rgb).mean() for f in frames])
        whole_share = np.array([_near(f, target_rgb).mean() for f in frames])
        white_share = np.array([_near(f, (255, 255, 255), 40).mean() for f in frames])
        assert (centre_share[labels] > 0.6).all(), m["video"]  # target colour dominates the centre
        assert (whole_share[~labels] < 0.01).all(), m["video"]  # and is absent elsewhere
        assert (white_share[labels] > 0.02).all() and (white_share[~labels] < 0.005).all()  # the outline
        # a distractor's colour is visible outside the event
        a = m["distractors"][0]
        first = frames[0]
        assert _near(first, COLOURS[a["colour"]]).sum() > 20


def test_decord_reads_the_world_like_pyav(world, metas):
    out, _ = world
    for m in metas[:3]:
        path = out / "videos" / f"{m['video']}.mp4"
        d = read_frames(path, 8, size=32, backend=Backend.DECORD)
        assert (d.n_video_frames, d.fps) == (m["n_frames"], pytest.approx(m["fps"]))
        p = read_frames(path, 8, size=32, backend=Backend.PYAV)
        assert d.indices.tolist() == p.indices.tolist()
        assert float((d.pixels - p.pixels).abs().max()) < 1e-5


def test_mpeg4_fallback_is_readable(tmp_path):
    summary = generate_world(tmp_path, 2, seed=1, codec="mpeg4")
    assert summary.codec == "mpeg4"
    m = load_world(tmp_path)[0]
    path = tmp_path / "videos" / f"{m['video']}.mp4"
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
    sample = read_frames(path, 4, size=16, backend=Backend.DECORD)
    assert (sample.n_video_frames, sample.fps) == (m["n_frames"], pytest.approx(m["fps"]))
    a, b = m["event_frames"]
    frame = decode_all(path)[(a + b) // 2]
    s = m["size"]
    assert _near(frame[s // 2 - 4 : s // 2 + 4, s // 2 - 4 : s // 2 + 4], COLOURS[m["target"]["colour"]]).mean() > 0.6


# ----------------------------------------------------------------------------------------- captions


def test_frame_caption(metas):
    m = metas[0]
    s, e = m["event"]
    tg = m["target"]
    assert frame_caption(m, (s + e) / 2) == f"a big {tg['colour']} {tg['shape']}"
    before = frame_caption(m, 0.0)
    a = m["distractors"][0]
    assert before.startswith(f"a small {a['colour']} {a['shape']}")
    assert "big" not in before
    after = frame_caption(m, float(m["duration"]))
    b = m["distractors"][1]
    assert f"a small {b['colour']} {b['shape']}" in after and a["shape"] + " and" not in after.split(b["colour"])[0]
    if len(m["distractors"]) == 3:
        c = m["distractors"][2]
        assert f"small {c['colour']} {c['shape']}" in before and f"small {c['colour']} {c['shape']}" in after
    # pinned on a hand-made meta
    hand = {
        "event": [2.0, 3.0],
        "target": {"colour": "red", "shape": "circle"},
        "distractors": [
            {"colour": "blue", "shape": "square", "span": [0.0, 2.0]},
            {"colour": "green", "shape": "cross", "span": [3.0, 10.0]},
            {"colour": "yellow", "shape": "diamond", "span": [0.0, 10.0]},
        ],
    }
    assert frame_caption(hand, 2.5) == "a big red circle"
    assert frame_caption(hand, 1.0) == "a small blue square and a small yellow diamond"
    assert frame_caption(hand, 5.0) == "a small green cross and a small yellow diamond"


def test_vocab_covers_every_text_the_world_writes(world, metas):
    vocab = set(CAPTION_VOCAB)
    texts = list(world_text())
    for m in metas:
        texts.append(m["query"])
        for q in m["questions"]:
            texts += [q["question"], *q["options"]]
        texts += [frame_caption(m, i / m["fps"]) for i in range(m["n_frames"])]
    missing = {w for t in texts for w in t.split()} - vocab
    assert not missing
    assert set(COLOURS) <= vocab and set(SHAPES) <= vocab
    assert list(CAPTION_VOCAB) == sorted(CAPTION_VOCAB)


# ------------------------------------------------------------------------------------------- CLI


def test_cli(tmp_path, capsys):
    from sevila.cli import main

    assert main(["synth", "--out", str(tmp_path / "w"), "--videos", "3", "--seed", "2", "--size", "32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_videos"] == 3 and printed["size"] == 32
    metas = load_world(tmp_path / "w")
    assert len(metas) == 3 and all(m["size"] == 32 for m in metas)
    assert decode_all(tmp_path / "w" / "videos" / f"{metas[0]['video']}.mp4").shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("kwargs", [dict(n_videos=0), dict(size=63), dict(size=8), dict(fps=1)])
def test_generate_world_rejects_bad_settings(tmp_path, kwargs):
    args = dict(out_dir=tmp_path, n_videos=2, seed=0) | kwargs
    with pytest.raises(ValueError):
        generate_world(**args)
