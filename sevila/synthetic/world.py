"""The synthetic world: small generated videos whose answers hinge on a few frames, with QA annotations in
the real NExT-QA format, moment annotations in the real QVHighlights format and ground-truth event spans.

Why it is built this way (docs/design.md §4: the embedded default on which the whole chain must *learn*):
- Each video has one short EVENT (10-20 % of its length, at a random position) during which a big target
  shape with a white outline fills the centre. Any single frame inside the event answers every question of
  the video; four uniformly sampled frames (SeViLA's Answerer without the Localizer) often miss it, so a good
  Localizer measurably helps. This mirrors what SeViLA's reverse chain relies on: a frame is a
  pseudo-positive keyframe iff the Answerer gets the answer right from that frame alone (paper §3.2).
- Outside the event the frames show small distractor shapes whose colours/shapes are among the wrong
  options, so an outside frame suggests a wrong answer (clean negative pseudo-labels), plus a drifting
  background texture and mild noise.
- Wrong options are built so that the answer cannot be read from the option list alone: for the combined
  "big <colour> <shape>" options, the answer and two decoys are exchangeable draws from the attributes no
  distractor uses, the other two options are the distractors' own attributes.
- Question `type` codes are NExT-QA's (DC, DO descriptive; TN, TP temporal; CW causal), so the per-type
  metrics run unchanged; every question is still answerable from one event frame.
- Rendering is a pure function of a video's metadata (`synth_render.render_frame`), and `frame_caption`
  reads the same metadata, so captions (used to pre-train the tiny backbone) always describe what the frame shows.

Outputs under `out_dir` (official formats, so the real readers are exercised):
  videos/<dir>/<id>.mp4                                    H.264 yuv420p (MPEG-4 part 2 when no libx264)
  nextqa/{train,val,test}.csv, nextqa/map_vid_vidorID.json NExT-QA csv + id map
  qvhighlights/highlight_{train,val,test}_release.jsonl    QVHighlights moment annotations
  spans.jsonl   {"qid": "<TYPE>_<video>_<qid>", "video": <map value>, "span": [s, e]} per question
  world.jsonl   per-video metadata (enough to re-render every frame), world_summary.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from sevila.atomic import atomic_write_json, atomic_write_text
from sevila.data.video import frame_labels, sample_indices
from sevila.errors import BadArgument
from sevila.synthetic.render import COLOURS, available_codec, in_event, render_video, visible_objects, write_mp4

GENERATOR_VERSION = 1

# The object words: colours are the palette's (synth_render.COLOURS), shapes these.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SHARES = (0.70, 0.15, 0.15)
N_OPTIONS = 5
EVENT_SHARE = (0.10, 0.20)  # event length as a share of the video
DURATION_S = (8, 12)  # integer seconds (QVHighlights durations are ints)
CLIP_LEN_S = 2.0  # QVHighlights clip length behind relevant_clip_ids / saliency_scores
VIDEO_ID_BASE = 100000

# NExT-QA type codes used here and the question each asks (answer readable from one event frame).
QTYPES: tuple[str, ...] = ("DC", "DO", "TN", "TP", "CW")


# ------------------------------------------------------------------------------------- text templates


def _combo(colour: str, shape: str) -> str:
    return f"big {colour} {shape}"


def question_text(qtype: str, meta: dict) -> str:
    """Question for one type code; no trailing '?' and no commas (NExT-QA style)."""
    a, b = meta["distractors"][0], meta["distractors"][1]
    if qtype == "DC":
        return "what colour is the big shape"
    if qtype == "DO":
        return "what shape is the big object"
    if qtype == "TN":
        return f"what appears after the small {a['colour']} {a['shape']}"
    if qtype == "TP":
        return f"what appears before the small {b['colour']} {b['shape']}"
    if qtype == "CW":
        return f"why does the small {a['colour']} {a['shape']} disappear"
    raise ValueError(f"unknown question type {qtype!r}")


def option_text(qtype: str, colour: str, shape: str) -> str:
    """The option string naming the attribute(s) a question type asks for (no trailing '.')."""
    if qtype == "DC":
        return colour
    if qtype == "DO":
        return shape
    if qtype in ("TN", "TP"):
        return _combo(colour, shape)
    if qtype == "CW":
        return f"a {_combo(colour, shape)} arrives"
    raise ValueError(f"unknown question type {qtype!r}")


def query_text(colour: str, shape: str) -> str:
    """QVHighlights-style query describing the event."""
    return f"a {_combo(colour, shape)} with a white outline appears"


def _caption_small(d: dict) -> str:
    return f"a small {d['colour']} {d['shape']}"


def world_text() -> list[str]:
    """Every sentence pattern the world can produce (questions, options, captions, queries), filled with
    every attribute, in a fixed order: enough to train a tokenizer that covers the world's vocabulary."""
    out: list[str] = []
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    fake = {"distractors": [{"colour": "red", "shape": "circle"}] * 2}
    for qt in ("DC", "DO"):
        out.append(question_text(qt, fake))
    for c, s in combos:
        d = {"colour": c, "shape": s}
        fake = {"distractors": [d, d]}
        out += [question_text(qt, fake) for qt in ("TN", "TP", "CW")]
        out += [option_text(qt, c, s) for qt in ("TN", "CW")]
        out += [f"a {_combo(c, s)}", _caption_small(d), query_text(c, s)]
    out += list(COLOURS) + list(SHAPES) + ["a grey background"]
    out.append(f"{_caption_small({'colour': 'red', 'shape': 'circle'})} and {_caption_small({'colour': 'blue', 'shape': 'square'})}")
    return out


CAPTION_VOCAB: tuple[str, ...] = tuple(sorted({w for line in world_text() for w in line.split()}))


# ------------------------------------------------------------------------------------- world sampling


def _r4(x: float) -> float:
    return round(float(x), 4)


def split_assignment(n_videos: int, rng: np.random.Generator) -> list[str]:
    """70/15/15 % of videos (each split non-empty from 3 videos on), shuffled."""
    n_val = int(round(SPLIT_SHARES[1] * n_videos))
    n_test = int(round(SPLIT_SHARES[2] * n_videos))
    if n_videos >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_train = n_videos - n_val - n_test
    labels = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return [labels[i] for i in rng.permutation(n_videos)]


def _motion(rng: np.random.Generator, speed: tuple[float, float]) -> tuple[float, float]:
    ang = rng.uniform(0, 2 * np.pi)
    v = rng.uniform(*speed)
    return _r4(v * np.cos(ang)), _r4(v * np.sin(ang))


def sample_video_meta(index: int, split: str, seed: int, fps: int = 8, size: int = 64) -> dict:
    """All random choices for one video, from its own stream (seed, index): the world is reproducible and
    videos can be generated in any order or in parallel. Positions/sizes are fractions of the frame."""
    rng = np.random.default_rng([seed, index, GENERATOR_VERSION])
    vid = VIDEO_ID_BASE + index
    duration = int(rng.integers(DURATION_S[0], DURATION_S[1] + 1))
    n_frames = duration * fps

    # Event: L frames starting at frame a, at least one second from either end so that distractor A is
    # seen before it and B after it. Span ends sit half a frame outside the event frames, so the inclusive
    # rule "t = i/fps in [s, e]" (SeViLA's moment labels) picks exactly the frames that show the target.
    lo, hi = math.ceil(EVENT_SHARE[0] * n_frames), math.floor(EVENT_SHARE[1] * n_frames)
    length = int(rng.integers(lo, hi + 1))
    first = int(rng.integers(fps, n_frames - fps - length + 1))
    stop = first + length
    span = [_r4((first - 0.5) / fps), _r4((stop - 0.5) / fps)]

    # Distractors get colours/shapes of their own; the target and two decoy options are drawn from what is
    # left, in the same way, so the option list alone does not single out the answer, and any frame outside
    # the event shows only attributes of wrong options.
    colours = list(COLOURS)
    n_distr = 3 if rng.random() < 0.5 else 2
    perm_c = [colours[i] for i in rng.permutation(len(colours))]
    d_colours, pool_colours = perm_c[:n_distr], perm_c[n_distr:]
    perm_s = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    d_shapes, pool_shapes = perm_s[:n_distr], perm_s[n_distr:]
    triple = [(pool_colours[k], pool_shapes[int(rng.integers(len(pool_shapes)))]) for k in range(3)]
    t_pick = int(rng.integers(3))
    target_colour, target_shape = triple[t_pick]
    decoys = [c for k, c in enumerate(triple) if k != t_pick]

    target = {
        "colour": target_colour,
        "shape": target_shape,
        "radius": _r4(rng.uniform(0.24, 0.30)),  # half-size as a share of the frame: 'big'
        "x": _r4(0.5 + rng.uniform(-0.06, 0.06)),
        "y": _r4(0.5 + rng.uniform(-0.06, 0.06)),
        "vx": 0.0,
        "vy": 0.0,
    }
    # share of the frame per second, counted from the event start: a slow drift that keeps it central
    target["vx"], target["vy"] = _motion(rng, (0.0, 0.03))
    names = ["A", "B", "C"]
    spans = [[0.0, span[0]], [span[1], float(duration)], [0.0, float(duration)]]
    distractors = []
    for k in range(n_distr):
        vx, vy = _motion(rng, (0.05, 0.15))
        distractors.append({
            "name": names[k],
            "colour": d_colours[k],
            "shape": d_shapes[k],
            "radius": _r4(rng.uniform(0.10, 0.13)),
            "x": _r4(rng.uniform(0.15, 0.85)),
            "y": _r4(rng.uniform(0.15, 0.85)),
            "vx": vx,
            "vy": vy,
            "span": spans[k],  # visible inside its span and outside the event
        })

    # Options for the combined questions: the answer, the two decoys, and the distractors A and B.
    combos = [(target_colour, target_shape), *decoys] + [(d["colour"], d["shape"]) for d in distractors[:2]]

    n_q = int(rng.integers(2, 4))
    qtypes = [QTYPES[i] for i in sorted(rng.permutation(len(QTYPES))[:n_q])]
    meta = {
        "video_id": vid,
        "video": f"{index // 100:04d}/{vid}",
        "index": index,
        "split": split,
        "duration": duration,
        "fps": fps,
        "n_frames": n_frames,
        "size": size,
        "event": span,
        "event_frames": [first, stop],
        "target": target,
        "distractors": distractors,
        "background": {
            "grey": int(rng.integers(55, 90)),
            "amp": _r4(rng.uniform(4.0, 8.0)),
            "wavelength": _r4(rng.uniform(0.3, 0.6)),  # share of the frame
            "angle": _r4(rng.uniform(0, np.pi)),
            "drift": _r4(rng.uniform(0.05, 0.15)),  # cycles per second
            "noise": 3,
            "noise_seed": int(rng.integers(2**31 - 1)),
        },
        "questions": [],
    }
    for qid, qt in enumerate(qtypes):
        if qt == "DC":
            wrong = [d["colour"] for d in distractors]
            others = [c for c in colours if c != target_colour and c not in wrong]
            wrong += [others[i] for i in rng.permutation(len(others))[: N_OPTIONS - 1 - len(wrong)]]
            opts = [target_colour] + wrong
        elif qt == "DO":
            opts = [target_shape] + [s for s in SHAPES if s != target_shape][: N_OPTIONS - 1]
        else:
            opts = [option_text(qt, c, s) for c, s in combos]
        order = rng.permutation(N_OPTIONS)
        options = [opts[i] for i in order]
        answer = int(np.where(order == 0)[0][0])
        meta["questions"].append({
            "qid": qid,
            "type": qt,
            "question": question_text(qt, meta),
            "options": options,
            "answer": answer,
        })
    meta["query"] = query_text(target_colour, target_shape)
    return meta


# --------------------------------------------------------------------------------------- captions


def frame_caption(video_meta: dict, t: float) -> str:
    """Short caption of what is visible at `t`: "a big red circle" inside the event, "a small blue square
    and a small green cross" outside it."""
    if in_event(video_meta, t):
        tg = video_meta["target"]
        return f"a {_combo(tg['colour'], tg['shape'])}"
    objs = visible_objects(video_meta, t)
    return " and ".join(_caption_small(d) for d in objs) if objs else "a grey background"


def _make_video(args: tuple[dict, str, str]) -> str:
    meta, path, codec = args
    write_mp4(path, render_video(meta), meta["fps"], codec)
    return path


# ------------------------------------------------------------------------------------ annotation files


NEXTQA_HEADER = "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4"


def _csv_field(s: str | int) -> str:
    s = str(s)
    if any(ch in s for ch in ',"\n\r'):
        raise ValueError(f"field {s!r} would need CSV quoting; the synthetic world never quotes")
    return s


def nextqa_csv(metas: Iterable[dict]) -> str:
    lines = [NEXTQA_HEADER]
    for m in metas:
        for q in m["questions"]:
            row = [m["video_id"], m["n_frames"], m["size"], m["size"], q["question"], q["answer"], q["qid"],
                   q["type"], *q["options"]]
            lines.append(",".join(_csv_field(x) for x in row))
    return "\n".join(lines) + "\n"


def qvh_clips(span: Sequence[float], duration: float) -> tuple[list[int], list[list[int]]]:
    """2-second clips overlapping the span, with a saliency (0-4, same for the three "annotators") that
    grows with the overlap, floored at 1 for any overlap as in the real files."""
    s, e = span
    n_clips = int(math.ceil(duration / CLIP_LEN_S))
    ids, scores = [], []
    for k in range(n_clips):
        overlap = min(e, (k + 1) * CLIP_LEN_S) - max(s, k * CLIP_LEN_S)
        if overlap > 0:
            v = max(1, min(4, int(round(4 * overlap / CLIP_LEN_S))))
            ids.append(k)
            scores.append([v, v, v])
    return ids, scores


def qvh_record(m: dict) -> dict:
    ids, scores = qvh_clips(m["event"], m["duration"])
    # key order as in the official train/val files (relevant_windows last)
    return {
        "qid": m["index"],
        "query": m["query"],
        "duration": m["duration"],
        "vid": m["video"],
        "relevant_clip_ids": ids,
        "saliency_scores": scores,
        "relevant_windows": [list(m["event"])],
    }


def canonical_qid(qtype: str, video_id: int, qid: int) -> str:
    """SeViLA's NExT-QA qid: '<type>_<video>_<qid>'."""
    return f"{qtype}_{video_id}_{qid}"


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------ driver


@dataclass(frozen=True)
class WorldSummary:
    """What `generate_world` made. `to_dict()` is written to world_summary.json (deterministic per seed)."""

    out_dir: str
    seed: int
    n_videos: int
    fps: int
    size: int
    codec: str
    generator_version: int
    videos_per_split: dict[str, int]
    questions_per_split: dict[str, int]
    questions_per_type: dict[str, int]
    event_share: dict[str, float]
    uniform4_hit_rate: float  # share of videos where 4 uniform frames include an event frame
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time; not written to the summary file (it would break byte-identity)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("out_dir")
        d.pop("seconds")
        return d


def generate_world(
    out_dir: str | Path,
    n_videos: int,
    seed: int,
    fps: int = 8,
    size: int = 64,
    workers: int = 1,
    codec: str | None = None,
) -> WorldSummary:
    """Generate `n_videos` videos and their annotations under `out_dir` (see module docstring)."""
    if n_videos < 1:
        raise BadArgument(f"n_videos must be >= 1, got {n_videos}")
    if size < 16 or size % 2:
        raise BadArgument(f"size must be an even number >= 16 (yuv420p), got {size}")
    if fps < 2:
        raise BadArgument(f"fps must be >= 2, got {fps}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    codec = codec or available_codec()
    splits = split_assignment(n_videos, np.random.default_rng([seed, 0xC0FFEE]))
    metas = [sample_video_meta(i, splits[i], seed, fps, size) for i in range(n_videos)]

    jobs = [(m, str(out / "videos" / f"{m['video']}.mp4"), codec) for m in metas]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_make_video, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        for job in jobs:
            _make_video(job)

    files: list[str] = []

    def put(rel: str, text: str) -> None:
        atomic_write_text(out / rel, text)
        files.append(rel)

    by_split = {s: [m for m in metas if m["split"] == s] for s in SPLITS}
    for s in SPLITS:
        put(f"nextqa/{s}.csv", nextqa_csv(by_split[s]))
    put("nextqa/map_vid_vidorID.json", json.dumps({str(m["video_id"]): m["video"] for m in metas}))
    for s in SPLITS:
        put(f"qvhighlights/highlight_{s}_release.jsonl", _jsonl(qvh_record(m) for m in by_split[s]))
    put("spans.jsonl", _jsonl(
        {"qid": canonical_qid(q["type"], m["video_id"], q["qid"]), "video": m["video"], "span": list(m["event"])}
        for m in metas for q in m["questions"]
    ))
    put("world.jsonl", _jsonl(metas))

    shares = [(m["event"][1] - m["event"][0]) / m["duration"] for m in metas]
    hits = []
    for m in metas:
        idx = sample_indices(0, m["n_frames"], 4)
        hits.append(bool(frame_labels(idx / m["fps"], [m["event"]]).any()))
    per_type: dict[str, int] = {}
    for m in metas:
        for q in m["questions"]:
            per_type[q["type"]] = per_type.get(q["type"], 0) + 1
    summary = WorldSummary(
        out_dir=str(out),
        seed=seed,
        n_videos=n_videos,
        fps=fps,
        size=size,
        codec=codec,
        generator_version=GENERATOR_VERSION,
        videos_per_split={s: len(by_split[s]) for s in SPLITS},
        questions_per_split={s: sum(len(m["questions"]) for m in by_split[s]) for s in SPLITS},
        questions_per_type=dict(sorted(per_type.items())),
        event_share={"min": _r4(min(shares)), "mean": _r4(float(np.mean(shares))), "max": _r4(max(shares))},
        uniform4_hit_rate=_r4(float(np.mean(hits))),
        files=sorted(files + ["world_summary.json"]),
    )
    atomic_write_json(out / "world_summary.json", summary.to_dict())
    return WorldSummary(**{**asdict(summary), "seconds": round(time.perf_counter() - t0, 3)})


def load_world(out_dir: str | Path) -> list[dict]:
    """The per-video metadata written to world.jsonl (for captions and re-rendering)."""
    path = Path(out_dir) / "world.jsonl"
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return out


# --------------------------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    p = subparsers.add_parser("synth", help="generate the synthetic world (videos + NExT-QA/QVHighlights annotations)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--videos", required=True, type=int, help="number of videos")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering/encoding videos")
    p.set_defaults(func=_cli_synth)


def _cli_synth(args: argparse.Namespace) -> int:
    s = generate_world(args.out, args.videos, args.seed, fps=args.fps, size=args.size, workers=args.workers)
    print(json.dumps({"out_dir": s.out_dir, "seconds": s.seconds, **s.to_dict()}))
    return 0
