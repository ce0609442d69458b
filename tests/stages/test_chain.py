"""The self-chained stages on a tiny world with a tiny random backbone: each stage runs through `run(cfg)`, reads
the previous stage's outputs, and writes the files and metric keys it promises. Every test runs alone: `chain`
runs a stage's prerequisites first, each stage at most once per session, on one tiny project.

The pinned numbers are the seeded tiny chain's (random backbone, seed 0; 3 test, 10 train questions) on CPU."""
import dataclasses
import json
import logging
import os

import numpy as np
import pytest
import torch

from sevila import cli, tracking
from sevila.weights.ours import load_sevila, read_header
from sevila.stages.common import split_clips, fit_module, load_model, read_split
from sevila.weights.checkpoint_dir import load_weights
from sevila.config import FrameSelection, TrainConfig, load_config
from sevila.data.records import read_records
from sevila.stages import RUNS_AS, evaluate, finetune_answerer, pretrain_localizer, pseudo_label, refine_localizer
from sevila.stages.finetune_answerer import answerer_items, answerer_loss
from sevila.stages.pretrain_localizer import moment_windows

VARIANTS = {
    "f8k2_qvh_sr": {"study": "components", "selector": "localizer", "n_frames": 8, "n_keyframes": 2,
                    "localizer": "qvh_sr", "answerer": "finetuned"},
    "f8k2_none": {"study": "components", "selector": "localizer", "n_frames": 8, "n_keyframes": 2,
                  "localizer": "none", "answerer": "zero_shot"},
    "uniform_f2": {"study": "baseline", "selector": "uniform", "n_frames": 8, "n_keyframes": 2,
                   "answerer": "finetuned_uniform"},
    "voting": {"study": "baseline", "selector": "all", "fusion": "vote", "n_frames": 8},
    # frame_slots null: the frames.n_keyframes = 2 slots its Answerer was fine-tuned on
    "oracle": {"study": "oracle", "selector": "oracle", "fusion": "vote", "n_frames": 8},
    "oracle_zero_shot": {"study": "oracle", "selector": "oracle", "fusion": "vote", "n_frames": 8,
                         "answerer": "zero_shot"},
}


# dvc.yaml's steps after bootstrap; finetune_answerer_uniform runs finetune_answerer under RUNS_AS's settings
ORDER = {"pretrain_localizer": pretrain_localizer, "pseudo_label": pseudo_label,
         "refine_localizer": refine_localizer, "finetune_answerer": finetune_answerer,
         "finetune_answerer_uniform": finetune_answerer, "evaluate": evaluate}


class Chain:
    """The tiny project's stage results, each stage run once, after the stages before it."""

    def __init__(self, params):
        self.params, self.cfg, self.results = params, load_config(params), {}

    def __getitem__(self, name: str) -> dict:
        for step in list(ORDER)[:list(ORDER).index(name) + 1]:
            if step not in self.results:
                overrides = RUNS_AS[step][1] if step in RUNS_AS else ()
                cfg = load_config(self.params, overrides) if overrides else self.cfg
                self.results[step] = ORDER[step].run(cfg)
        return self.results[name]


@pytest.fixture(scope="session")
def chain(make_tiny_project) -> Chain:
    return Chain(make_tiny_project("chain", VARIANTS))


def test_pretrain_localizer_writes_a_localizer_only_checkpoint(chain):
    metrics = chain["pretrain_localizer"]
    assert read_header(f"{chain.cfg.paths.models}/localizer/qvh").parts == ("localizer",)
    assert metrics["steps"] == 1 and metrics["final_loss"] == pytest.approx(16.84022331, rel=1e-5)
    assert (metrics["val_frame_auc"], metrics["val_keyframe_in_span"]) == (100.0, 100.0)


def test_pretrain_localizer_reports_moment_retrieval(chain):
    metrics = chain["pretrain_localizer"]
    # QVHighlights R1@0.5, R1@0.7 and mAP of the one val moment query, before and after training
    # (the top window overlaps the moment with 0.5 <= IoU < 0.7; AP is 1 at IoU 0.5-0.6, 0 above: mAP 30)
    assert {k: metrics[k] for k in sorted(metrics) if "_mr_" in k} == {
        "val_mr_map": 30.0, "val_mr_map_before": 30.0, "val_mr_r1_iou50": 100.0, "val_mr_r1_iou50_before": 100.0,
        "val_mr_r1_iou70": 0.0, "val_mr_r1_iou70_before": 0.0}


def test_moment_windows_scale_each_query_and_merge_adjacent_frames():
    t = np.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5])  # 1 s segments
    logits = np.array([-4.0, 3.0, 2.0, -4.0, 1.0, -2.0])  # scaled: 0, 1, .857, 0, .714, .286
    windows = moment_windows(t, logits, duration=6.0)
    assert [w[:2] for w in windows] == [[1.0, 3.0], [4.0, 5.0]]  # frames 1-2 merged; frame 4 alone
    assert [round(w[2], 4) for w in windows] == [0.9286, 0.7143]  # mean scaled score, best first
    assert moment_windows(t, np.zeros(6), duration=6.0) == [[0.0, 6.0, 1.0]]  # no preference: the whole video


def test_pseudo_labels_cover_every_train_question(chain):
    stats = chain["pseudo_label"]
    rows = [json.loads(line) for line in open(f"{chain.cfg.paths.runs}/round1/pseudo_labels.jsonl")]
    train = read_records(f"{chain.cfg.paths.processed}/train.jsonl")
    assert sorted(r["qid"] for r in rows) == sorted(r.qid for r in train)
    assert all(len(r["labels"]) == len(r["margins"]) == len(r["timestamps"]) == 8 and r["round"] == 1 for r in rows)
    # a frame is positive iff the Answerer's gold-option margin is positive (it wins the argmax)
    assert all(lab == (m > 0) for r in rows for lab, m in zip(r["labels"], r["margins"]))
    assert stats["questions"] == len(rows) == 10
    assert (stats["share_no_positive"], stats["positives_per_question"]) == (0.8, 1.6)
    assert (stats["positive_precision_vs_event"], stats["event_frame_recall"]) == pytest.approx((1 / 8, 2 / 13))


def test_refine_writes_both_round_suffixed_localizers(chain):
    out = chain["refine_localizer"]
    assert set(out["localizers"]) == {"sr", "qvh_sr"}
    assert out["localizers"]["qvh_sr"]["from"] == "qvh" and out["localizers"]["sr"]["from"] == "none"
    for name in ("sr_r1", "qvh_sr_r1"):
        assert read_header(f"{chain.cfg.paths.models}/localizer/{name}").parts == ("localizer",)
    assert [out["localizers"][n]["final_loss"] for n in ("sr", "qvh_sr")] == pytest.approx([16.94565964, 15.77462769],
                                                                                          rel=1e-5)


def test_finetune_answerer_on_localizer_keyframes(chain):
    metrics = chain["finetune_answerer"]
    assert metrics["frames"] == "localizer" and metrics["localizer"] == "qvh_sr" and metrics["steps"] == 2
    assert read_header(f"{chain.cfg.paths.models}/answerer/finetuned_r1").parts == ("answerer",)
    assert (metrics["first_loss"], metrics["final_loss"]) == pytest.approx((17.27667809, 16.79939842), rel=1e-5)


def test_finetune_answerer_on_uniform_frames_makes_the_baselines_answerer(chain):
    # issue 10: uniform_k4 read SeViLA's Answerer (fine-tuned on event keyframes only) and fell below chance;
    # the paper's BLIP-2^concat is fine-tuned on the uniform frames it is evaluated on
    metrics = chain["finetune_answerer_uniform"]
    assert (metrics["frames"], metrics["answerer"], metrics["localizer"]) == ("uniform", "finetuned_uniform", None)
    assert read_header(f"{chain.cfg.paths.models}/answerer/finetuned_uniform_r1").parts == ("answerer",)
    assert json.load(open(f"{chain.cfg.paths.reports}/finetune_answerer_uniform_r1.json")) == metrics
    assert metrics["kept_step"] == metrics["steps"] and metrics["val_questions"] > 0  # one epoch: its end is kept
    sevila_answerer = chain["finetune_answerer"]
    assert metrics["first_loss"] != sevila_answerer["first_loss"]  # other frames, another Answerer


def test_fit_module_keeps_the_epoch_with_the_best_val_metric(chain, tmp_path):
    cfg = dataclasses.replace(chain.cfg, paths=dataclasses.replace(chain.cfg.paths, runs=str(tmp_path / "runs")))
    model = load_model(cfg)
    items = answerer_items(model, split_clips(cfg, model, read_split(cfg, "train")), FrameSelection.UNIFORM, 2, 0)
    settings = TrainConfig(lr=1e-2, epochs=3, batch_size=len(items), micro_batch=len(items), checkpoint_every=1)
    val = iter([50.0, 90.0, 10.0])  # epoch 2 is the best
    out = fit_module(cfg, model, "answerer", items, answerer_loss, "t", settings, tmp_path / "ans",
                     eval_fn=lambda m: {"qa_acc": next(val)}, best_metric="qa_acc")
    assert (out["steps"], out["kept_step"], out["val_qa_acc"]) == (3, 2, 90.0)
    kept = {k: v.clone() for k, v in model.answerer.state_dict().items()}
    work = next((tmp_path / "runs" / "train").iterdir())
    model.set_trainable(answerer=True)
    load_weights(model, work / "last")  # the last epoch differs from what was kept ...
    assert any(not torch.equal(v, kept[k]) for k, v in model.answerer.state_dict().items())
    load_sevila(tmp_path / "ans", model)  # ... and the published module is epoch 2's
    assert all(torch.equal(v, kept[k]) for k, v in model.answerer.state_dict().items())
    load_weights(model, work / "best")
    assert all(torch.equal(v, kept[k]) for k, v in model.answerer.state_dict().items())


def test_evaluate_every_variant(chain):
    results = chain["evaluate"]
    assert set(results) == set(VARIANTS)
    n_test = len(read_records(f"{chain.cfg.paths.processed}/test.jsonl"))
    for name, m in results.items():
        # a random backbone: one of the 3 test questions right, whatever the frames
        assert m["count"] == n_test == 3 and m["accuracy"] == pytest.approx(100 / 3)
        preds = [json.loads(line) for line in open(f"{chain.cfg.paths.runs}/round1/eval/{name}/predictions.jsonl")]
        assert len(preds) == n_test
        k = VARIANTS[name].get("n_keyframes", 8) if VARIANTS[name]["selector"] in ("localizer", "uniform") else 8
        assert all(len(p["keyframes"]) == k and p["keyframes"] == sorted(p["keyframes"]) for p in preds)
    assert (results["f8k2_qvh_sr"]["keyframe_in_span"], results["f8k2_qvh_sr"]["frame_auc"]) == (100.0, 100.0)
    assert results["uniform_f2"]["keyframe_in_span"] == 0.0 and "frame_auc" not in results["uniform_f2"]
    # frame_slots null: the fine-tuned Answerer's oracle reads each frame in the frames.n_keyframes = 2 slots it was
    # fine-tuned on, the zero-shot one alone; the MLflow run records the resolved value
    runs = tracking.latest_per_variant(tracking.finished_runs("synth", tracking.Phase.EVALUATE)).set_index("variant")
    assert (runs.loc["oracle", "params.frame_slots"], runs.loc["oracle_zero_shot", "params.frame_slots"]) == ("2", "1")


def test_prompts_cut_at_the_text_limit_are_said_with_the_setting_that_raises_it(chain, tmp_path, caplog):
    # issue 24: prompts cut at 77 tokens showed only as `qa_truncated` in the metrics JSON
    chain["evaluate"]
    cfg = load_config(chain.params, ["evaluate.only=[uniform_f2]", f"paths.runs={tmp_path}", "model.max_text_len=12"])
    with caplog.at_level(logging.WARNING, logger="sevila.stages.evaluate"):
        metrics = evaluate.run(cfg)["uniform_f2"]
    assert metrics["qa_truncated"] == metrics["count"] == 3
    assert [r.getMessage() for r in caplog.records if r.name == "sevila.stages.evaluate"] == [
        "evaluate uniform_f2: 3 of 3 Answerer prompts were cut at 12 T5 tokens (their last options unseen); "
        "model.max_text_len raises the limit (the official code's is 77)"]
    assert chain["evaluate"]["uniform_f2"]["qa_truncated"] == 0  # at the weights' own limit nothing was cut


def test_a_bad_setting_writes_nothing(chain, capsys):
    # issue 12: n_frames=0 used to mean "the default" (32 frames) and replaced the variant's predictions
    chain["evaluate"]
    preds = chain.cfg.paths.runs + "/round1/eval/f8k2_qvh_sr/predictions.jsonl"
    before = (open(preds).read(), os.stat(preds).st_mtime_ns)
    rc = cli.main(["stage", "evaluate", "-p", str(chain.params), "-o", "evaluate.variants.f8k2_qvh_sr.n_frames=0"])
    assert rc == 2
    assert "evaluate.variants.f8k2_qvh_sr.n_frames: 0 must be >= 1" in capsys.readouterr().err
    assert (open(preds).read(), os.stat(preds).st_mtime_ns) == before


def test_training_resumes_only_on_the_same_inputs(chain, caplog):
    # issue 12: the resume key hashed only settings, item count and output folder, so a 16-frame run "resumed"
    # the 32-frame one and republished it
    first = chain["pretrain_localizer"]
    caplog.set_level(logging.INFO, logger="sevila.training.loop")
    assert pretrain_localizer.run(chain.cfg) == first  # same inputs: the finished run is picked up, not retrained
    assert "resuming at step 1/1" in caplog.text
    caplog.clear()
    four = dataclasses.replace(chain.cfg, frames=dataclasses.replace(chain.cfg.frames, n_frames=4))
    pretrain_localizer.run(four)  # other features (4 frames): trains afresh
    assert "resuming" not in caplog.text
    assert pretrain_localizer.run(chain.cfg) == first  # and the 8-frame run is still there to resume
