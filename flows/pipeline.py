"""The whole pipeline and the ablation sweep as Prefect flows.

    python -m flows.pipeline                       # prepare ... finetune_answerer, every variant, report
    python -m flows.pipeline --sweep-only --workers 4          # just the evaluate variants, 4 threads
    python -m flows.pipeline --sweep-only --dask --workers 4   # ... on a local Dask cluster (4 processes)

`pipeline` runs the stages in `sevila.stages.STAGES` order (the order dvc.yaml chains them), then
`ablation_sweep` as a subflow, then `report`. Unlike `dvc repro` it reruns every stage (Prefect has no
content hashes); use it where a schedule or the Prefect UI is wanted, and `sevila repro` for incremental rebuilds.

Task runners (`Runner`): the sweep's variants are independent, so they run concurrently: threads by default
(`--workers 1` = one after the other), or Dask (prefect_dask.DaskTaskRunner on a LocalCluster of `--workers`
processes, or an existing scheduler with `--dask-address`) to scale out past one process (DESIGN.md §5).
Concurrent variants write their MLflow runs at once: with the default SQLite store keep `--workers` small, or
point MLFLOW_TRACKING_URI at an MLflow server.
"""
from __future__ import annotations

import argparse
import enum
import json
import sys
from typing import Sequence

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tasks import evaluate_variant, flow_parent_run, stage
from sevila.config import load_config
from sevila.stages import STAGES

SWEPT = ("evaluate", "report")  # stages the pipeline runs after the chain, not as plain chain steps


class Runner(str, enum.Enum):
    """Where the sweep's variant tasks run."""

    THREADS = "threads"  # prefect's ThreadPoolTaskRunner in the flow's process
    DASK = "dask"  # prefect_dask.DaskTaskRunner: worker processes (a local cluster or a given scheduler)


def chain_stages() -> list[str]:
    """The stages before the sweep, in pipeline order (STAGES is kept in dvc.yaml's order)."""
    return [name for name in STAGES if name not in SWEPT]


def task_runner(kind: Runner = Runner.THREADS, workers: int = 1, address: str | None = None):
    """The task runner for the sweep: `workers` threads, or a Dask cluster of `workers` single-threaded
    processes (torch already uses the cores inside one process), or the Dask scheduler at `address`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if Runner(kind) is Runner.DASK:
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    return ThreadPoolTaskRunner(max_workers=workers)


def select_variants(defined: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """`wanted` (in the order given) or every defined variant; an unknown name is an error naming the known ones."""
    if not wanted:
        return list(defined)
    unknown = [v for v in wanted if v not in defined]
    if unknown:
        raise ValueError(f"unknown evaluate variant(s) {unknown}; params.yaml defines {list(defined)}")
    return list(dict.fromkeys(wanted))


@flow(name="sevila-ablation-sweep", task_runner=ThreadPoolTaskRunner(max_workers=1))
def ablation_sweep(params: str = "params.yaml", overrides: list[str] | None = None,
                   variants: list[str] | None = None) -> dict[str, dict]:
    """Evaluate each variant of `evaluate.variants` (or just `variants`) as its own task; returns
    {variant: metrics}. Pick the task runner with `sweep(...)` / `ablation_sweep.with_options(task_runner=...)`."""
    overrides = list(overrides or [])
    cfg = load_config(params, overrides)
    names = select_variants(list(cfg.evaluate.variants), variants)
    with flow_parent_run("prefect-ablation-sweep", cfg.evaluate.dataset, round=cfg.round) as parent:
        futures = {n: evaluate_variant.submit(n, params, overrides, parent) for n in names}
        return {n: f.result() for n, f in futures.items()}


def sweep(params: str = "params.yaml", overrides: Sequence[str] = (), variants: Sequence[str] | None = None,
          runner: Runner = Runner.THREADS, workers: int = 1, address: str | None = None) -> dict[str, dict]:
    """`ablation_sweep` on the chosen task runner (a task runner is fixed per flow, so it is chosen here)."""
    chosen = ablation_sweep.with_options(task_runner=task_runner(runner, workers, address))
    return chosen(params=params, overrides=list(overrides), variants=list(variants) if variants else None)


@flow(name="sevila-pipeline")
def pipeline(params: str = "params.yaml", overrides: list[str] | None = None, workers: int = 1,
             runner: Runner = Runner.THREADS, dask_address: str | None = None) -> dict[str, dict]:
    """prepare -> validate -> bootstrap -> pretrain_localizer -> pseudo_label -> refine_localizer ->
    finetune_answerer -> every evaluate variant (subflow) -> report; returns each stage's metrics."""
    overrides = list(overrides or [])
    cfg = load_config(params, overrides)
    results: dict[str, dict] = {}
    with flow_parent_run("prefect-pipeline", cfg.evaluate.dataset, round=cfg.round) as parent:
        for name in chain_stages():
            results[name] = stage(name, params, overrides, parent)
        results["evaluate"] = sweep(params, overrides, runner=runner, workers=workers, address=dask_address)
        results["report"] = stage("report", params, overrides, parent)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("-p", "--params", default="params.yaml")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sweep-only", action="store_true", help="only the evaluate variants (models must exist)")
    p.add_argument("--variant", action="append", default=[], help="only this variant (repeatable; sweep only)")
    p.add_argument("--workers", type=int, default=1, help="concurrent variants (default 1: one at a time)")
    p.add_argument("--dask", action="store_true", help="run the variants on Dask (prefect_dask.DaskTaskRunner)")
    p.add_argument("--dask-address", help="an existing Dask scheduler (implies --dask)")
    args = p.parse_args(argv)
    runner = Runner.DASK if args.dask or args.dask_address else Runner.THREADS
    if args.sweep_only:
        out = sweep(args.params, args.override, args.variant or None, runner, args.workers, args.dask_address)
    else:
        if args.variant:
            p.error("--variant needs --sweep-only (the pipeline evaluates every variant)")
        out = pipeline(args.params, args.override, args.workers, runner, args.dask_address)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
