"""The Prefect tasks every flow uses: one stage of the DVC graph run through DVC (`dvc_stage`), and one stage of a
round outside the graph (`stage_outside`, `sevila stage NAME -o round=N ...`). Both run a child process whose
output (DVC's and the stage's own logging) streams line by line into the Prefect run log, and both return the
stage's metrics file as dvc.yaml declares it (flows.graph).

MLflow nesting across task runners: `tracking.parent_run` exports $SEVILA_PARENT_RUN_ID / $MLFLOW_TRACKING_URI
in the flow's process, which thread-pool tasks share and pass on to DVC and the stage. A Dask worker is another
process started before the flow body opened its parent run, so tasks also receive the parent explicitly
(`ParentRun`) and adopt it when their process does not have it yet.

Cancellation: a cancelled or interrupted flow run ends every stage process it started (the child's whole process
group: dvc and the `sevila stage` under it), so no stage trains on after the run that asked for it is gone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.graph import (
    PARAMS_FILE, declared, dvc_command, read_metrics, repro_command, round_dvc_text, round_file, settings,
    stage_command,
)
from sevila.io import atomic_write_text
from sevila.repro import child_env
from sevila.tracking import PARENT_RUN_ENV, TRACKING_URI_ENV

RETRIES = 1  # a stage that failed (e.g. a killed worker) runs once more; DVC deletes its outputs before it reruns
RETRY_DELAY_S = 5
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long

_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


class StageFailed(RuntimeError):
    """A stage's process exited non-zero (its output is in the run log above)."""


def stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """End `proc` and everything it started (its own process group): SIGTERM, then SIGKILL after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_all() -> int:
    """End every stage process this process started that still runs; returns how many there were."""
    with _children_lock:
        procs = [p for p in _children if p.poll() is None]
    for p in procs:
        stop(p)
    return len(procs)


def stream(cmd: list[str], cwd: str | Path, log: Callable[[str], object]) -> int:
    """Run `cmd` in `cwd`, passing each line of its output (stdout and stderr) to `log` as it comes; returns the
    exit status. Interrupted (cancellation, Ctrl-C), it ends the child's process group before re-raising."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    with _children_lock:
        _children.add(proc)
    try:
        for line in proc.stdout:
            log(line.rstrip("\n"))
        return proc.wait()
    except BaseException:
        stop(proc)
        raise
    finally:
        proc.stdout.close()
        with _children_lock:
            _children.discard(proc)


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
        try:
            yield ParentRun(run.run_id, run.uri)
        except BaseException:
            stop_all()  # a failed, cancelled or interrupted flow run leaves no stage running (e.g. in a pool thread)
            raise


def variant_overrides(variant: str) -> list[str]:
    """The override that restricts `evaluate` to one variant: what dvc.yaml's `evaluate@<variant>` passes."""
    return [f"evaluate.only=[{variant}]"]


def run_logged(cmd: list[str], root: str | Path) -> None:
    """`stream` into the Prefect run logger of the task or flow run this is called from."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        log = get_run_logger()
    except MissingContextError:  # called as `.fn()`, outside a flow or task run
        log = logging.getLogger(__name__)
    rc = stream(cmd, root, log.info)
    if rc != 0:
        raise StageFailed(f"`{' '.join(cmd[1:])}` exited with status {rc} in {root}")


def stage_overrides(stage: str) -> list[str]:
    """`evaluate@<variant>` runs `evaluate` restricted to that variant (what dvc.yaml's foreach passes)."""
    name, _, key = stage.partition("@")
    return variant_overrides(key) if key else []


@task(name="dvc-stage", task_run_name="{stage}", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S,
      cache_policy=NO_CACHE)
def dvc_stage(stage: str, root: str, parent: ParentRun | None = None) -> dict:
    """One stage of the DVC graph, through DVC: `dvc repro --single-item STAGE` (nothing runs when DVC finds the
    stage up to date; dvc.lock records what ran). Returns the stage's metrics file (dvc.yaml); {} without one."""
    adopt(parent)
    run_logged(repro_command(stage), root)
    return read_metrics(root, declared(root, stage, settings(root))[1])


@task(name="stage", task_run_name="{stage}", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S,
      cache_policy=NO_CACHE)
def stage_outside(stage: str, root: str, overrides: Sequence[str] = (), parent: ParentRun | None = None) -> dict:
    """One stage with settings the graph does not have (a round N outside it): `sevila stage NAME -o ...` in the
    project; returns the metrics file dvc.yaml declares for those settings. Versioning is the flow's job."""
    adopt(parent)
    name = stage.partition("@")[0]
    run_logged(stage_command(name, Path(root, PARAMS_FILE), [*overrides, *stage_overrides(stage)]), root)
    return read_metrics(root, declared(root, stage, settings(root, overrides))[1])


@task(name="version-round", task_run_name="version round {round_}", cache_policy=NO_CACHE)
def version_round(root: str, round_: int, stages: Sequence[str], overrides: Sequence[str] = ()) -> str:
    """Version a round run outside the graph: `rounds/round<N>.dvc` lists every output and metrics file that
    dvc.yaml declares for `stages` at the round's settings, and `dvc commit` records their hashes and caches
    them (models, pseudo-labels, metrics). Returns the .dvc file (git-track it to keep the round)."""
    ctx = settings(root, overrides)
    paths = [p for s in stages for group in declared(root, s, ctx) for p in group]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"round {round_}: outputs dvc.yaml declares were not written: {missing}")
    path = round_file(root, round_)
    atomic_write_text(path, round_dvc_text(root, round_, paths))
    run_logged(dvc_command("commit", "--force", str(path.relative_to(root))), root)
    return str(path)
