"""The one logging interface of the training loop (and of any stage that records numbers).

`RunLogger` is deliberately tiny, three methods, so that any backend fits behind it: `NullLogger` (tests,
non-zero DDP ranks) and an MLflow-backed logger that lives in `sevila/tracking.py`, the only module allowed to
talk to MLflow (docs/design.md §3); the tests add a JSONL file and an in-memory one. Code that logs takes a
`RunLogger` and never imports a backend.

Contract every implementation keeps:
- `log_metrics(metrics, step)`: numbers measured at optimizer step `step` (1-based: the count of updates done).
  Logging the same `(step, name)` twice is allowed and means "this value again": after a crash the training
  loop resumes from its last checkpoint and replays the steps since, which are bit-identical, so a reader keeps
  the last value per `(step, name)`.
- `log_params(params)`: the settings of the run, flat `name -> scalar`; called again with the same values on
  resume, so it must accept repeats.
- `log_artifact(path)`: a file, or a directory whose files are all recorded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class RunLogger(Protocol):
    """Where a run's metrics, parameters and artifacts go. See the module docstring for the contract."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path) -> None: ...


class NullLogger:
    """Records nothing (tests, and every DDP rank but 0)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None

    def log_artifact(self, path: str | Path) -> None:
        return None
