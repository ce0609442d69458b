"""Real processes on a real SQLite store: a brand-new store opened by two processes at once, and runs whose
process is killed (SIGKILL: found and marked KILLED later; SIGTERM: closed KILLED on the way out)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sevila import tracking as tr

REPO = Path(__file__).resolve().parents[2]

# A child that waits for a common start time (so the two processes open the new store together), opens a run,
# then either closes it or, with "hold", announces its run id and sleeps until it is killed.
CHILD = textwrap.dedent("""
    import sys, time
    from sevila import tracking as tr
    import mlflow  # noqa: F401  (imported before the start line, so both children reach it together)
    uri, start, name, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    while time.time() < start:
        time.sleep(0.001)
    with tr.start_run("synth", tr.Phase.EVALUATE, None, tr.RunTags(variant=name), uri=uri) as run:
        run.log_metrics({"accuracy": 50.0})
        if mode == "hold":
            print(run.run_id, flush=True)
            time.sleep(600)
    print(run.run_id, flush=True)
""")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (tr.TRACKING_URI_ENV, tr.PARENT_RUN_ENV)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _child(uri: str, start: float, name: str, mode: str = "close") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, uri, str(start), name, mode], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_on_a_brand_new_store_both_record_their_run(tmp_path):
    # Two processes opening one fresh store at the same instant: without the schema lock one of them dies in
    # MLflow's schema creation ("table ... already exists" / Alembic "expected to match one row").
    uris = [f"sqlite:///{tmp_path / 'mlflow.db'}"]
    start = time.time() + 8  # after the children have imported MLflow
    procs = [(uri, _child(uri, start, f"v{j}")) for uri in uris for j in range(2)]
    outs = [(uri, p.communicate(timeout=180), p.returncode) for uri, p in procs]
    for uri, (out, err), rc in outs:
        assert rc == 0, f"{uri}: child failed:\n{err[-3000:]}"
    for uri in uris:
        runs = tr.runs_frame(uri=uri)
        assert sorted(runs["variant"]) == ["v0", "v1"]
        assert set(runs["status"]) == {"FINISHED"}
        assert sorted(runs["run_id"]) == sorted(o.strip() for u, (o, _), _ in outs if u == uri)
    assert tr.store_lock_path(Path(uris[0][len("sqlite:///"):])).is_file()  # the lock lives beside the db


def _wait_for_run_id(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline().strip()
    assert line, f"child ended before opening its run:\n{proc.stderr.read()[-3000:]}"
    return line


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv(tr.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(tr.PARENT_RUN_ENV, raising=False)
    uri = tr.configure(tmp_path / "mlflow.db")
    yield uri
    tr.configure(None)


def test_a_run_whose_process_was_sigkilled_is_marked_killed_by_the_next_run(store):
    proc = _child(store, 0, "doomed", "hold")
    run_id = _wait_for_run_id(proc)
    c = tr.client(store)
    owner = c.get_run(run_id).data.tags[tr.OWNER_TAG]
    assert owner.split(":")[1] == str(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert c.get_run(run_id).info.status == "RUNNING"  # nobody closed it
    with tr.start_run("synth", tr.Phase.EVALUATE, None, tr.RunTags(variant="next")):
        pass
    got = c.get_run(run_id)
    assert got.info.status == "KILLED"
    assert got.info.end_time is not None
    assert f"process {proc.pid}" in got.data.tags[tr.END_REASON_TAG]


def test_report_reaps_a_killed_run_and_leaves_live_and_foreign_runs_alone(store, tmp_path):
    proc = _child(store, 0, "doomed", "hold")
    dead = _wait_for_run_id(proc)
    live_proc = _child(store, 0, "alive", "hold")
    live = _wait_for_run_id(live_proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    c = tr.client(store)
    exp = c.get_experiment_by_name("sevila/synth/evaluate").experiment_id
    foreign = c.create_run(exp, run_name="elsewhere", tags={tr.OWNER_TAG: "another-host:1:1"}).info.run_id
    try:
        from sevila.cli import main as sevila_main

        assert sevila_main(["report", "--uri", store, "--out", str(tmp_path / "rep"), "--no-log"]) == 0
        assert c.get_run(dead).info.status == "KILLED"
        assert c.get_run(live).info.status == "RUNNING"
        assert c.get_run(foreign).info.status == "RUNNING"
    finally:
        live_proc.kill()
        live_proc.wait(timeout=30)


def test_sigterm_ends_the_run_killed_and_the_process_with_143(store):
    proc = _child(store, 0, "stopped", "hold")
    run_id = _wait_for_run_id(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    got = tr.client(store).get_run(run_id)
    assert got.info.status == "KILLED"
    assert got.data.metrics == {"accuracy": 50.0}  # what was logged before the signal stays


def test_owner_tag_round_trip_and_a_reused_pid_is_not_alive():
    me = tr.tracking_owner.this_process()
    assert tr.tracking_owner.Owner.parse(me.tag()) == me
    assert tr.tracking_owner.is_alive(me)
    assert not tr.tracking_owner.is_alive(tr.tracking_owner.Owner(me.host, me.pid, "1"))  # same pid, other start
    assert tr.tracking_owner.Owner.parse("garbage") is None


def test_a_store_whose_lock_file_cannot_be_made_still_opens(tmp_path):
    # (as on a read-only share; simulated with a folder in the lock file's place, since root ignores modes)
    db = tmp_path / "ro" / "mlflow.db"
    tr.store_lock_path(db).mkdir(parents=True)
    c = tr.client(f"sqlite:///{db}")
    assert [e.name for e in c.search_experiments()] == ["Default"]
