"""The Prefect tasks every flow uses: one pipeline stage, one evaluate variant. Both call
`sevila.stages.run_stage` and nothing else, so a flow runs exactly what `sevila stage NAME` runs.

MLflow nesting across task runners: `tracking.parent_run` exports $SEVILA_PARENT_RUN_ID / $MLFLOW_TRACKING_URI
in the flow's process, which thread-pool tasks share. A Dask worker is another process started before the flow
body opened its parent run, so tasks also receive the parent explicitly (`ParentRun`) and adopt it when their
process does not have it yet.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from sevila.stages import run_stage
from sevila.tracking import PARENT_RUN_ENV, TRACKING_URI_ENV


@dataclass(frozen=True)
class ParentRun:
    """An MLflow parent run a task's stage runs nest under: its id and the store that holds it."""

    run_id: str
    uri: str


def adopt(parent: ParentRun | None) -> None:
    """Make this process's stage runs nest under `parent` (a no-op where the flow's environment already says so).

    Set for the rest of the process rather than restored: a thread-pool task shares the flow's environment (which
    already holds the same values, so nothing changes), and a Dask worker lives only as long as its flow run's
    cluster. Restoring would race between concurrent tasks of one process."""
    if parent is None or os.environ.get(PARENT_RUN_ENV) == parent.run_id:
        return
    os.environ[PARENT_RUN_ENV] = parent.run_id
    os.environ[TRACKING_URI_ENV] = parent.uri


@contextlib.contextmanager
def flow_parent_run(name: str, dataset: str, **tags: object) -> Iterator[ParentRun]:
    """The one MLflow parent run of a flow run, tagged with the Prefect flow run id (when there is one)."""
    from prefect.runtime import flow_run

    from sevila import tracking

    flow_run_id = flow_run.id
    extra = {k: str(v) for k, v in tags.items() if v is not None}
    if flow_run_id:
        extra["prefect_flow_run_id"] = str(flow_run_id)
    with tracking.parent_run(name, dataset, tags=extra) as run:
        yield ParentRun(run.run_id, run.uri)


def variant_overrides(variant: str) -> list[str]:
    """The override that restricts `evaluate` to one variant: what dvc.yaml's `evaluate@<variant>` passes."""
    return [f"evaluate.only=[{variant}]"]


@task(name="stage", task_run_name="{name}", cache_policy=NO_CACHE)
def stage(name: str, params: str = "params.yaml", overrides: Sequence[str] = (),
          parent: ParentRun | None = None) -> dict:
    """One pipeline stage, `sevila stage NAME -o ...` in-process; returns the stage's metrics."""
    adopt(parent)
    return run_stage(name, params, tuple(overrides))


@task(name="evaluate", task_run_name="evaluate@{variant}", cache_policy=NO_CACHE)
def evaluate_variant(variant: str, params: str = "params.yaml", overrides: Sequence[str] = (),
                     parent: ParentRun | None = None) -> dict:
    """One ablation variant (DVC's evaluate@<variant>); returns that variant's metrics."""
    adopt(parent)
    return run_stage("evaluate", params, (*overrides, *variant_overrides(variant)))[variant]
