"""The DVC graph as Prefect flows: each stage of dvc.yaml is one Prefect task that runs it through DVC.

    python -m flows.pipeline                       # every stage of dvc.yaml, as `dvc repro` would, in the Prefect UI
    python -m flows.pipeline --sweep-only          # just the evaluate@<variant> stages (the models must exist)
    python -m flows.pipeline --sweep-only --dask --workers 4   # their tasks on a local Dask cluster

One owner of the graph (issue 11 item 4): the tasks and their dependencies are read from DVC's index
(sevila.experiments.dvc_graph.upstream), and each task is `dvc repro --single-item <stage>` (flows.tasks.dvc_stage), so
DVC decides
whether a stage is stale, runs its `cmd` and writes dvc.lock; after a flow run `dvc status` is clean, and a second
run reruns nothing. A task returns its stage's metrics file (dvc.yaml `metrics:`) and retries once on failure.
Settings come from the project's params.yaml only (what DVC reads); one-off settings are `dvc exp run -S`.

Task runners (`Runner`): threads by default, or Dask (prefect_dask.DaskTaskRunner on a LocalCluster of
`--workers` processes, or an existing scheduler with `--dask-address`). DVC runs one command per workspace at a
time (its repo lock; the tasks queue on it with `--wait-for-lock`), so independent stages such as the variants
still run one after another in one workspace; the runner decides where the tasks and their logs live.
"""
from __future__ import annotations

import argparse
import enum
import json
import sys
from pathlib import Path
from typing import Sequence

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tasks import dvc_stage, flow_parent_run
from sevila.config import load_config
from sevila.experiments.dvc_graph import PARAMS_FILE, dvc_project, upstream

EVALUATE = "evaluate"  # the foreach stage of dvc.yaml: evaluate@<variant>, one per evaluate.variants key


LOCALHOST = "127.0.0.1"
DASHBOARD_ADDRESS = f"{LOCALHOST}:8787"  # Dask's own port, on the loopback only (its default ":8787" is every
#                                          interface: anyone on the network could watch, and the dashboard
#                                          shows tracebacks and the workers' logs); 8787 taken: a free port


class Runner(str, enum.Enum):
    """Where the flows' stage tasks run."""

    THREADS = "threads"  # prefect's ThreadPoolTaskRunner in the flow's process
    DASK = "dask"  # prefect_dask.DaskTaskRunner: worker processes (a local cluster or a given scheduler)


def task_runner(kind: Runner = Runner.THREADS, workers: int = 1, address: str | None = None):
    """The task runner for the flows: `workers` threads, or a local Dask cluster of `workers` single-threaded
    processes (torch already uses the cores inside one process) whose scheduler and dashboard listen on
    127.0.0.1 only, or the Dask scheduler at `address`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if Runner(kind) is Runner.DASK:
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": workers, "threads_per_worker": 1, "processes": True, "host": LOCALHOST,
            "dashboard_address": DASHBOARD_ADDRESS})
    return ThreadPoolTaskRunner(max_workers=workers)


def select_variants(defined: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """`wanted` (in the order given) or every defined variant; an unknown name is an error naming the known ones."""
    if not wanted:
        return list(defined)
    unknown = [v for v in wanted if v not in defined]
    if unknown:
        raise ValueError(f"unknown evaluate variant(s) {unknown}; params.yaml defines {list(defined)}")
    return list(dict.fromkeys(wanted))


def run_graph(root: Path, stages: Sequence[str], parent) -> dict[str, dict]:
    """Submit one `dvc_stage` task per stage in `stages` (upstream first), each waiting for the tasks of the
    stages it needs among them; returns {stage: metrics}."""
    needs = upstream(root)
    futures: dict = {}
    for name in needs:
        if name in stages:
            waits = [futures[u] for u in needs[name] if u in futures]
            futures[name] = dvc_stage.submit(name, str(root), parent, wait_for=waits)
    return {n: result(f) for n, f in futures.items()}


def result(future, poll_s: float = 1.0):
    """`future.result()`, waiting in slices of `poll_s`: a blocking wait would hold off the flow's SIGTERM handler
    (Python runs it between bytecodes of the main thread), so a cancelled flow run would only stop once the
    running stage had finished."""
    while not future.state.is_final():
        future.wait(timeout=poll_s)
    return future.result()


@flow(name="sevila-ablation-sweep", task_runner=ThreadPoolTaskRunner(max_workers=1))
def ablation_sweep(params: str = "params.yaml", variants: list[str] | None = None) -> dict[str, dict]:
    """The evaluate@<variant> stages of the graph (or just `variants`), each its own task; returns
    {variant: metrics}. Pick the task runner with `sweep(...)` / `ablation_sweep.with_options(task_runner=...)`."""
    root = dvc_project(params)
    cfg = load_config(root / PARAMS_FILE)
    names = select_variants(list(cfg.evaluate.variants), variants)
    with flow_parent_run("prefect-ablation-sweep", cfg.dataset.value, round=cfg.round) as parent:
        out = run_graph(root, [f"{EVALUATE}@{n}" for n in names], parent)
    return {n: out[f"{EVALUATE}@{n}"] for n in names}


def sweep(params: str = "params.yaml", variants: Sequence[str] | None = None, runner: Runner = Runner.THREADS,
          workers: int = 1, address: str | None = None) -> dict[str, dict]:
    """`ablation_sweep` on the chosen task runner (a task runner is fixed per flow, so it is chosen here)."""
    chosen = ablation_sweep.with_options(task_runner=task_runner(runner, workers, address))
    return chosen(params=params, variants=list(variants) if variants else None)


@flow(name="sevila-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(params: str = "params.yaml") -> dict[str, dict]:
    """Every stage of dvc.yaml through DVC (prepare -> ... -> evaluate@<variant> -> report), upstream first;
    returns {stage: metrics}. Pick the task runner with `run_pipeline(...)`."""
    root = dvc_project(params)
    cfg = load_config(root / PARAMS_FILE)
    with flow_parent_run("prefect-pipeline", cfg.dataset.value, round=cfg.round) as parent:
        return run_graph(root, list(upstream(root)), parent)


def run_pipeline(params: str = "params.yaml", runner: Runner = Runner.THREADS, workers: int = 1,
                 address: str | None = None) -> dict[str, dict]:
    """`pipeline` on the chosen task runner."""
    return pipeline.with_options(task_runner=task_runner(runner, workers, address))(params=params)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("-p", "--params", default="params.yaml", help="the project's params.yaml (beside dvc.yaml)")
    p.add_argument("--sweep-only", action="store_true", help="only the evaluate@<variant> stages")
    p.add_argument("--variant", action="append", default=[], help="only this variant (repeatable; sweep only)")
    p.add_argument("--workers", type=int, default=1, help="concurrent tasks (default 1: one at a time)")
    p.add_argument("--dask", action="store_true", help="run the tasks on Dask (prefect_dask.DaskTaskRunner)")
    p.add_argument("--dask-address", help="an existing Dask scheduler (implies --dask)")
    args = p.parse_args(argv)
    runner = Runner.DASK if args.dask or args.dask_address else Runner.THREADS
    if args.sweep_only:
        out = sweep(args.params, args.variant or None, runner, args.workers, args.dask_address)
    else:
        if args.variant:
            p.error("--variant needs --sweep-only (the pipeline runs every stage)")
        out = run_pipeline(args.params, runner, args.workers, args.dask_address)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
