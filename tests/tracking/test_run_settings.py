"""Each stage's MLflow run records its OWN settings as params (not all of params.yaml), the whole resolved config
as the `params.yaml` artifact, and the records it reads as MLflow datasets; bootstrap and pseudo_label have runs.
The chain part runs the real stages on a tiny world with a tiny random backbone, against a private store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sevila import tracking as tr
from sevila.config import load_config, to_dict
from sevila.tracking.run_settings import STAGE_SETTINGS, stage_params, variant_params
from sevila.tracking import Phase

REPO = Path(__file__).resolve().parents[2]


def test_an_evaluate_run_logs_its_variant_not_the_pipeline_defaults():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.frames.n_frames == 32  # the pipeline default the 8 -> 1 run used to show
    assert variant_params(cfg, "f8k1_qvh_sr") == {
        "variant": "f8k1_qvh_sr", "study": "frames", "selector": "localizer", "fusion": "concat", "n_frames": 8,
        "n_keyframes": 1, "localizer": "qvh_sr", "answerer": "finetuned", "frame_slots": 1, "split": "test",
        "round": 1, "model": {"weights": "models/backbone", "backbone": None, "device": "auto",
                                "max_text_len": None},
        "frames": {"bad_video": "fail"}}
    assert set(tr.flatten_params(variant_params(cfg, "voting"))) == {
        "variant", "study", "selector", "fusion", "n_frames", "n_keyframes", "localizer", "answerer", "frame_slots",
        "split", "round", "model.weights", "model.backbone", "model.device", "model.max_text_len", "frames.bad_video"}
    assert variant_params(cfg, "oracle")["frame_slots"] == 4  # SeViLA's Answerer reads each frame in its 4 slots
    k2 = load_config(REPO / "params.yaml", ["frames.n_keyframes=2"])  # ... in as many as it was fine-tuned on
    assert [variant_params(k2, v)["frame_slots"] for v in ("oracle", "oracle_zero_shot")] == [2, 1]


def test_a_training_stage_logs_its_section_and_the_shared_settings_it_reads():
    cfg = load_config(REPO / "params.yaml", ["frames.n_frames=16"])
    flat = tr.flatten_params(stage_params(cfg, "finetune_answerer"))
    assert flat == {
        "finetune_answerer.frames": "localizer", "finetune_answerer.localizer": "qvh_sr",
        "finetune_answerer.train.lr": "0.001", "finetune_answerer.train.epochs": "5",
        "finetune_answerer.train.batch_size": "16", "finetune_answerer.train.micro_batch": "16",
        "finetune_answerer.train.weight_decay": "0.05", "finetune_answerer.train.warmup_steps": "10",
        "finetune_answerer.train.min_lr_ratio": "0.0", "finetune_answerer.train.grad_clip": "1.0",
        "finetune_answerer.train.betas": "[0.9, 0.999]", "finetune_answerer.train.eps": "1e-08",
        "finetune_answerer.train.checkpoint_every": "50", "finetune_answerer.train.eval_every": "null",
        "finetune_answerer.train.max_steps": "null", "finetune_answerer.train.seed": "0",
        "finetune_answerer.train.precision": "auto", "finetune_answerer.train.num_workers": "0",
        "finetune_answerer.train.find_unused_parameters": "false", "finetune_answerer.train.progress": "true",
        "round": "1", "frames.n_frames": "16", "frames.n_keyframes": "4",
        "frames.bad_video": "fail", "model.weights": "models/backbone", "model.backbone": "null",
        "model.device": "auto", "model.max_text_len": "null"}
    for stage in STAGE_SETTINGS:  # every stage: no other stage's section, no evaluate variants
        keys = tr.flatten_params(stage_params(cfg, stage))
        assert not any(k.startswith("evaluate.") for k in keys), stage
        others = set(STAGE_SETTINGS) - {stage}
        assert not any(k.split(".")[0] in others for k in keys), stage
    with pytest.raises(ValueError, match="unknown stage 'evaluat'"):
        stage_params(cfg, "evaluat")
    with pytest.raises(ValueError, match="'f9k9' is not in evaluate.variants"):
        variant_params(cfg, "f9k9")


# ----------------------------------------------------------------------------------------------------------
# The real stages on a tiny world

TRAIN = {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch": 4, "checkpoint_every": 2}
VARIANT = {"study": "frames", "selector": "localizer", "n_frames": 4, "n_keyframes": 1, "localizer": "sr",
           "answerer": "zero_shot"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny world, a tiny random backbone and a private store; frames.n_frames (8) differs from the evaluated
    variant's (4), as in the 8 -> 1 variant of the issue."""
    from sevila.weights.ours import save_sevila
    from sevila.synthetic.world import world_text
    from sevila.model.modeling import SeViLA
    from sevila.model.configuration import sevila_tiny
    from sevila.stages import prepare
    from sevila.model.tokenizer import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("runs")
    params = {
        "paths": {k: str(root / k) for k in ("world", "processed", "reports", "models", "runs")},
        "world": {"videos": 4, "seed": 3, "fps": 4, "size": 32},
        "model": {"weights": str(root / "backbone")},
        "frames": {"n_frames": 8, "n_keyframes": 2, "cache": str(root / "features")},
        "refine_localizer": {"starts": ["none"], "train": TRAIN},
        "evaluate": {"split": "test", "variants": {"f4k1_sr": VARIANT}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(root / "params.yaml")
    prepare.run(cfg)
    tok = build_tiny_tokenizer(world_text(), root / "tok", vocab_size=256)
    torch.manual_seed(0)
    save_sevila(SeViLA(sevila_tiny(len(tok)), tok), root / "backbone", modules=("vision", "t5", "localizer", "answerer"))
    mp = pytest.MonkeyPatch()
    mp.delenv(tr.PARENT_RUN_ENV, raising=False)
    uri = tr.configure(root / "mlflow.db")
    yield cfg, uri
    tr.configure(None)
    mp.undo()


def _one_run(phase: Phase):
    runs = tr.finished_runs("synth", phase)
    assert len(runs) == 1, runs[["run_name", "status"]]
    return tr.client().get_run(runs["run_id"].iloc[0])


def _datasets(run) -> dict[str, tuple[str, str, dict]]:
    """name -> (digest, context, profile) of a run's dataset inputs."""
    out = {}
    for d in run.inputs.dataset_inputs:
        ctx = {t.key: t.value for t in d.tags}["mlflow.data.context"]
        out[d.dataset.name] = (d.dataset.digest, ctx, json.loads(d.dataset.profile))
    return out


def _rows(path) -> int:
    return sum(1 for line in open(path) if line.strip())


def test_pseudo_label_refine_and_evaluate_runs_record_own_settings_and_inputs(chain, tmp_path):
    from sevila.stages import evaluate, pseudo_label, refine_localizer

    cfg, uri = chain
    processed = Path(cfg.paths.processed)
    stats = pseudo_label.run(cfg)
    labels = pseudo_label.label_file(cfg)

    pl = _one_run(Phase.PSEUDO_LABEL)  # the stage had no run before
    assert pl.info.run_name == "pseudo_label_r1"
    assert pl.data.params == {"pseudo_label.answerer": "zero_shot", "round": "1", "frames.n_frames": "8",
                              "frames.bad_video": "fail", "model.weights": cfg.model.weights,
                              "model.backbone": "null", "model.device": "auto", "model.max_text_len": "null"}
    assert pl.data.metrics["questions"] == stats["questions"] > 0
    assert pl.data.metrics["share_no_positive"] == pytest.approx(stats["share_no_positive"])
    assert pl.data.tags["pseudo_labels_digest"] == tr.file_digest(labels)
    assert _datasets(pl) == {"train.jsonl": (tr.file_digest(processed / "train.jsonl"), "eval",
                                             {"num_rows": _rows(processed / "train.jsonl")})}

    refine_localizer.run(cfg)
    rf = _one_run(Phase.REFINE)
    assert rf.data.params["refine_localizer.starts"] == '["none"]'
    assert rf.data.params["refine_localizer.train.lr"] == "0.001"
    assert not any(k.startswith(("evaluate.", "finetune_answerer.", "paths.", "world.")) for k in rf.data.params)
    ds = _datasets(rf)
    assert ds["pseudo_labels"] == (pl.data.tags["pseudo_labels_digest"], "train", {"num_rows": _rows(labels)})
    assert ds["train.jsonl"][1] == "train"

    evaluate.run(cfg)
    ev = _one_run(Phase.EVALUATE)
    assert ev.data.params == {
        "variant": "f4k1_sr", "study": "frames", "selector": "localizer", "fusion": "concat", "n_frames": "4",
        "n_keyframes": "1", "localizer": "sr", "answerer": "zero_shot", "frame_slots": "1", "split": "test",
        "round": "1", "model.weights": cfg.model.weights, "model.backbone": "null", "model.device": "auto",
        "model.max_text_len": "null", "frames.bad_video": "fail"}
    assert {k: ev.data.tags[k] for k in ("n_frames", "n_keyframes", "selector", "study")} == {
        "n_frames": "4", "n_keyframes": "1", "selector": "localizer", "study": "frames"}
    assert "accuracy" in ev.data.metrics
    assert _datasets(ev) == {"test.jsonl": (tr.file_digest(processed / "test.jsonl"), "eval",
                                            {"num_rows": _rows(processed / "test.jsonl")})}
    # the whole resolved config is an artifact, not params
    local = tr.client().download_artifacts(ev.info.run_id, "params.yaml", str(tmp_path))
    assert yaml.safe_load(Path(local).read_text()) == to_dict(cfg)


def test_bootstrap_stage_has_a_run(chain, monkeypatch):
    import sevila.synthetic.bootstrap
    from sevila.stages import bootstrap

    cfg, uri = chain
    seen = {}

    def fake_bootstrap(world, processed, weights, settings):  # the recipe itself is tested in test_bootstrap.py
        seen["settings"] = settings
        return {"train_seconds": 1.5, "val_acc_inside": 0.9}

    monkeypatch.setattr(sevila.synthetic.bootstrap, "bootstrap_backbone", fake_bootstrap)
    assert bootstrap.run(cfg) == {"train_seconds": 1.5, "val_acc_inside": 0.9}
    run = _one_run(Phase.BOOTSTRAP)
    assert run.data.metrics == {"train_seconds": 1.5, "val_acc_inside": 0.9}
    assert run.data.params["paths.world"] == cfg.paths.world
    assert run.data.params["world.videos"] == "4"
    assert not any(k.startswith(("evaluate.", "frames.")) for k in run.data.params)
    assert {name: ctx for name, (_, ctx, _) in _datasets(run).items()} == {"train.jsonl": "train",
                                                                           "val.jsonl": "eval"}
