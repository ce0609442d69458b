"""Fixtures of the flow tests: one temporary Prefect server per session (prefect_test_harness, ~10-20 s) and
the tiny project of tests/conftest.py with a pre-trained Localizer, which the round flows build on."""
from __future__ import annotations

from pathlib import Path

import pytest

from sevila.config import load_config
from sevila.stages import pretrain_localizer

MAIN = "f8k2_qvh_sr"  # the full-SeViLA variant at the tiny config's 8 -> 2 frames (the stopping rule's metric)
BACKBONE_ONLY = {"localizer": "none", "answerer": "zero_shot"}  # these evaluate before any round has run
VARIANTS = {
    MAIN: {"study": "components", "n_frames": 8, "n_keyframes": 2, "localizer": "qvh_sr"},
    "f8k2_none": {"study": "components", "n_frames": 8, "n_keyframes": 2, "localizer": "none"},
    "uniform_k2": {"study": "baseline", "selector": "uniform", "n_frames": 8, "n_keyframes": 2, **BACKBONE_ONLY},
    "voting": {"study": "baseline", "selector": "all", "fusion": "vote", "n_frames": 8, **BACKBONE_ONLY},
}


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from the temporary server
    with prefect_test_harness(server_startup_timeout=120):
        yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_project(make_tiny_project) -> Path:
    """The tiny project (tests/conftest.py) with a pre-trained Localizer (round 1's inputs); returns its
    params.yaml."""
    params = make_tiny_project("flows", VARIANTS)
    pretrain_localizer.run(load_config(params))
    return params
