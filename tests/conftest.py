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
