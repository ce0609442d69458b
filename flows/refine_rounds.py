"""Iterated self-refinement (paper §3.2: "rounds can repeat") as Prefect flows over the library's round rules
(sevila.experiments.rounds, which `sevila round N` runs without Prefect): the same plan, each stage a Prefect task.

    python -m flows.refine_rounds --round 2              # one round: round 2 from round 1's models
    python -m flows.refine_rounds                        # the next round after the last one on disk
    python -m flows.refine_rounds --loop --max-rounds 4  # rounds until the accuracy stops improving

What a round runs, how rounds outside the DVC graph are versioned (rounds/round<N>.dvc) and the stopping rule are
the library's (sevila.experiments.rounds). MLflow: one parent run per flow run (`refine-round-<N>`, tagged round=N
and with the Prefect flow run id, holding the accuracy and decision); `refine_rounds` adds one over its rounds.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from prefect import flow
from prefect.runtime import flow_run

from flows.tasks import PrefectRunner, flow_parent_run
from sevila.config import load_config
from sevila.experiments.rounds import (
    DEFAULT_MAX_ROUNDS, DEFAULT_MIN_IMPROVEMENT, RoundDecision, plan_round, resolve_round, run_round,
)


def _run_name() -> str:
    """The flow run's name: the round it will run, resolved as the flow does (so the Prefect run and the MLflow
    parent run `refine-round-<N>` share a name); `refine-round-none` when the stopping rule already said stop."""
    p = flow_run.parameters
    round_ = resolve_round(p.get("params", "params.yaml"), p.get("round"), p.get("max_rounds", DEFAULT_MAX_ROUNDS),
                           p.get("min_improvement", DEFAULT_MIN_IMPROVEMENT), p.get("variant"),
                           p.get("overrides"))[2]
    return f"refine-round-{round_ if round_ is not None else 'none'}"


# ---------------------------------------------------------------------------------------------- flows


@flow(name="sevila-refine-round", flow_run_name=_run_name)
def refine_round(round: int | None = None, params: str = "params.yaml", max_rounds: int = DEFAULT_MAX_ROUNDS,
                 min_improvement: float = DEFAULT_MIN_IMPROVEMENT, variant: str | None = None,
                 overrides: list[str] | None = None) -> RoundDecision:
    """Self-refinement round `round` (None: the next one after those on disk, or nothing once converged),
    starting from round N-1's outputs; returns the decision whether to run round N+1."""
    plan = plan_round(params, round, max_rounds, min_improvement, variant, overrides)
    return run_round(plan, lambda parent: PrefectRunner(str(plan.root), parent), open_parent=flow_parent_run)


@flow(name="sevila-self-refinement")
def refine_rounds(params: str = "params.yaml", start: int | None = None, max_rounds: int = DEFAULT_MAX_ROUNDS,
                  min_improvement: float = DEFAULT_MIN_IMPROVEMENT, variant: str | None = None,
                  overrides: list[str] | None = None) -> list[RoundDecision]:
    """Rounds from `start` (None: the next one on disk) until `refine_round` says stop."""
    cfg = load_config(params, list(overrides or []))
    decisions: list[RoundDecision] = []
    with flow_parent_run("prefect-self-refinement", cfg.dataset.value):
        n = start
        while True:
            d = refine_round(round=n, params=params, max_rounds=max_rounds, min_improvement=min_improvement,
                             variant=variant, overrides=overrides)
            decisions.append(d)
            if not d.proceed or d.round is None:
                return decisions
            n = d.round + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.refine_rounds", description=__doc__.split("\n")[0])
    p.add_argument("--round", type=int, help="the round to run (default: the next one after those on disk)")
    p.add_argument("-p", "--params", default="params.yaml")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-rounds", type=int, default=DEFAULT_MAX_ROUNDS)
    p.add_argument("--min-improvement", type=float, default=DEFAULT_MIN_IMPROVEMENT)
    p.add_argument("--variant", help="the variant the stopping rule watches (default: the full SeViLA one)")
    p.add_argument("--loop", action="store_true", help="keep running rounds until the rule says stop")
    args = p.parse_args(argv)
    common = dict(params=args.params, max_rounds=args.max_rounds, min_improvement=args.min_improvement,
                  variant=args.variant, overrides=args.override)
    if args.loop:
        out = [asdict(d) for d in refine_rounds(start=args.round, **common)]
    else:
        out = asdict(refine_round(round=args.round, **common))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
