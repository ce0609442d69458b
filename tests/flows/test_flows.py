"""The flows on a temporary Prefect server (one per session) and the tiny DVC project: the pipeline flow builds
every stage through DVC and leaves `dvc status` clean, the round of the graph reruns nothing, round 2 (outside
the graph) really starts from round 1's models and is versioned by rounds/round2.dvc, the stopping rule on disk,
the ablation sweep on threads and on Dask, the flow run's name and its stage logs in Prefect, and each flow run
grouped under one MLflow parent run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flows.pipeline import Runner, sweep
from flows.refine_rounds import refine_round
from sevila.experiments.dvc_graph import round_file, upstream
from sevila import tracking
from sevila.config import AnswererId, load_config

from ..dvc_projects import MAIN, VARIANTS, dvc_status

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def two_rounds(tiny_project):
    """refine_round run twice, as a user (or the schedule) would: round 1 (the graph's, built by the pipeline),
    then round 2 (outside the graph)."""
    first = refine_round(round=1, params=str(tiny_project))
    second = refine_round(round=2, params=str(tiny_project))
    return first, second


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_pipeline_runs_every_stage_through_dvc_and_dvc_status_is_clean(pipeline_run):
    params, result = pipeline_run["params"], pipeline_run["result"]
    root, cfg = params.parent, load_config(params)
    assert list(result) == list(upstream(root))  # one task per stage of dvc.yaml, upstream first
    assert dvc_status(params) == {}  # dvc.lock describes exactly what is on disk
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(result)
    # each task's result is its stage's metrics file
    for v in VARIANTS:
        assert result[f"evaluate@{v}"] == _json(Path(cfg.paths.runs, "round1", "eval", v, "metrics.json"))
    assert result["pretrain_localizer"] == _json(Path(cfg.paths.reports, "pretrain_localizer.json"))
    assert result["pseudo_label"] == _json(Path(cfg.paths.runs, "round1", "pseudo_label_stats.json"))
    assert result["report"] == {} and result["prepare"] == {}  # stages that declare no metrics file
    # the stages' MLflow runs nest under the flow run's parent run (DVC passes the environment on)
    runs = tracking.runs_frame()
    new = runs[~runs["run_id"].isin(pipeline_run["runs_before"])].sort_values("start_time")
    parent = new[new["run_name"] == "prefect-pipeline"]["run_id"].iloc[0]  # this fixture's flow ran first
    kids = set(runs[runs["parent_run_id"] == parent]["run_name"])
    assert {"pretrain_localizer", "refine_sr_r1", "refine_qvh_sr_r1", "finetune_answerer_r1", *VARIANTS} <= kids


def test_round_decisions_chain(two_rounds):
    first, second = two_rounds
    assert (first.round, first.variant, first.previous) == (1, MAIN, None)
    assert first.proceed and "no previous round" in first.reason  # round 1: only max_rounds stops it
    assert first.overrides == ("round=1",)
    assert second.round == 2 and second.previous == first.accuracy
    assert second.overrides == ("round=2", "pseudo_label.answerer=finetuned")
    assert second.proceed is (second.accuracy - first.accuracy >= 0.5)  # the default min_improvement


def test_round_2_is_versioned_by_its_dvc_file_and_dvc_lock_stays_true(two_rounds, tiny_project):
    root, cfg = tiny_project.parent, load_config(tiny_project)
    lock_before = (root / "dvc.lock").read_text()
    dvc_file = round_file(root, 2)
    outs = {o["path"]: o for o in yaml.safe_load(dvc_file.read_text())["outs"]}
    assert sorted(outs) == sorted([
        "../runs/round2/pseudo_labels.jsonl", "../runs/round2/pseudo_label_stats.json",
        "../models/localizer/sr_r2", "../models/localizer/qvh_sr_r2", "../reports/refine_localizer_r2.json",
        "../models/answerer/finetuned_r2", "../reports/finetune_answerer_r2.json",
        f"../runs/round2/eval/{MAIN}/predictions.jsonl", f"../runs/round2/eval/{MAIN}/metrics.json"])
    # every output is hashed and its content is in DVC's cache (a directory: its .dir listing)
    for o in outs.values():
        md5 = o["md5"]
        assert (root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()
    assert dvc_status(tiny_project) == {}  # the graph (round 1) and round 2's .dvc file are both up to date
    assert (root / "dvc.lock").read_text() == lock_before
    assert not round_file(root, 1).exists()  # round 1 is the graph's: dvc.lock versions it
    assert _json(Path(cfg.paths.runs, "round2", "eval", MAIN, "metrics.json"))["accuracy"] == two_rounds[1].accuracy


def test_round_2_refines_round_1s_localizers(two_rounds, tiny_project):
    cfg = load_config(tiny_project)
    r1 = _json(Path(cfg.paths.reports, "refine_localizer_r1.json"))
    r2 = _json(Path(cfg.paths.reports, "refine_localizer_r2.json"))
    assert {k: (v["from"], v["from_round"]) for k, v in r1["localizers"].items()} == {
        "sr": ("none", None), "qvh_sr": ("qvh", None)}  # round 1: the backbone's / the pre-trained Localizer
    assert {k: (v["from"], v["from_round"]) for k, v in r2["localizers"].items()} == {
        "sr": ("sr", 1), "qvh_sr": ("qvh_sr", 1)}
    for name in ("sr_r1", "qvh_sr_r1", "sr_r2", "qvh_sr_r2"):
        assert Path(cfg.paths.models, "localizer", name, "trainable.safetensors").is_file()
    assert Path(cfg.paths.models, "answerer", "finetuned_r2", "trainable.safetensors").is_file()


def test_round_2_pseudo_labels_come_from_round_1s_finetuned_answerer(two_rounds, tiny_project):
    """Recompute one clip's pseudo-labels with the round-1 fine-tuned Answerer: round 2's file holds exactly
    those margins, and they differ from round 1's (made by the zero-shot Answerer)."""
    from sevila.stages.common import split_clips, load_model, read_split
    from sevila.stages.pseudo_label import label_clip, label_file, read_labels

    cfg = load_config(tiny_project, ["round=2", "pseudo_label.answerer=finetuned"])
    model = load_model(cfg, answerer=AnswererId.FINETUNED, round_=1)
    records = [r for r in read_split(cfg, "train") if r.answer is not None]
    clip = next(iter(split_clips(cfg, model, records)))
    expected = label_clip(model, clip.features, clip.records)
    round1, round2 = read_labels(label_file(cfg, 1)), read_labels(label_file(cfg, 2))
    assert all(row["round"] == 2 for row in round2.values()) and set(round1) == set(round2)
    for rec, exp in zip(clip.records, expected):
        assert round2[rec.qid]["margins"] == exp["margins"]
    assert any(round1[q]["margins"] != round2[q]["margins"] for q in round1)


def test_each_round_is_one_parent_run_and_dvc_reruns_nothing_of_the_graphs_round(two_rounds):
    runs = tracking.runs_frame()
    seen_flow_runs = set()
    for d in two_rounds:
        parent = runs[runs["run_id"] == d.mlflow_run_id].iloc[0]
        assert parent["run_name"] == f"refine-round-{d.round}" and parent["round"] == d.round
        assert parent["status"] == "FINISHED" and parent["metrics.accuracy"] == pytest.approx(d.accuracy)
        assert parent["tags.proceed"] == ("true" if d.proceed else "false")
        seen_flow_runs.add(parent["tags.prefect_flow_run_id"])
    assert len(seen_flow_runs) == 2  # one parent per flow run
    first, second = two_rounds
    # round 1 is the graph's round, built by the pipeline: DVC finds its stages up to date and runs none
    assert runs[runs["parent_run_id"] == first.mlflow_run_id].empty
    children = runs[runs["parent_run_id"] == second.mlflow_run_id]
    assert sorted(children["run_name"]) == sorted(
        ["pseudo_label_r2", "refine_sr_r2", "refine_qvh_sr_r2", "finetune_answerer_r2", MAIN])
    assert set(children["round"]) == {2} and set(children["status"]) == {"FINISHED"}


def _flow_run_logs(name: str) -> list[str]:
    """The messages of the flow run called `name` and of its task runs, read back from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # the run logs reach the server in batches
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return [log.message for log in logs]


def test_flow_runs_are_named_after_their_round_and_hold_the_stages_output(two_rounds, pipeline_run):
    # a round outside the graph: the `sevila stage` process's own output (its metrics JSON), line by line
    round2 = _flow_run_logs("refine-round-2")
    assert '  "round": 2,' in round2 and any(m.startswith('  "questions": ') for m in round2)
    # the graph's round: DVC's output (it found the stages up to date)
    assert "Stage 'pseudo_label' didn't change, skipping" in _flow_run_logs("refine-round-1")


def test_the_schedule_resumes_on_disk_and_stops_when_told(two_rounds, tiny_project):
    # both rounds are on disk: with max_rounds=2 a scheduled (round=None) run does nothing at all
    before = len(tracking.runs_frame())
    d = refine_round(params=str(tiny_project), max_rounds=2)
    assert d.round is None and not d.proceed and d.reason == "nothing to do: round 2 reached max_rounds=2"
    assert len(tracking.runs_frame()) == before
    # named after the round it resolved to (none), never "refine-round-next"
    assert "Finished in state Completed()" in _flow_run_logs("refine-round-none")


def test_a_round_without_its_inputs_says_what_is_missing(two_rounds, tiny_project):
    with pytest.raises(FileNotFoundError, match=r"answerer/finetuned_r4 \(made by finetune_answerer of round 4\)"):
        refine_round(round=5, params=str(tiny_project))


def test_the_graphs_round_takes_its_settings_from_params_yaml_only(tiny_project):
    with pytest.raises(ValueError, match=r"round 1 is the DVC graph's round .* edit params.yaml or use dvc exp run"):
        refine_round(round=1, params=str(tiny_project), overrides=["frames.bad_video=skip"])


def test_ablation_sweep_on_threads_and_on_dask(tiny_project):
    cfg = load_config(tiny_project)
    on_threads = sweep(str(tiny_project), runner=Runner.THREADS, workers=2)
    assert set(on_threads) == set(VARIANTS)
    for name, metrics in on_threads.items():
        assert metrics == _json(Path(cfg.paths.runs, "round1", "eval", name, "metrics.json"))
    on_dask = sweep(str(tiny_project), variants=["voting", "f8k2_none"], runner=Runner.DASK, workers=1)
    assert {k: v["accuracy"] for k, v in on_dask.items()} == {k: on_threads[k]["accuracy"] for k in on_dask}
    # each sweep is one parent run; DVC found every variant up to date, so no stage ran (no nested run)
    runs = tracking.runs_frame()
    parents = runs[runs["run_name"] == "prefect-ablation-sweep"]
    assert len(parents) >= 2 and runs["parent_run_id"].isin(parents["run_id"]).sum() == 0
    assert dvc_status(tiny_project) == {}


def test_report_stage_tables_this_rounds_variants_and_loss_curves(two_rounds, tiny_project, tmp_path):
    """The DVC `report` stage (the pipeline's last task): round 1 has every variant; round 2 (into another
    reports folder, so the graph's outputs stay as dvc.lock says) only the main one, the others listed as
    missing, not taken from round 1; loss curves come from the MLflow history."""
    from sevila.stages import run_stage

    cfg = load_config(tiny_project)
    records = _json(Path(cfg.paths.reports, "ablations.json"))
    assert sorted(r["variant"] for r in records) == sorted(VARIANTS)
    for r in records:
        on_disk = _json(Path(cfg.paths.runs, "round1", "eval", r["variant"], "metrics.json"))
        assert r["round"] == 1 and r["accuracy"] == pytest.approx(on_disk["accuracy"])
    md = Path(cfg.paths.reports, "ablations.md").read_text(encoding="utf-8")
    assert f"| 8 | 2 | {MAIN} |" in md  # Table 7 borrows the full-SeViLA components row
    assert sorted(p.stem for p in Path(cfg.paths.reports, "curves").glob("*.json")) == [
        "finetune_answerer_r1", "finetune_answerer_uniform_r1", "pretrain_localizer", "refine_qvh_sr_r1",
        "refine_sr_r1"]
    refine = _json(Path(cfg.paths.reports, "refine_localizer_r1.json"))
    curve = _json(Path(cfg.paths.reports, "curves", "refine_sr_r1.json"))
    assert [p["step"] for p in curve] == list(range(1, refine["localizers"]["sr"]["steps"] + 1))
    assert curve[-1]["loss"] == pytest.approx(refine["localizers"]["sr"]["final_loss"])

    out2 = run_stage("report", str(tiny_project), ("round=2", f"paths.reports={tmp_path}"))
    assert out2["variants"] == 1 and sorted(out2["missing"]) == sorted(set(VARIANTS) - {MAIN})
    assert out2["curves"] == ["finetune_answerer_r2", "pretrain_localizer", "refine_qvh_sr_r2", "refine_sr_r2"]


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
