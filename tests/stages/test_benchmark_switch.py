"""The one switch for the benchmark (issue 9): `dataset` and the typed `datasets` entries of params.yaml, the
paper's settings applied with real weights only, the bootstrap stage for a real benchmark, and the report's
per-benchmark metric columns."""
from __future__ import annotations

import logging
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sevila.config import Benchmark, ConfigError, load_config, real_weights
from sevila.errors import UserError
from sevila.evaluation.tables import build_markdown
from sevila.stages import bootstrap as bootstrap_stage

REPO = Path(__file__).resolve().parents[2]


def _params(tmp_path: Path, text: str = "") -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("overrides, message", [
    (["dataset=nextq"], "dataset: 'nextq' is not one of ['synth', 'nextqa', 'star', 'how2qa', 'tvqa', 'vlep'"),
    (["dataset=qvhighlights"], "dataset: 'qvhighlights' is the Localizer's pre-training set, not a QA benchmark"),
    (["datasets.nextqa.vidoes=/v"], "datasets.nextqa: unknown setting(s) ['vidoes']"),
    (["datasets.msrvtt={videos: /v}"], "datasets: unknown setting(s) ['msrvtt']"),
    (["datasets.star.video_map=/m.json"], "datasets.star.video_map: '/m.json' applies only to NExT-QA"),
    (["datasets.tvqa.annotations.dev=x"], "datasets.tvqa.annotations: unknown setting(s) ['dev']"),
    (["datasets.vlep.paper.finetune_answerer={lr: 1.0e-5}"],
     "datasets.vlep.paper.finetune_answerer.epochs: None must be set"),
    (["datasets.how2qa.paper.n_keyframes=40"],
     "datasets.how2qa.paper.n_keyframes: 40 must be between 1 and n_frames=32"),
    (["datasets.nextqa.paper.refine_localizer.lr=fast"],
     "datasets.nextqa.paper.refine_localizer.lr: expected a number, got 'fast'"),
])
def test_a_bad_switch_or_entry_is_an_error_naming_the_dotted_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "params.yaml", overrides)
    assert message in str(err.value)


def test_repo_params_have_every_benchmark_with_the_official_run_scripts_settings():
    cfg = load_config(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert cfg.dataset is Benchmark.SYNTH and raw["dataset"] == "synth"
    assert set(raw["datasets"]) == {"nextqa", "star", "how2qa", "tvqa", "vlep", "qvhighlights"}
    nextqa = cfg.datasets.nextqa.paper
    # run_scripts/sevila/finetune/nexqa_ft.sh: 4 GPUs x batch 8 x accum 2, lr 3e-5, 10 epochs, warm-up 1000, 32 -> 4
    assert (nextqa.n_frames, nextqa.n_keyframes) == (32, 4)
    ft = nextqa.finetune_answerer
    assert (ft.lr, ft.epochs, ft.batch_size, ft.micro_batch, ft.warmup_steps) == (3e-5, 10, 64, 8, 1000)
    sr = nextqa.refine_localizer  # nexqa_sr.sh: 4 GPUs x 16, lr 3e-5, 10 epochs, warm-up 500
    assert (sr.lr, sr.epochs, sr.batch_size, sr.micro_batch, sr.warmup_steps) == (3e-5, 10, 64, 16, 500)
    qvh = cfg.datasets.qvhighlights.paper.pretrain_localizer  # pretrain_qvh.sh: 4 x 16, lr 3e-5, 80 epochs, 1000
    assert (qvh.lr, qvh.epochs, qvh.batch_size, qvh.micro_batch, qvh.warmup_steps) == (3e-5, 80, 64, 16, 1000)
    for name in ("star", "how2qa", "tvqa", "vlep"):  # lavis/projects/sevila/train/<name>.yaml
        ft = cfg.datasets[name].paper.finetune_answerer
        assert (ft.lr, ft.epochs, ft.batch_size, ft.warmup_steps) == (5e-5, 5, 64, 500)
    assert cfg.datasets.nextqa.video_map and all(cfg.datasets[b].videos for b in raw["datasets"])


def test_records_folder_follows_the_switch_unless_set(tmp_path):
    p = _params(tmp_path, "paths: {data: d}\n")
    assert load_config(p).paths.processed == "d/processed/synth"
    assert load_config(p, ["dataset=tvqa"]).paths.processed == "d/processed/tvqa"
    assert load_config(p, ["dataset=tvqa", "paths.processed=elsewhere/tvqa"]).paths.processed == "elsewhere/tvqa"
    with pytest.raises(ConfigError, match="paths.processed: 'data/processed/synth' must be a folder named after "
                                          r"dataset=tvqa \(e.g. d/processed/tvqa\)"):
        load_config(p, ["dataset=tvqa", "paths.processed=data/processed/synth"])
    cfg = load_config(p, ["dataset=tvqa", "datasets.tvqa.videos=/v/tvqa", "datasets.qvhighlights.videos=/v/qvh"])
    assert cfg.video_folder("tvqa") == Path("/v/tvqa") and cfg.video_folder("qvhighlights") == Path("/v/qvh")
    with pytest.raises(ConfigError, match="datasets.star.videos: not set"):
        load_config(p, ["dataset=star"]).video_folder("star")


def _blip2_dir(root: Path) -> Path:
    """What tells a transformers BLIP-2 directory apart (sevila.weights.load.detect_kind): config.json, no SeViLA
    trainable.safetensors."""
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    return root


def test_paper_settings_run_with_real_weights_only(tmp_path):
    blip2 = _blip2_dir(tmp_path / "blip2")
    pth = tmp_path / "sevila.pth"
    pth.write_bytes(b"")
    p = _params(tmp_path, "finetune_answerer:\n  train: {lr: 1.0e-3, epochs: 5, batch_size: 16, micro_batch: 16,"
                          " warmup_steps: 10, weight_decay: 0.01}\n")
    stock = load_config(p)
    assert real_weights(blip2) and real_weights(pth) and not real_weights(tmp_path / "missing")
    for weights in (blip2, pth):
        cfg = load_config(p, ["dataset=star", f"model.weights={weights}",
                              "datasets.star.paper.finetune_answerer={lr: 5.0e-5, epochs: 5, batch_size: 64, "
                              "micro_batch: 16, warmup_steps: 500}",
                              "datasets.star.paper.n_frames=16", "datasets.star.paper.n_keyframes=2",
                              "datasets.qvhighlights.paper.pretrain_localizer={lr: 3.0e-5, epochs: 80, batch_size: 64,"
                              " micro_batch: 16, warmup_steps: 1000}"])
        ft = cfg.finetune_answerer.train
        assert (ft.lr, ft.epochs, ft.batch_size, ft.micro_batch, ft.warmup_steps) == (5e-5, 5, 64, 16, 500)
        assert ft.weight_decay == 0.01  # what the recipe does not name stays as params.yaml says
        assert (cfg.frames.n_frames, cfg.frames.n_keyframes) == (16, 2)
        assert cfg.pretrain_localizer.train.epochs == 80 and cfg.pretrain_localizer.train.lr == 3e-5
        assert cfg.refine_localizer == stock.refine_localizer  # no recipe given for star's refinement here
    # the synthetic world, and a real benchmark on our own checkpoint, run params.yaml as written
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "trainable.safetensors").write_bytes(b"")
    for overrides in ([f"model.weights={blip2}"], ["dataset=star", f"model.weights={ours}"]):
        cfg = load_config(p, overrides)
        assert cfg.finetune_answerer == stock.finetune_answerer and cfg.frames == stock.frames


def test_a_setting_the_user_names_wins_over_the_papers_and_the_log_says_which(tmp_path, caplog):
    # issue 24: on real weights `-o frames.n_frames=16` was silently replaced by the benchmark's paper setting
    blip2 = _blip2_dir(tmp_path / "blip2")
    p = REPO / "params.yaml"  # the repo's paper recipes (datasets.*.paper)
    base = ["dataset=nextqa", f"model.weights={blip2}"]
    paper = load_config(p, base)
    assert (paper.frames.n_frames, paper.frames.n_keyframes) == (32, 4)  # nextqa's paper setting
    with caplog.at_level(logging.INFO, logger="sevila.config.params"):
        cfg = load_config(p, [*base, "frames.n_frames=16", "finetune_answerer.train.lr=1e-6"])
    assert (cfg.frames.n_frames, cfg.frames.n_keyframes) == (16, 4)  # the named one kept, the other the paper's
    assert cfg.finetune_answerer.train.lr == 1e-6
    assert cfg.finetune_answerer.train.epochs == paper.finetune_answerer.train.epochs  # not named: the paper's
    whole = load_config(p, [*base, "finetune_answerer.train={lr: 2.0e-6}"])  # a section named keeps all below it
    assert whole.finetune_answerer.train.lr == 2e-6 and whole.finetune_answerer.train.epochs != \
        paper.finetune_answerer.train.epochs
    line = caplog.records[-1].getMessage()
    assert line.startswith("nextqa on real weights: from the paper's settings (datasets.nextqa.paper, "
                           "datasets.qvhighlights.paper): frames.n_keyframes=4, pretrain_localizer.train.lr=")
    assert line.endswith("; kept as given: frames.n_frames, finetune_answerer.train.lr")


def test_bootstrap_trains_nothing_for_a_real_benchmark_and_never_touches_the_weights(tmp_path):
    blip2 = _blip2_dir(tmp_path / "blip2")
    before = sorted(p.name for p in blip2.iterdir())
    p = _params(tmp_path, yaml.safe_dump({"dataset": "nextqa", "model": {"weights": str(blip2)},
                                          "paths": {"models": str(tmp_path / "models"),
                                                    "reports": str(tmp_path / "reports")}}))
    assert bootstrap_stage.run(load_config(p)) == {"trained": 0}
    note = json.loads((tmp_path / "models" / "backbone" / bootstrap_stage.NOT_TRAINED).read_text())
    assert note["dataset"] == "nextqa" and note["trained"] is False
    assert json.loads((tmp_path / "reports" / "bootstrap.json").read_text()) == {"trained": 0}
    assert sorted(p.name for p in blip2.iterdir()) == before
    # real weights kept in the bootstrap's own output folder would be emptied by DVC: refused, naming the key
    inside = _blip2_dir(tmp_path / "models2" / "backbone")
    with pytest.raises(UserError, match="model.weights=.* is the bootstrap stage's output folder"):
        bootstrap_stage.run(load_config(p, [f"model.weights={inside}", f"paths.models={tmp_path / 'models2'}"]))
    assert sorted(q.name for q in inside.iterdir()) == ["config.json"]


def _run(dataset, variant, metrics):
    row = {"run_id": f"{dataset}-{variant}", "run_name": variant, "experiment": f"sevila/{dataset}/evaluate",
           "dataset": dataset, "variant": variant, "study": "components", "status": "FINISHED", "start_time": 1,
           "selector": "localizer", "fusion": "concat", "n_frames": 32, "n_keyframes": 4, "loc_pretrain": True,
           "loc_refine": True, "answerer": "finetuned", "round": 1}
    return row | {f"metrics.{k}": v for k, v in metrics.items()}


def test_report_tables_carry_each_benchmarks_own_metrics():
    runs = pd.DataFrame([
        _run("nextqa", "f32k4_qvh_sr", {"accuracy": 60.0, "Causal": 61.0, "Temporal": 58.5, "Descriptive": 70.0,
                                        "CW": 1.0}),
        _run("star", "f32k4_qvh_sr", {"accuracy": 40.0, "Interaction": 41.0, "Sequence": 42.0, "Prediction": 43.0,
                                      "Feasibility": 44.0, "mean": 42.5}),
        _run("vlep", "f32k4_qvh_sr", {"accuracy": 55.0}),
    ])
    md = build_markdown(runs)
    sections = {s.split("`")[1]: s for s in md.split("## Dataset ")[1:]}
    header = {ds: next(line for line in s.splitlines() if line.startswith("| Answerer")) for ds, s in sections.items()}
    assert header["nextqa"].endswith("| Accuracy | Causal | Temporal | Descriptive |")
    assert "| 60.0 | 61.0 | 58.5 | 70.0 |" in sections["nextqa"] and "CW" not in header["nextqa"]
    assert header["star"].endswith("| Accuracy | Interaction | Sequence | Prediction | Feasibility | Mean |")
    assert "| 40.0 | 41.0 | 42.0 | 43.0 | 44.0 | 42.5 |" in sections["star"]
    assert header["vlep"].endswith("| Variant | Accuracy |")
