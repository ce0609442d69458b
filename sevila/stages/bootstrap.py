"""Stage `bootstrap` (synthetic world only): give the tiny backbone what BLIP-2 and Flan-T5 bring pre-trained,
then freeze it. The recipe lives in sevila.bootstrap; its settings are the `bootstrap` section of params.yaml.
With real weights (`model.weights` = a BLIP-2 directory) this stage is not part of the pipeline."""
from __future__ import annotations

import sys
from pathlib import Path

from sevila import tracking
from sevila.config import Config, build
from sevila.io import atomic_write_json
from sevila.run_settings import stage_run


def run(cfg: Config) -> dict:
    from sevila.bootstrap import BootstrapSettings, bootstrap_backbone

    settings = build(BootstrapSettings, cfg.bootstrap, "bootstrap")
    metrics = bootstrap_backbone(cfg.paths.world, cfg.paths.processed, cfg.model.weights, settings)
    atomic_write_json(Path(cfg.paths.reports) / "bootstrap.json", metrics)
    with stage_run(cfg, "bootstrap", tracking.Phase.BOOTSTRAP, "bootstrap",
                   tracking.RunTags(variant="bootstrap", dvc_stage="bootstrap")) as run_log:
        run_log.log_metrics({k: float(v) for k, v in metrics.items()})
    return metrics


def main(argv: list[str] | None = None) -> int:
    from sevila.cli import main as cli_main

    return cli_main(["stage", "bootstrap", *(sys.argv[1:] if argv is None else argv)])
