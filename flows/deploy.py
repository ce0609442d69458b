"""The scheduled self-refinement deployment: `refine_round` with `round=None` on a schedule, so each scheduled
run does the next round after those on disk and, once the stopping rule says stop, does nothing.

    prefect server start                                   # terminal 1: the API and UI (http://127.0.0.1:4200)
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.deploy --interval 3600                 # terminal 2: register and serve (every hour)
    python -m flows.deploy --cron "0 3 * * *" --max-rounds 5 --min-improvement 0.25
    prefect deployment run 'sevila-refine-round/self-refinement'   # one run now, outside the schedule

`flow.serve` registers the deployment with the server and runs its flow runs in this process's working
directory, so this script first changes to the project root of `--params` (the stages' relative paths in
params.yaml, data/ models/ runs/, and the default MLflow store mlflow.db are relative to it). The deployment has
a concurrency limit of 1: two rounds never run at once (round N+1 needs round N's models).
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

from flows.refine_rounds import DEFAULT_MAX_ROUNDS, DEFAULT_MIN_IMPROVEMENT, refine_round

DEPLOYMENT_NAME = "self-refinement"
DEFAULT_INTERVAL = timedelta(hours=6)
TAGS = ["sevila", "self-refinement"]


def deployment_parameters(params: str | Path = "params.yaml", max_rounds: int = DEFAULT_MAX_ROUNDS,
                          min_improvement: float = DEFAULT_MIN_IMPROVEMENT) -> dict:
    """The scheduled runs' parameters: the next round each time, from the given settings file (absolute)."""
    path = Path(params).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")
    return {"round": None, "params": str(path), "max_rounds": max_rounds, "min_improvement": min_improvement}


def build_deployment(params: str | Path = "params.yaml", *, name: str = DEPLOYMENT_NAME,
                     interval: timedelta | None = None, cron: str | None = None,
                     max_rounds: int = DEFAULT_MAX_ROUNDS, min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
                     paused: bool = False):
    """The RunnerDeployment of `refine_round` (built locally; nothing is sent to a server until it is served).
    Exactly one of `interval` / `cron`; neither: every DEFAULT_INTERVAL."""
    if interval is not None and cron is not None:
        raise ValueError("give an interval or a cron schedule, not both")
    if interval is None and cron is None:
        interval = DEFAULT_INTERVAL
    return refine_round.to_deployment(
        name=name, interval=interval, cron=cron, paused=paused, concurrency_limit=1, tags=TAGS,
        parameters=deployment_parameters(params, max_rounds, min_improvement),
        description="Next SeViLA self-refinement round (pseudo_label -> refine_localizer -> finetune_answerer "
                    "-> evaluate) until the main variant's accuracy stops improving or max_rounds.")


def main(argv: list[str] | None = None) -> int:
    from prefect import serve

    from sevila.tracking import project_root

    p = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    p.add_argument("-p", "--params", default="params.yaml")
    p.add_argument("--name", default=DEPLOYMENT_NAME)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--interval", type=float, help=f"seconds between runs (default {DEFAULT_INTERVAL})")
    when.add_argument("--cron", help='a cron schedule, e.g. "0 3 * * *"')
    p.add_argument("--max-rounds", type=int, default=DEFAULT_MAX_ROUNDS)
    p.add_argument("--min-improvement", type=float, default=DEFAULT_MIN_IMPROVEMENT)
    p.add_argument("--paused", action="store_true", help="register with the schedule paused")
    args = p.parse_args(argv)
    params = Path(args.params).resolve()
    os.chdir(project_root(params.parent))
    deployment = build_deployment(params, name=args.name, cron=args.cron, max_rounds=args.max_rounds,
                                  interval=timedelta(seconds=args.interval) if args.interval else None,
                                  min_improvement=args.min_improvement, paused=args.paused)
    serve(deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
