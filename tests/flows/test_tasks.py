"""The tasks and helpers of flows/ called directly (`.fn()`: no Prefect engine, no server): they run exactly
what `sevila stage` runs, and they adopt the flow's MLflow parent run in a process that lacks it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flows import tasks
from flows.pipeline import Runner, chain_stages, select_variants, task_runner
from flows.tasks import ParentRun, adopt, evaluate_variant, stage, variant_overrides
from sevila import tracking
from sevila.config import load_config


def test_stage_task_is_run_stage(tiny_project, monkeypatch):
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    cfg = load_config(tiny_project)
    stats = stage.fn("pseudo_label", str(tiny_project), ["round=1"])
    written = json.loads(Path(cfg.paths.runs, "round1", "pseudo_label_stats.json").read_text())
    assert stats == written and stats["round"] == 1 and stats["questions"] > 0


def test_evaluate_task_runs_one_variant_and_nests_under_the_given_parent(tiny_project, monkeypatch):
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    cfg = load_config(tiny_project)
    with tracking.parent_run("probe-parent", "synth") as parent:
        ref = ParentRun(parent.run_id, parent.uri)
    # the parent's block is over: this process no longer has it, as a fresh Dask worker would not
    assert tracking.PARENT_RUN_ENV not in os.environ
    metrics = evaluate_variant.fn("voting", str(tiny_project), [], ref)
    on_disk = json.loads(Path(cfg.paths.runs, "round1", "eval", "voting", "metrics.json").read_text())
    assert metrics == on_disk and 0 <= metrics["accuracy"] <= 100
    runs = tracking.runs_frame("synth", "evaluate")
    mine = runs[runs["parent_run_id"] == parent.run_id]
    assert list(mine["run_name"]) == ["voting"] and list(mine["round"]) == [1]


def test_adopt_sets_the_parent_only_where_it_is_missing(monkeypatch):
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, "flow-parent")
    monkeypatch.setenv(tracking.TRACKING_URI_ENV, "sqlite:///flow.db")
    adopt(ParentRun("flow-parent", "sqlite:///other.db"))  # a thread of the flow's process: nothing changes
    assert os.environ[tracking.TRACKING_URI_ENV] == "sqlite:///flow.db"
    adopt(None)
    assert os.environ[tracking.PARENT_RUN_ENV] == "flow-parent"
    monkeypatch.delenv(tracking.PARENT_RUN_ENV)
    adopt(ParentRun("abc", "sqlite:///w.db"))  # a worker process started before the flow's parent run
    assert (os.environ[tracking.PARENT_RUN_ENV], os.environ[tracking.TRACKING_URI_ENV]) == ("abc", "sqlite:///w.db")


def test_pipeline_helpers():
    assert chain_stages() == ["prepare", "validate", "bootstrap", "pretrain_localizer", "pseudo_label",
                              "refine_localizer", "finetune_answerer"]
    assert variant_overrides("f8k1_qvh_sr") == ["evaluate.only=[f8k1_qvh_sr]"]  # what dvc.yaml passes
    assert select_variants(["a", "b", "c"], None) == ["a", "b", "c"]
    assert select_variants(["a", "b", "c"], ["c", "a", "c"]) == ["c", "a"]
    with pytest.raises(ValueError, match=r"unknown evaluate variant\(s\) \['z'\]; params.yaml defines"):
        select_variants(["a"], ["z"])


def test_task_runners():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    threads = task_runner(Runner.THREADS, 3)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    dask = task_runner(Runner.DASK, 4)
    assert isinstance(dask, DaskTaskRunner)
    assert dask.cluster_kwargs == {"n_workers": 4, "threads_per_worker": 1, "processes": True}
    assert task_runner("dask", 1, address="tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    with pytest.raises(ValueError, match="workers must be >= 1"):
        task_runner(Runner.THREADS, 0)


def test_tasks_call_run_stage_and_nothing_else(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks, "run_stage", lambda *a: calls.append(a) or {"v": {"accuracy": 1.0}})
    assert stage.fn("report", "p.yaml", ["round=2"]) == {"v": {"accuracy": 1.0}}
    assert evaluate_variant.fn("v", "p.yaml", ["round=2"]) == {"accuracy": 1.0}
    assert calls == [("report", "p.yaml", ("round=2",)), ("evaluate", "p.yaml", ("round=2", "evaluate.only=[v]"))]
