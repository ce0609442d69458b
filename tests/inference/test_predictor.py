"""`sevila.inference.predictor` and `sevila answer` with the pipeline's model layout: a complete backbone checkpoint
plus
one-module Localizer and Answerer checkpoints (what the chain stages write to models/localizer/<id> and
models/answerer/finetuned_r<N>), on a generated video with the tiny model."""
from __future__ import annotations

import json

import pytest

from sevila.weights.ours import PARTS, save_sevila
from sevila.cli import main as cli_main
from sevila.synthetic.world import generate_world, load_world
from sevila.errors import BadArgument
from sevila.inference.predictor import Prediction, load_chain, predict, predict_with

N_FRAMES, N_KEYFRAMES = 8, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_videos=2, seed=5, fps=8, size=32)
    meta = load_world(out)[0]
    q = meta["questions"][0]
    return out / "videos" / f"{meta['video']}.mp4", q["question"], q["options"]


@pytest.fixture(scope="module")
def pipeline_models(tmp_path_factory, model_factory):
    """models/backbone (all four parts), models/localizer/qvh_sr_r1 and models/answerer/finetuned_r1, each module
    from a differently seeded model so that laying it over the backbone changes the answer's numbers."""
    root = tmp_path_factory.mktemp("models")
    backbone, loc_src, ans_src = model_factory(seed=0), model_factory(seed=7), model_factory(seed=9)
    paths = {
        "backbone": save_sevila(backbone, root / "backbone", modules=PARTS, step=1),
        "localizer": save_sevila(loc_src, root / "localizer" / "qvh_sr_r1", modules=("localizer",), step=2),
        "answerer": save_sevila(ans_src, root / "answerer" / "finetuned_r1", modules=("answerer",), step=3),
    }
    paths["blip2_dir"] = root / "blip2"  # detected as a transformers BLIP-2 directory by its config.json
    paths["blip2_dir"].mkdir()
    (paths["blip2_dir"] / "config.json").write_text("{}")
    expected = model_factory(seed=0)  # the same chain assembled by hand, without the checkpoint code
    expected.localizer.load_state_dict(loc_src.localizer.state_dict())
    expected.answerer.load_state_dict(ans_src.answerer.state_dict())
    return paths, expected.eval(), backbone.eval()


def test_predict_assembles_backbone_localizer_and_answerer(world, pipeline_models):
    video, question, options = world
    paths, expected, backbone_only = pipeline_models
    p = predict(video, question, options, backbone=paths["backbone"], localizer=paths["localizer"],
                answerer=paths["answerer"], n_frames=N_FRAMES, n_keyframes=N_KEYFRAMES, device="cpu")
    assert isinstance(p, Prediction)
    want = predict_with(expected, video, question, options, n_frames=N_FRAMES, n_keyframes=N_KEYFRAMES)
    assert p.answer == want.answer and p.keyframes == want.keyframes
    assert p.frame_scores == pytest.approx(want.frame_scores, abs=1e-5)
    assert p.option_logits == pytest.approx(want.option_logits, abs=1e-5)
    # the modules took effect: the backbone alone scores frames and options differently
    alone = predict_with(backbone_only, video, question, options, n_frames=N_FRAMES, n_keyframes=N_KEYFRAMES)
    assert max(abs(a - b) for a, b in zip(alone.frame_scores, p.frame_scores)) > 1e-3
    assert max(abs(a - b) for a, b in zip(alone.option_logits, p.option_logits)) > 1e-3

    # what a Prediction says, consistently
    assert p.answer_text == options[p.answer] and p.letter == "ABCDE"[p.answer]
    assert len(p.frame_scores) == len(p.frame_indices) == len(p.frame_timestamps) == N_FRAMES
    top = sorted(sorted(range(N_FRAMES), key=lambda i: p.frame_scores[i])[-N_KEYFRAMES:])
    assert p.keyframes == top  # the Localizer's top frames, in temporal order
    assert p.keyframe_indices == [p.frame_indices[k] for k in p.keyframes]
    assert p.keyframe_timestamps == [p.frame_timestamps[k] for k in p.keyframes]
    assert sum(p.option_probs) == pytest.approx(1.0) and len(p.option_probs) == len(options)


def test_load_chain_reports_every_load_and_freezes(pipeline_models):
    paths, _, _ = pipeline_models
    model, reports = load_chain(paths["backbone"], paths["localizer"], paths["answerer"], device="cpu")
    assert [str(r.source) for r in reports] == [str(paths[k] / "trainable.safetensors")
                                               for k in ("backbone", "localizer", "answerer")]
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_answer_cli_takes_the_pipeline_models(world, pipeline_models, tmp_path, capsys):
    video, question, options = world
    paths, expected, _ = pipeline_models
    opts = sum((["--option", o] for o in options), [])
    base = ["answer", str(video), "--question", question, *opts, "--n-frames", str(N_FRAMES),
            "--n-keyframes", str(N_KEYFRAMES), "--out", str(tmp_path / "out"), "--device", "cpu", "--json"]
    assert cli_main(base + ["--backbone", str(paths["backbone"]), "--localizer", str(paths["localizer"]),
                            "--answerer", str(paths["answerer"])]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    want = predict_with(expected, video, question, options, n_frames=N_FRAMES, n_keyframes=N_KEYFRAMES)
    assert res["answer"] == want.answer and res["keyframes"] == want.keyframes
    assert res["option_logits"] == pytest.approx(want.option_logits, abs=1e-5)
    for k in ("backbone", "localizer", "answerer"):
        assert str(paths[k]) in captured.err  # every load is said
    # the command: the fine-tuned Answerer as --weights over our backbone checkpoint
    assert cli_main(base + ["--weights", str(paths["answerer"]), "--backbone", str(paths["backbone"])]) == 0
    alone = json.loads(capsys.readouterr().out)
    expected_ans = predict_with(_with_answerer_only(pipeline_models), video, question, options,
                                n_frames=N_FRAMES, n_keyframes=N_KEYFRAMES)
    assert alone["option_logits"] == pytest.approx(expected_ans.option_logits, abs=1e-5)


def _with_answerer_only(pipeline_models):
    """The backbone with only the fine-tuned Answerer laid over it."""
    _, full, backbone = pipeline_models
    model = type(backbone)(backbone.config, backbone.tokenizer)
    model.load_state_dict(backbone.state_dict())
    model.answerer.load_state_dict(full.answerer.state_dict())
    return model.eval()


@pytest.mark.parametrize("flags, message", [
    (lambda p: ["--backbone", str(p["backbone"]), "--localizer", str(p["answerer"])],
     "holds answerer, not the localizer alone (give it as --answerer)"),
    (lambda p: ["--backbone", str(p["backbone"]), "--answerer", str(p["backbone"])],
     "holds vision, t5, localizer, answerer, not the answerer alone"),
    (lambda p: ["--localizer", str(p["localizer"])], "give the backbone"),
    (lambda p: ["--backbone", str(p["localizer"])], "holds only localizer"),
    (lambda p: ["--backbone", str(p["backbone"]), "--weights", str(p["blip2_dir"])],
     "a complete BLIP-2 directory is a backbone, not weights to lay over"),
])
def test_wrong_model_arguments_are_one_line(world, pipeline_models, capsys, flags, message):
    video, question, options = world
    paths, _, _ = pipeline_models
    argv = ["answer", str(video), "--question", question, *sum((["--option", o] for o in options), []),
            *flags(paths), "--device", "cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sevila answer: error: ") and message in err and len(err.splitlines()) == 1, err


def test_bad_arguments_are_refused_before_loading(world):
    video, question, options = world
    with pytest.raises(BadArgument, match="n_keyframes=5, n_frames=4"):
        predict(video, question, options, backbone="/nonexistent", n_frames=4, n_keyframes=5)
    with pytest.raises(BadArgument, match="give 1 to 5 options, got 6"):
        predict(video, question, ["a"] * 6, backbone="/nonexistent")
