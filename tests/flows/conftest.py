"""Fixtures of the flow tests: one temporary Prefect server per session (prefect_test_harness, ~10-20 s) and
one tiny DVC project (tests/dvc_projects.py) built by the pipeline flow, i.e. through DVC."""
from __future__ import annotations

from pathlib import Path

import pytest

from sevila import tracking

from ..dvc_projects import make_dvc_project


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from the temporary server
    with prefect_test_harness(server_startup_timeout=120):
        yield
    mp.undo()


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, prefect_server) -> dict:
    """The tiny project built by the pipeline flow, i.e. by DVC (every stage of round 1, every variant, the
    report): {"params": its params.yaml, "result": the flow's return value, "runs_before": the MLflow run ids
    that existed before it (the session's store is shared: other tests' flows have parent runs there too)}."""
    from flows.pipeline import pipeline

    before = tracking.runs_frame()
    params = make_dvc_project(tmp_path_factory.mktemp("flows") / "project")
    return {"params": params, "result": pipeline(params=str(params)),
            "runs_before": set(before["run_id"]) if not before.empty else set()}


@pytest.fixture(scope="session")
def tiny_project(pipeline_run) -> Path:
    return pipeline_run["params"]
