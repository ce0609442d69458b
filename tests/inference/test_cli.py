"""`sevila answer` and `sevila localize` on a generated synthetic video with a tiny model saved by `save_sevila`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from sevila.weights.ours import PARTS, save_sevila
from sevila.cli import main as cli_main
from sevila.synthetic.world import generate_world, load_world

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_videos=2, seed=5, fps=8, size=32)
    meta = load_world(out)[0]
    return out / "videos" / f"{meta['video']}.mp4", meta["questions"][0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_model):
    return save_sevila(tiny_model, tmp_path_factory.mktemp("w") / "tiny", modules=PARTS, step=1)


def _png(path, min_bytes: int = 2000) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) >= min_bytes, (path, len(data))
    return imread(path)


def test_answer_prints_answer_scores_keyframes_and_writes_pictures(world, weights, tmp_path, capsys):
    video, q = world
    out = tmp_path / "out"
    argv = ["answer", str(video), "--question", q["question"], *sum((["--option", o] for o in q["options"]), []),
            "--weights", str(weights), "--n-frames", "8", "--n-keyframes", "3", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--device", "cpu"]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("answer: ") and any(o in lines[0] for o in q["options"])
    assert sum(line.startswith(("   ", " * ")) for line in lines) == len(q["options"])  # one score row per option
    times = [float(t) for t in next(x for x in lines if x.startswith("keyframes (s):")).split(":")[1].split()]
    assert len(times) == 3 and times == sorted(times) and len(set(times)) == 3  # temporal order
    assert "set:       vision, t5, localizer, answerer" in captured.err  # what was loaded is said
    strip = _png(out / "keyframes.png")
    assert strip.shape[1] > strip.shape[0] * 2  # three panels side by side
    _png(out / "localizer_scores.png")

    # --json: the same answer, machine-readable; the second run reads the feature cache
    assert cli_main(argv + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["keyframe_timestamps"] == pytest.approx(times, abs=5e-3)
    assert res["letter"] == lines[0].split()[1] and len(res["option_probs"]) == len(q["options"])
    assert sum(res["option_probs"]) == pytest.approx(1.0)
    assert len(res["frame_scores"]) == 8 and res["keyframes"] == sorted(res["keyframes"])
    assert sorted(np.argsort(res["frame_scores"])[-3:].tolist()) == res["keyframes"]  # the top-3 frames


def test_localize_json_has_one_score_per_frame(world, weights, capsys):
    video, _ = world
    assert cli_main(["localize", str(video), "--query", "a big red circle", "--weights", str(weights),
                     "--n-frames", "10", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_frames"] == 10 and len(res["frames"]) == 10
    ts = [f["timestamp"] for f in res["frames"]]
    assert ts == sorted(ts) and all(isinstance(f["score"], float) for f in res["frames"])


def test_bad_inputs_are_reported(world, weights, tmp_path, capsys):
    video, q = world
    opts = sum((["--option", o] for o in q["options"]), [])
    assert cli_main(["answer", str(tmp_path / "nope.mp4"), "--question", "q", *opts, "--weights", str(weights)]) == 2
    assert "nope.mp4" in capsys.readouterr().err
    six = opts + ["--option", "one more"]
    assert cli_main(["answer", str(video), "--question", "q", *six, "--weights", str(weights)]) == 2
    assert "give 1 to 5 options, got 6" in capsys.readouterr().err
    assert cli_main(["localize", str(video), "--query", "x", "--weights", str(tmp_path)]) == 2
    assert "neither a SeViLA checkpoint" in capsys.readouterr().err
