"""Benchmark data: one reader per official annotation format into one canonical record (`records`), video decoding
(`video`), validation with Great Expectations (`validation`), and the real annotation excerpts the tests and
`sevila rehearse` read (`realdata/`, with SOURCES.md: where each file comes from, byte for byte, and its licence)."""
from __future__ import annotations

import os
from pathlib import Path

#: verbatim excerpts of the real annotation files (NExT-QA, STAR, How2QA, TVQA, VLEP, QVHighlights, SeViLA's JSON),
#: shipped inside the package so a clone (or an installed wheel) needs nothing beside it
REALDATA = Path(__file__).resolve().parent / "realdata"
REALDATA_ENV = "SEVILA_REALDATA"  # may point at another copy (e.g. a user's full files); never needed


def realdata_dir() -> Path:
    """The real annotation excerpts: $SEVILA_REALDATA when set, else the copy inside the package."""
    return Path(os.environ.get(REALDATA_ENV) or REALDATA)
