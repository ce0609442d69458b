"""Prefect 3 flows over the pipeline stages (DESIGN.md §3: DVC owns the graph, Prefect schedules and runs it).

Thin by rule: every task calls `sevila.stages.run_stage` (the same `run(cfg)` that `dvc repro` reaches through
`sevila stage NAME`), so no stage logic lives here; flows only decide order, overrides and when to stop.

- flows.pipeline: `pipeline` (the whole chain, then the ablation sweep and the report) and `ablation_sweep`
  (every evaluate variant as its own task; threads by default, Dask with `--dask`).
- flows.refine_rounds: `refine_round` (one self-refinement round N from round N-1's models, returning whether
  another round is worth it) and `refine_rounds` (rounds until that says stop).
- flows.deploy: the scheduled self-refinement deployment (`python -m flows.deploy`).

Every flow run opens one MLflow parent run (sevila.tracking.parent_run); the stages' runs nest under it.
"""
