"""The Prefect tasks every flow uses, each a thin wrapper of the library (sevila.experiments.rounds): one stage of
the DVC graph run through DVC (`dvc_stage`), one stage of a round outside the graph (`stage_outside`), and the
versioning of such a round (`version_round`). The stage's child process streams its output (DVC's and the
stage's own logging) line by line into the Prefect run log; a task returns the stage's metrics file as dvc.yaml
declares it.

MLflow nesting across task runners: `tracking.parent_run` exports $SEVILA_PARENT_RUN_ID / $MLFLOW_TRACKING_URI
in the flow's process, which thread-pool tasks share and pass on to DVC and the stage. A Dask worker is another
process started before the flow body opened its parent run, so tasks also receive the parent explicitly
(`ParentRun`) and adopt it when their process does not have it yet.

Cancellation: a cancelled or interrupted flow run ends every stage process it started (the child's whole process
group: dvc and the `sevila stage` under it; sevila.experiments.processes), so no stage trains on after the run
that asked for it is gone.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from sevila.experiments import rounds
from sevila.experiments.processes import stop_all
from sevila.tracking import PARENT_RUN_ENV, TRACKING_URI_ENV

RETRIES = 1  # a stage that failed (e.g. a killed worker) runs once more; DVC deletes its outputs before it reruns
RETRY_DELAY_S = 5


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

    flow_run_id = flow_run.id
    extra = dict(tags)  # None values are dropped by rounds.mlflow_parent
    if flow_run_id:
        extra["prefect_flow_run_id"] = str(flow_run_id)
    with rounds.mlflow_parent(name, dataset, **extra) as run:
        try:
            yield ParentRun(run.run_id, run.uri)
        except BaseException:
            stop_all()  # a failed, cancelled or interrupted flow run leaves no stage running (e.g. in a pool thread)
            raise


def run_log() -> Callable[[str], object]:
    """The Prefect run logger of the task or flow run this is called from (plain logging outside one)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger().info
    except MissingContextError:  # called as `.fn()`, outside a flow or task run
        return logging.getLogger(__name__).info


@task(name="dvc-stage", task_run_name="{stage}", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S,
      cache_policy=NO_CACHE)
def dvc_stage(stage: str, root: str, parent: ParentRun | None = None) -> dict:
    """One stage of the DVC graph through DVC (sevila.experiments.rounds.run_in_graph)."""
    adopt(parent)
    return rounds.run_in_graph(root, stage, run_log())


@task(name="stage", task_run_name="{stage}", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S,
      cache_policy=NO_CACHE)
def stage_outside(stage: str, root: str, overrides: Sequence[str] = (), parent: ParentRun | None = None) -> dict:
    """One stage with settings the graph does not have (sevila.experiments.rounds.run_outside)."""
    adopt(parent)
    return rounds.run_outside(root, stage, overrides, run_log())


@task(name="version-round", task_run_name="version round {round_}", cache_policy=NO_CACHE)
def version_round(root: str, round_: int, stages: Sequence[str], overrides: Sequence[str] = ()) -> str:
    """`rounds/round<N>.dvc` for a round run outside the graph (sevila.experiments.rounds.version_round)."""
    return rounds.version_round(root, round_, stages, overrides, run_log())


@dataclass(frozen=True)
class PrefectRunner:
    """A round's stages as Prefect tasks (sevila.experiments.rounds.StageRunner), nesting under `parent`."""

    root: str
    parent: ParentRun

    def in_graph(self, stage: str) -> dict:
        return dvc_stage(stage, self.root, self.parent)

    def outside(self, stage: str, overrides: Sequence[str]) -> dict:
        return stage_outside(stage, self.root, list(overrides), self.parent)

    def version(self, round_: int, stages: Sequence[str], overrides: Sequence[str]) -> str:
        return version_round(self.root, round_, list(stages), list(overrides))
