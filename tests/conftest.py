"""Shared fixtures. The real annotation excerpts live in ../shared/realdata beside the repo (CI lays a copy of
shared/ beside its clone); SEVILA_REALDATA overrides the location."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("SEVILA_REALDATA", REPO.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.fail(f"real annotation excerpts not found at {REALDATA} (set SEVILA_REALDATA)")
    return REALDATA


@pytest.fixture(autouse=True, scope="session")
def _isolated_mlflow_store(tmp_path_factory):
    """No test writes to the repo's mlflow.db: every run goes to a throwaway store unless a test sets its own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    yield
    mp.undo()
