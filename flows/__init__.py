"""Prefect 3 flows over the DVC graph (docs/design.md §3; issue 11 item 4: DVC owns the graph, Prefect runs it).

Thin by rule: a task runs one stage of dvc.yaml THROUGH DVC (`dvc repro --single-item <stage>`, flows.tasks), the
tasks' dependencies are read from DVC's index (sevila.experiments.dvc_graph), and a task returns the stage's
metrics file, so dvc.lock stays the truth and the Prefect UI shows the graph's progress and the stages' output.
No stage logic and no round rule lives here (those are sevila.experiments.rounds, which `sevila round N` runs
without Prefect); flows only schedule.

- flows.pipeline: `pipeline` (every stage of dvc.yaml) and `ablation_sweep` (the evaluate@<variant> stages).
- flows.refine_rounds: `refine_round` (one self-refinement round N, returning whether another round is worth it;
  rounds beyond the graph's are versioned by rounds/round<N>.dvc) and `refine_rounds` (rounds until stop).
- flows.deploy: the scheduled self-refinement deployment (`python -m flows.deploy`).

Every flow run opens one MLflow parent run (sevila.tracking.parent_run); the stages' runs nest under it.
"""
import os as _os

#: Prefect starts a temporary local server for a flow run outside `prefect server start`; its default 20 s startup
#: timeout fails on a busy 2-core machine (issue 24: `--sweep-only --dask` timed out while the tests, which raise it,
#: passed). Set before Prefect is imported (it reads its settings once); a value the user exported wins.
EPHEMERAL_STARTUP_TIMEOUT_S = "120"
_os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)
