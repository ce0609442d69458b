"""A cancelled flow run (the Prefect runner's cancel: control intent "cancel", then SIGTERM) ends Cancelled in
Prefect, not Failed or Crashed, and ends the stage process it was running (dvc and the command under it) instead
of leaving it to train on. Run on the temporary Prefect server with a one-stage DVC project whose stage sleeps."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import yaml

from flows.pipeline import pipeline
from sevila.experiments import processes

from ..dvc_projects import mini_project

pytestmark = pytest.mark.usefixtures("prefect_server")


def _cancel_when_a_stage_runs(pids: list[int]) -> None:
    """What the runner does to cancel a flow run it supervises: set the control intent, then SIGTERM."""
    from prefect._internal import control_listener

    deadline = time.monotonic() + 120
    while not processes._children and time.monotonic() < deadline:
        time.sleep(0.1)
    pids.extend(p.pid for p in processes._children)
    time.sleep(1.0)
    control_listener._set_intent("cancel")
    signal.raise_signal(signal.SIGTERM)  # handled in the main thread: the flow engine's TerminationSignal


def test_a_cancelled_flow_run_ends_cancelled_and_stops_its_stage(tmp_path):
    from prefect._internal import control_listener
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.exceptions import TerminationSignal

    params = mini_project(tmp_path / "p")
    (params.parent / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"slow": {"cmd": "echo started && sleep 120"}}}))
    pids: list[int] = []
    killer = threading.Thread(target=_cancel_when_a_stage_runs, args=(pids,), daemon=True)
    killer.start()
    try:
        with pytest.raises(TerminationSignal):
            pipeline.with_options(flow_run_name="cancel-me")(params=str(params))
    finally:
        control_listener.clear_intent()
    killer.join(10)
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["cancel-me"])))
    assert run.state.type.value == "CANCELLED"
    assert pids and not processes._children  # the stage's process (group) was ended with the flow run
    with pytest.raises(ProcessLookupError):
        os.killpg(pids[0], 0)
    assert not (params.parent / "dvc.lock").exists()  # DVC recorded nothing for the stage that did not finish
