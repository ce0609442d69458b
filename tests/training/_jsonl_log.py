"""A `RunLogger` that appends JSON lines to a file, and its readers: the logger of the tests whose training runs in
other processes (DDP workers, a run killed mid-way and resumed), where an in-memory logger cannot follow.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping


class JsonlLogger:
    """One JSON object per line, appended atomically: `{"step": s, "metrics": {...}}`, `{"params": {...}}`,
    `{"artifact": "path"}`.

    Each record is a single `write` on a file opened with O_APPEND, so concurrent writers never interleave
    inside a line and a crash can at worst leave a torn *last* line, which `read_jsonl` ignores. Artifacts are
    recorded by path (the file stays where it is; a local log has nowhere better to copy it).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{self.path}: step must be a non-negative integer, got {step!r}")
        self._append({"step": step, "metrics": {str(k): float(v) for k, v in metrics.items()}})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._append({"params": {str(k): _jsonable(v) for k, v in params.items()}})

    def log_artifact(self, path: str | Path) -> None:
        self._append({"artifact": str(Path(path).resolve())})

    def _append(self, record: dict) -> None:
        data = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # a regular-file write is whole unless the disk is full; finish it if not
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value"), (str, int)):  # enums
        return value.value
    return str(value)


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete records of a `JsonlLogger` file. A torn final line (a crash mid-write) is dropped; a bad
    line anywhere else is an error naming the file and line."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    torn_tail = not raw.endswith("\n")
    records = []
    for i, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail and i == len(lines):
                break
            raise ValueError(f"{path}:{i}: not a JSON record ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        records.append(obj)
    return records


def read_metrics(path: str | Path) -> dict[int, dict[str, float]]:
    """Metrics of a `JsonlLogger` file as `{step: {name: value}}`, in step order; for a `(step, name)` logged
    more than once (a resumed run replays the steps after its last checkpoint) the last value wins."""
    out: dict[int, dict[str, float]] = {}
    for rec in read_jsonl(path):
        if "metrics" in rec:
            out.setdefault(int(rec["step"]), {}).update(rec["metrics"])
    return dict(sorted(out.items()))
