"""The flows on a temporary Prefect server (one per session) and the tiny project: two self-refinement rounds
where round 2 really starts from round 1's models, the stopping rule on disk, the ablation sweep on threads and
on Dask, and the pipeline's stage order, each flow run grouped under one MLflow parent run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows import tasks
from flows.pipeline import Runner, pipeline, sweep
from flows.refine_rounds import refine_round
from sevila import tracking
from sevila.config import AnswererId, load_config

from .conftest import MAIN, VARIANTS

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def two_rounds(tiny_project):
    """refine_round run twice, as a user (or the schedule) would: round 1, then round 2."""
    first = refine_round(round=1, params=str(tiny_project))
    second = refine_round(round=2, params=str(tiny_project))
    return first, second


def test_round_decisions_chain(two_rounds):
    first, second = two_rounds
    assert (first.round, first.variant, first.previous) == (1, MAIN, None)
    assert first.proceed and "no previous round" in first.reason  # round 1: only max_rounds stops it
    assert first.overrides == ("round=1",)
    assert second.round == 2 and second.previous == first.accuracy
    assert second.overrides == ("round=2", "pseudo_label.answerer=finetuned")
    assert second.proceed is (second.accuracy - first.accuracy >= 0.5)  # the default min_improvement


def test_round_2_refines_round_1s_localizers(two_rounds, tiny_project):
    cfg = load_config(tiny_project)
    r1 = json.loads(Path(cfg.paths.reports, "refine_localizer_r1.json").read_text())
    r2 = json.loads(Path(cfg.paths.reports, "refine_localizer_r2.json").read_text())
    assert {k: (v["from"], v["from_round"]) for k, v in r1["localizers"].items()} == {
        "sr": ("none", None), "qvh_sr": ("qvh", None)}  # round 1: the backbone's / the pre-trained Localizer
    assert {k: (v["from"], v["from_round"]) for k, v in r2["localizers"].items()} == {
        "sr": ("sr", 1), "qvh_sr": ("qvh_sr", 1)}
    for name in ("sr_r1", "qvh_sr_r1", "sr_r2", "qvh_sr_r2"):
        assert Path(cfg.paths.models, "localizer", name, "trainable.safetensors").is_file()
    assert Path(cfg.paths.models, "answerer", "finetuned_r2", "trainable.safetensors").is_file()
    _, second = two_rounds
    assert json.loads(Path(cfg.paths.runs, "round2", "eval", MAIN, "metrics.json").read_text())["accuracy"] == \
        second.accuracy


def test_round_2_pseudo_labels_come_from_round_1s_finetuned_answerer(two_rounds, tiny_project):
    """Recompute one clip's pseudo-labels with the round-1 fine-tuned Answerer: round 2's file holds exactly
    those margins, and they differ from round 1's (made by the zero-shot Answerer)."""
    from sevila.chain import clip_features, load_model, read_split
    from sevila.stages.pseudo_label import label_clip, label_file, read_labels

    cfg = load_config(tiny_project, ["round=2", "pseudo_label.answerer=finetuned"])
    model = load_model(cfg, answerer=AnswererId.FINETUNED, round_=1)
    records = [r for r in read_split(cfg, "train") if r.answer is not None]
    clip = clip_features(cfg, model, records)[0]
    expected = label_clip(model, clip.features, clip.records)
    round1, round2 = read_labels(label_file(cfg, 1)), read_labels(label_file(cfg, 2))
    assert all(row["round"] == 2 for row in round2.values()) and set(round1) == set(round2)
    for rec, exp in zip(clip.records, expected):
        assert round2[rec.qid]["margins"] == exp["margins"]
    assert any(round1[q]["margins"] != round2[q]["margins"] for q in round1)


def test_each_round_is_one_parent_run_with_its_stage_runs(two_rounds):
    runs = tracking.runs_frame()
    seen_flow_runs = set()
    for d in two_rounds:
        parent = runs[runs["run_id"] == d.mlflow_run_id].iloc[0]
        assert parent["run_name"] == f"refine-round-{d.round}" and parent["round"] == d.round
        assert parent["status"] == "FINISHED" and parent["metrics.accuracy"] == pytest.approx(d.accuracy)
        assert parent["tags.proceed"] == ("true" if d.proceed else "false")
        seen_flow_runs.add(parent["tags.prefect_flow_run_id"])
        children = runs[runs["parent_run_id"] == d.mlflow_run_id]
        n = d.round
        assert sorted(children["run_name"]) == sorted(
            [f"pseudo_label_r{n}", f"refine_sr_r{n}", f"refine_qvh_sr_r{n}", f"finetune_answerer_r{n}", MAIN])
        assert set(children["round"]) == {n} and set(children["status"]) == {"FINISHED"}
    assert len(seen_flow_runs) == 2  # one parent per flow run


def test_the_schedule_resumes_on_disk_and_stops_when_told(two_rounds, tiny_project):
    # both rounds are on disk: with max_rounds=2 a scheduled (round=None) run does nothing at all
    before = len(tracking.runs_frame())
    d = refine_round(params=str(tiny_project), max_rounds=2)
    assert d.round is None and not d.proceed and d.reason == "nothing to do: round 2 reached max_rounds=2"
    assert len(tracking.runs_frame()) == before


def test_a_round_without_its_inputs_says_what_is_missing(two_rounds, tiny_project):
    with pytest.raises(FileNotFoundError, match=r"answerer/finetuned_r4 \(made by finetune_answerer of round 4\)"):
        refine_round(round=5, params=str(tiny_project))


def test_ablation_sweep_on_threads_and_on_dask(two_rounds, tiny_project):
    cfg = load_config(tiny_project)
    on_threads = sweep(str(tiny_project), runner=Runner.THREADS, workers=2)
    assert set(on_threads) == set(VARIANTS)
    for name, metrics in on_threads.items():
        assert metrics == json.loads(Path(cfg.paths.runs, "round1", "eval", name, "metrics.json").read_text())
    on_dask = sweep(str(tiny_project), variants=["voting", "f8k2_none"], runner=Runner.DASK, workers=1)
    assert {k: v["accuracy"] for k, v in on_dask.items()} == {k: on_threads[k]["accuracy"] for k in on_dask}
    # each sweep is one parent run; the Dask workers' runs nest under it too (ParentRun passed explicitly)
    runs = tracking.runs_frame()
    parents = runs[runs["run_name"] == "prefect-ablation-sweep"].sort_values("start_time")
    kids = [sorted(runs[runs["parent_run_id"] == pid]["run_name"]) for pid in parents["run_id"].iloc[-2:]]
    assert kids == [sorted(VARIANTS), ["f8k2_none", "voting"]]


def test_pipeline_runs_every_stage_in_order(tiny_project, monkeypatch):
    """The pipeline flow's orchestration with the stage function recorded instead of run."""
    calls = []

    def fake_run_stage(name, params, overrides):
        calls.append((name, overrides))
        if name == "evaluate":
            (only,) = [o for o in overrides if o.startswith("evaluate.only=")]
            return {only.split("[")[1].rstrip("]"): {"accuracy": 50.0}}
        return {"stage": name}

    monkeypatch.setattr(tasks, "run_stage", fake_run_stage)
    out = pipeline(params=str(tiny_project), overrides=["world.seed=1"])
    chain = ["prepare", "validate", "bootstrap", "pretrain_localizer", "pseudo_label", "refine_localizer",
             "finetune_answerer"]
    assert [c[0] for c in calls] == chain + ["evaluate"] * len(VARIANTS) + ["report"]
    assert all(c[1][0] == "world.seed=1" for c in calls)
    assert sorted(c[1][1] for c in calls if c[0] == "evaluate") == sorted(f"evaluate.only=[{v}]" for v in VARIANTS)
    assert out["evaluate"] == {v: {"accuracy": 50.0} for v in VARIANTS} and out["report"] == {"stage": "report"}
    runs = tracking.runs_frame()
    top = runs[runs["run_name"] == "prefect-pipeline"]
    assert len(top) == 1
    nested = runs[runs["parent_run_id"] == top["run_id"].iloc[0]]
    assert list(nested["run_name"]) == ["prefect-ablation-sweep"]  # the sweep subflow's parent nests


def test_report_stage_tables_this_rounds_variants_and_loss_curves(two_rounds, tiny_project):
    """The DVC `report` stage (as the pipeline flow's last task): round 1 has every variant, round 2 only the main
    one (the others are listed as missing, not taken from round 1); loss curves come from the MLflow history."""
    cfg = load_config(tiny_project)
    sweep(str(tiny_project))  # every variant of round 1 (the round-1 flow evaluated only the main one)
    out = tasks.stage.fn("report", str(tiny_project), ["round=1"])
    assert out["variants"] == len(VARIANTS) and out["missing"] == []
    assert out["curves"] == ["finetune_answerer_r1", "pretrain_localizer", "refine_qvh_sr_r1", "refine_sr_r1"]
    records = json.loads(Path(cfg.paths.reports, "ablations.json").read_text())
    for r in records:
        on_disk = json.loads(Path(cfg.paths.runs, "round1", "eval", r["variant"], "metrics.json").read_text())
        assert r["round"] == 1 and r["accuracy"] == pytest.approx(on_disk["accuracy"])
    md = Path(cfg.paths.reports, "ablations.md").read_text(encoding="utf-8")
    assert f"| 8 | 2 | {MAIN} |" in md  # Table 7 borrows the full-SeViLA components row
    refine = json.loads(Path(cfg.paths.reports, "refine_localizer_r1.json").read_text())
    curve = json.loads(Path(cfg.paths.reports, "curves", "refine_sr_r1.json").read_text())
    assert [p["step"] for p in curve] == list(range(1, refine["localizers"]["sr"]["steps"] + 1))
    assert curve[-1]["loss"] == pytest.approx(refine["localizers"]["sr"]["final_loss"])

    out2 = tasks.stage.fn("report", str(tiny_project), ["round=2"])
    assert out2["variants"] == 1 and sorted(out2["missing"]) == sorted(set(VARIANTS) - {MAIN})
    assert out2["curves"] == ["finetune_answerer_r2", "pretrain_localizer", "refine_qvh_sr_r2", "refine_sr_r2"]
    assert not Path(cfg.paths.reports, "curves", "refine_sr_r1.json").exists()  # the folder is rebuilt


def test_the_deployment_registers_with_its_schedule_and_parameters():
    from prefect.client.orchestration import get_client

    from flows.deploy import build_deployment

    repo_params = Path(__file__).resolve().parents[2] / "params.yaml"
    dep_id = build_deployment(repo_params, cron="0 3 * * *", name="nightly-test").apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("sevila-refine-round/nightly-test")
    assert dep.id == dep_id and dep.entrypoint == "flows/refine_rounds.py:refine_round"
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
    assert dep.parameters == {"round": None, "params": str(repo_params), "max_rounds": 3, "min_improvement": 0.5}
    assert dep.global_concurrency_limit.limit == 1
