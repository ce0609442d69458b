"""The self-chained stages on a tiny world with a tiny random backbone: each stage runs alone through
`run(cfg)`, reads the previous stage's outputs, and writes the files and metric keys it promises."""
import json

import pytest
import torch
import yaml

from sevila.checkpoints import read_header, save_sevila
from sevila.config import load_config
from sevila.data.records import read_records
from sevila.data.synth import world_text
from sevila.model import SeViLA, sevila_tiny
from sevila.stages import evaluate, finetune_answerer, prepare, pretrain_localizer, pseudo_label, refine_localizer
from sevila.tokenizer import build_tiny_tokenizer

TRAIN = {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch": 4, "checkpoint_every": 2}
VARIANTS = {
    "f8k2_qvh_sr": {"study": "components", "selector": "localizer", "n_frames": 8, "n_keyframes": 2,
                    "localizer": "qvh_sr", "answerer": "finetuned"},
    "f8k2_none": {"study": "components", "selector": "localizer", "n_frames": 8, "n_keyframes": 2,
                  "localizer": "none", "answerer": "zero_shot"},
    "uniform_f2": {"study": "baseline", "selector": "uniform", "n_frames": 8, "n_keyframes": 2},
    "voting": {"study": "baseline", "selector": "all", "fusion": "vote", "n_frames": 8},
    "oracle": {"study": "oracle", "selector": "oracle", "fusion": "vote", "n_frames": 8},
}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    params = {
        "paths": {k: str(root / k) for k in ("world", "processed", "reports", "models", "runs")},
        "world": {"videos": 6, "seed": 5, "fps": 4, "size": 32},
        "model": {"weights": str(root / "backbone")},
        "frames": {"n_frames": 8, "n_keyframes": 2, "cache": str(root / "features")},
        "pretrain_localizer": {"train": TRAIN},
        "refine_localizer": {"train": TRAIN},
        "finetune_answerer": {"train": TRAIN},
        "evaluate": {"split": "test", "variants": VARIANTS},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(root / "params.yaml")
    prepare.run(cfg)
    tok = build_tiny_tokenizer(world_text(), root / "tok", vocab_size=256)
    torch.manual_seed(0)
    save_sevila(SeViLA(sevila_tiny(len(tok)), tok), root / "backbone", modules=("vision", "t5", "localizer", "answerer"))
    return cfg


def test_pretrain_localizer_writes_a_localizer_only_checkpoint(cfg):
    metrics = pretrain_localizer.run(cfg)
    assert metrics["steps"] >= 1 and {"val_frame_auc", "val_keyframe_in_span"} <= set(metrics)
    assert read_header(f"{cfg.paths.models}/localizer/qvh").parts == ("localizer",)


def test_pseudo_labels_cover_every_train_question(cfg):
    stats = pseudo_label.run(cfg)
    rows = [json.loads(line) for line in open(f"{cfg.paths.runs}/round1/pseudo_labels.jsonl")]
    train = read_records(f"{cfg.paths.processed}/train.jsonl")
    assert sorted(r["qid"] for r in rows) == sorted(r.qid for r in train)
    assert all(len(r["labels"]) == len(r["margins"]) == len(r["timestamps"]) == 8 and r["round"] == 1 for r in rows)
    # a frame is positive iff the Answerer's gold-option margin is positive (it wins the argmax)
    assert all(lab == (m > 0) for r in rows for lab, m in zip(r["labels"], r["margins"]))
    assert stats["questions"] == len(rows) and 0 <= stats["share_no_positive"] <= 1
    assert {"positive_precision_vs_event", "event_frame_recall"} <= set(stats)


def test_refine_writes_both_round_suffixed_localizers(cfg):
    out = refine_localizer.run(cfg)
    assert set(out["localizers"]) == {"sr", "qvh_sr"}
    assert out["localizers"]["qvh_sr"]["from"] == "qvh" and out["localizers"]["sr"]["from"] == "none"
    for name in ("sr_r1", "qvh_sr_r1"):
        assert read_header(f"{cfg.paths.models}/localizer/{name}").parts == ("localizer",)


def test_finetune_answerer_on_localizer_keyframes(cfg):
    metrics = finetune_answerer.run(cfg)
    assert metrics["frames"] == "localizer" and metrics["localizer"] == "qvh_sr" and metrics["steps"] >= 1
    assert read_header(f"{cfg.paths.models}/answerer/finetuned_r1").parts == ("answerer",)


def test_evaluate_every_variant(cfg):
    results = evaluate.run(cfg)
    assert set(results) == set(VARIANTS)
    n_test = len(read_records(f"{cfg.paths.processed}/test.jsonl"))
    for name, m in results.items():
        assert m["count"] == n_test and 0 <= m["accuracy"] <= 100
        preds = [json.loads(line) for line in open(f"{cfg.paths.runs}/round1/eval/{name}/predictions.jsonl")]
        assert len(preds) == n_test
        k = VARIANTS[name].get("n_keyframes", 8) if VARIANTS[name]["selector"] in ("localizer", "uniform") else 8
        assert all(len(p["keyframes"]) == k and p["keyframes"] == sorted(p["keyframes"]) for p in preds)
    assert "keyframe_in_span" in results["f8k2_qvh_sr"] and "frame_auc" in results["f8k2_qvh_sr"]
    assert "frame_auc" not in results["uniform_f2"]
    # the oracle counts a question right when any single frame is: never below voting over the same frames
    assert results["oracle"]["accuracy"] >= results["voting"]["accuracy"]
