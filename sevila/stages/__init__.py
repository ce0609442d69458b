"""Pipeline stages: one module per stage, each with `run(cfg) -> metrics` (the library entry point that DVC,
Prefect and tests call), reached from the command line as `sevila stage NAME [-p params.yaml] [-o key=value ...]`
(the one entry point: a stage module has no `main` of its own)."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from sevila.config import load_config

# stage name -> module (in pipeline order)
STAGES: dict[str, str] = {
    "prepare": "sevila.stages.prepare",
    "validate": "sevila.stages.validate",
    "bootstrap": "sevila.stages.bootstrap",
    "pretrain_localizer": "sevila.stages.pretrain_localizer",
    "pseudo_label": "sevila.stages.pseudo_label",
    "refine_localizer": "sevila.stages.refine_localizer",
    "finetune_answerer": "sevila.stages.finetune_answerer",
    "evaluate": "sevila.stages.evaluate",
    "report": "sevila.stages.report",
}

# dvc.yaml stages that run a stage of STAGES with settings changed: dvc name -> (stage, overrides)
RUNS_AS: dict[str, tuple[str, tuple[str, ...]]] = {
    # the baselines' Answerer (BLIP-2^concat, paper Table 9), fine-tuned on the uniform frames it is evaluated on
    "finetune_answerer_uniform": ("finetune_answerer", ("finetune_answerer.frames=uniform",)),
}


def pipeline() -> list[tuple[str, str, tuple[str, ...]]]:
    """(dvc.yaml stage name, stage of STAGES, overrides) of every step of the pipeline in dvc.yaml's order: what a
    caller without DVC (the rehearsal, tests) runs to rebuild what `dvc repro` does."""
    steps = []
    for name in STAGES:
        steps.append((name, name, ()))
        steps += [(dvc_name, stage, over) for dvc_name, (stage, over) in RUNS_AS.items() if stage == name]
    return steps


def run_stage(name: str, params: str = "params.yaml", overrides: tuple[str, ...] = ()) -> dict:
    """Load and check every setting (nothing is written before they are all valid), then run the stage."""
    if name not in STAGES:
        raise SystemExit(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    cfg = load_config(params, overrides)
    return importlib.import_module(STAGES[name]).run(cfg)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    p.add_argument("name", choices=list(STAGES))
    p.add_argument("-p", "--params", default="params.yaml", help="settings file (default: params.yaml)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. -o world.videos=20 (repeatable)")
    p.set_defaults(func=_cli_stage)


def _cli_stage(args: argparse.Namespace) -> int:
    # the stages' progress (what was loaded, "resuming at step N") goes to stderr; stdout keeps the metrics JSON
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("sevila")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:  # a setting or a missing file is the user's to fix: sevila.cli prints it as one line, exit 2
        metrics = run_stage(args.name, args.params, tuple(args.override))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    print(json.dumps(metrics, indent=2, default=str))
    return 0 if metrics.get("success", True) else 1
