"""The Prefect tasks called directly (`.fn()`: no Prefect engine, no server): a task runs its stage through DVC
and returns the metrics file dvc.yaml declares, a round outside the graph is versioned by a .dvc file, a task
adopts the flow's MLflow parent run, and the Dask dashboard listens on the loopback only. The DVC projects here
are tiny: stages that are shell commands, so every test runs in seconds."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.pipeline import Runner, select_variants, task_runner
from flows.tasks import ParentRun, adopt, dvc_stage, version_round
from sevila import tracking
from sevila.experiments.dvc_graph import resolved, round_file, settings, upstream
from sevila.experiments.processes import StageFailed

from ..dvc_projects import REPO, dvc_status, mini_project


def test_dvc_stage_runs_through_dvc_and_returns_the_metrics_file(tmp_path):
    params = mini_project(tmp_path / "p")
    root = str(params.parent)
    assert dvc_stage.fn("make", root) == {"round": 1, "made": 1}
    assert dvc_stage.fn("score@a", root) == {"accuracy": 50.0}
    lock = yaml.safe_load((params.parent / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"make", "score@a"}
    assert upstream(params.parent) == {"make": [], "score@a": ["make"], "score@b": ["make"]}
    mtime = (params.parent / "runs" / "make_r1.json").stat().st_mtime_ns
    assert dvc_stage.fn("make", root) == {"round": 1, "made": 1}  # up to date: DVC runs nothing
    assert (params.parent / "runs" / "make_r1.json").stat().st_mtime_ns == mtime
    with pytest.raises(StageFailed, match=r"repro --single-item nope` exited with status"):
        dvc_stage.fn("nope", root)


def test_a_round_outside_the_graph_is_versioned_by_its_dvc_file(tmp_path):
    params = mini_project(tmp_path / "p")
    root = params.parent
    for stage in upstream(root):
        dvc_stage.fn(stage, str(root))
    lock = (root / "dvc.lock").read_text()
    # round 2 of `make` with the stage's own command, outside the graph (sevila stage is not in this project:
    # run dvc.yaml's command as DVC renders it for round 2)
    subprocess.run(resolved(root, "make", settings(root, ["round=2"]))["cmd"], shell=True, cwd=root, check=True)
    with pytest.raises(FileNotFoundError, match=r"round 3: outputs dvc.yaml declares were not written: .*models/m_r3"):
        version_round.fn(str(root), 3, ["make"], ["round=3"])
    with pytest.raises(KeyError, match="dvc.yaml has no stage 'score@zzz'"):  # not a variant of the foreach
        version_round.fn(str(root), 2, ["make", "score@zzz"], ["round=2"])
    assert not round_file(root, 2).exists() and not round_file(root, 3).exists()
    path = version_round.fn(str(root), 2, ["make"], ["round=2"])
    assert path == str(root / "rounds" / "round2.dvc")
    outs = yaml.safe_load(Path(path).read_text())["outs"]
    assert [o["path"] for o in outs] == ["../models/m_r2", "../runs/make_r2.json"]
    assert all(o["md5"] for o in outs)
    assert dvc_status(params) == {}  # round 1's stages (dvc.lock) and round 2's .dvc file are up to date
    assert (root / "dvc.lock").read_text() == lock  # the graph's record is untouched
    (root / "models" / "m_r2" / "w").write_text("changed\n")
    assert dvc_status(params) == {"rounds/round2.dvc": [{"changed outs": {"models/m_r2": "modified"}}]}












def test_a_task_adopts_the_flows_parent_run(monkeypatch):
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, "flow-parent")
    monkeypatch.setenv(tracking.TRACKING_URI_ENV, "sqlite:///flow.db")
    adopt(ParentRun("flow-parent", "sqlite:///other.db"))  # a thread of the flow's process: nothing changes
    assert os.environ[tracking.TRACKING_URI_ENV] == "sqlite:///flow.db"
    adopt(None)
    assert os.environ[tracking.PARENT_RUN_ENV] == "flow-parent"
    monkeypatch.delenv(tracking.PARENT_RUN_ENV)
    adopt(ParentRun("abc", "sqlite:///w.db"))  # a worker process started before the flow's parent run
    assert (os.environ[tracking.PARENT_RUN_ENV], os.environ[tracking.TRACKING_URI_ENV]) == ("abc", "sqlite:///w.db")


def test_select_variants():
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
    assert dask.cluster_kwargs == {"n_workers": 4, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
                                   "dashboard_address": "127.0.0.1:8787"}
    assert task_runner("dask", 1, address="tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    with pytest.raises(ValueError, match="workers must be >= 1"):
        task_runner(Runner.THREADS, 0)


def _listening(runner) -> set[str]:
    """The addresses the local cluster's scheduler dashboard (its HTTP server) listens on."""
    runner.client  # the runner starts its cluster with its client, on first use
    server = runner._cluster.scheduler.http_server
    return {sock.getsockname()[0] for sock in server._sockets.values()} if server else set()


def test_the_dask_dashboard_listens_on_the_loopback_only():
    runner = task_runner(Runner.DASK, 1)
    with runner:
        assert _listening(runner) == {"127.0.0.1"}  # Dask's default (":8787") is every interface
        assert runner._cluster.scheduler.address.startswith("tcp://127.0.0.1:")


def test_the_flows_give_prefects_temporary_server_time_to_start():
    # issue 24: the flows' commands used Prefect's 20 s default, which a busy 2-core machine misses
    import subprocess
    import sys

    code = ("import flows.pipeline; from prefect.settings import get_current_settings; "
            "print(get_current_settings().server.ephemeral.startup_timeout_seconds)")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "120"
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"  # the user's own value wins
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "300"
