"""The DVC side of the flows and the tasks called directly (`.fn()`: no Prefect engine, no server): the task
graph is DVC's, a task runs its stage through DVC and returns the metrics file dvc.yaml declares, a round
outside the graph is versioned by a .dvc file, stage output streams line by line, an interrupted stage ends its
whole process group, and the Dask dashboard listens on the loopback only. The DVC projects here are tiny: stages
that are shell commands, so every test runs in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import tasks
from flows.graph import declared, project_root, render, round_file, settings, upstream
from flows.pipeline import Runner, select_variants, task_runner
from flows.tasks import ParentRun, adopt, dvc_stage, stage_outside, stream, variant_overrides, version_round
from sevila import tracking

from .conftest import MINI_DVC, REPO, dvc_status, make_dvc_project, mini_project

CHAIN = ["prepare", "validate", "bootstrap", "pretrain_localizer", "pseudo_label", "refine_localizer",
         "finetune_answerer", "finetune_answerer_uniform"]

def test_the_task_graph_is_dvcs(tmp_path):
    params = make_dvc_project(tmp_path / "p")
    needs = upstream(params.parent)
    variants = yaml.safe_load(params.read_text())["evaluate"]["variants"]
    assert list(needs) == CHAIN + [f"evaluate@{v}" for v in variants] + ["report"]  # dvc.yaml's order
    assert needs["prepare"] == [] and needs["validate"] == ["prepare"]
    assert needs["refine_localizer"] == ["bootstrap", "prepare", "pretrain_localizer", "pseudo_label"]
    assert needs["finetune_answerer"] == ["bootstrap", "prepare", "refine_localizer"]
    assert needs["finetune_answerer_uniform"] == ["bootstrap", "prepare"]  # no Localizer: beside the chain
    assert needs["report"] == sorted(f"evaluate@{v}" for v in variants)


def test_declared_renders_dvc_yamls_paths_for_any_round():
    ctx = settings(REPO, ["round=3"])
    outs, metrics = declared(REPO, "refine_localizer", ctx)
    assert outs == [REPO / "models/localizer/sr_r3", REPO / "models/localizer/qvh_sr_r3"]
    assert metrics == [REPO / "reports/refine_localizer_r3.json"]
    outs, metrics = declared(REPO, "evaluate@f8k1_qvh_sr", ctx)
    assert outs == [REPO / "runs/round3/eval/f8k1_qvh_sr/predictions.jsonl"]
    assert metrics == [REPO / "runs/round3/eval/f8k1_qvh_sr/metrics.json"]
    assert declared(REPO, "prepare", ctx)[1] == []
    with pytest.raises(KeyError, match=r"\$\{paths.nope\} is not set in params.yaml"):
        render("${paths.nope}/x", ctx)


def test_the_flows_accept_only_the_projects_params_yaml(tmp_path):
    params = mini_project(tmp_path / "p")
    assert project_root(params) == params.parent
    other = tmp_path / "p" / "other.yaml"
    other.write_text("round: 1\n")
    with pytest.raises(ValueError, match=r"other.yaml: the flows run the stages through DVC"):
        project_root(other)


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
    with pytest.raises(tasks.StageFailed, match=r"repro --single-item nope` exited with status"):
        dvc_stage.fn("nope", root)


def test_a_round_outside_the_graph_is_versioned_by_its_dvc_file(tmp_path):
    params = mini_project(tmp_path / "p")
    root = params.parent
    for stage in upstream(root):
        dvc_stage.fn(stage, str(root))
    lock = (root / "dvc.lock").read_text()
    # round 2 of `make` with the stage's own command, outside the graph (sevila stage is not in this project:
    # run the rendered command the same way the flow does)
    subprocess.run(render(MINI_DVC["stages"]["make"]["cmd"], {"round": 2}), shell=True, cwd=root, check=True)
    with pytest.raises(FileNotFoundError, match=r"round 2: outputs dvc.yaml declares were not written: .*runs/zzz"):
        version_round.fn(str(root), 2, ["make", "score@zzz"], ["round=2"])
    assert not round_file(root, 2).exists()
    path = version_round.fn(str(root), 2, ["make"], ["round=2"])
    assert path == str(root / "rounds" / "round2.dvc")
    outs = yaml.safe_load(Path(path).read_text())["outs"]
    assert [o["path"] for o in outs] == ["../models/m_r2", "../runs/make_r2.json"]
    assert all(o["md5"] for o in outs)
    assert dvc_status(params) == {}  # round 1's stages (dvc.lock) and round 2's .dvc file are up to date
    assert (root / "dvc.lock").read_text() == lock  # the graph's record is untouched
    (root / "models" / "m_r2" / "w").write_text("changed\n")
    assert dvc_status(params) == {"rounds/round2.dvc": [{"changed outs": {"models/m_r2": "modified"}}]}


def test_stage_outside_runs_sevila_stage_with_the_overrides(tmp_path, monkeypatch):
    params = mini_project(tmp_path / "p")
    seen = []

    def fake_run_logged(cmd, root):  # runs what dvc.yaml's cmd would for that stage at round 2
        seen.append(cmd)
        spec = MINI_DVC["stages"][cmd[4]]
        cmd_text = spec["do"]["cmd"] if "do" in spec else spec["cmd"]
        key = cmd[-1][len("evaluate.only=["):-1] if "evaluate.only" in cmd[-1] else ""
        subprocess.run(render(cmd_text, {"round": 2, "key": key}), shell=True, cwd=root, check=True)

    monkeypatch.setattr(tasks, "run_logged", fake_run_logged)
    assert stage_outside.fn("make", str(params.parent), ["round=2"]) == {"round": 2, "made": 1}
    assert seen == [[sys.executable, "-m", "sevila", "stage", "make", "-p", str(params), "-o", "round=2"]]
    assert stage_outside.fn("score@b", str(params.parent), ["round=2"]) == {"accuracy": 50.0}
    assert seen[-1][-4:] == ["-o", "round=2", "-o", "evaluate.only=[b]"]


def test_stream_passes_each_line_as_it_comes():
    lines = []
    rc = stream([sys.executable, "-c", "import sys; print('one'); print('two', file=sys.stderr); sys.exit(3)"],
                ".", lines.append)
    assert rc == 3 and lines == ["one", "two"]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return None


def test_an_interrupted_stage_ends_its_whole_process_group():
    """Cancelling (or Ctrl-C) while a stage runs ends dvc and the stage under it, not only the direct child."""
    script = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); "
              "time.sleep(60)")
    pids = []

    def log(line):
        pids.append(int(line))
        raise KeyboardInterrupt  # what the flow sees when it is interrupted

    with pytest.raises(KeyboardInterrupt):
        stream([sys.executable, "-c", script], ".", log)
    deadline = time.monotonic() + 10
    while _state(pids[0]) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(pids[0]) in (None, "Z")  # the grandchild (`sleep`) is gone too
    assert tasks.stop_all() == 0 and not tasks._children


def test_stop_all_ends_the_stages_still_running_from_other_threads():
    import threading

    t = threading.Thread(target=lambda: stream(["sleep", "60"], ".", lambda _: None), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not tasks._children and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tasks.stop_all() == 1
    t.join(10)
    assert not t.is_alive() and not tasks._children


def test_evaluate_overrides_and_the_parent_run(monkeypatch):
    assert variant_overrides("f8k1_qvh_sr") == ["evaluate.only=[f8k1_qvh_sr]"]  # what dvc.yaml passes
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
