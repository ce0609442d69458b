"""Stage `bootstrap` (synthetic world only): give the tiny backbone what BLIP-2 and Flan-T5 bring pre-trained,
then freeze it. The recipe lives in sevila.bootstrap; its settings are the `bootstrap` section of params.yaml.
With real weights (`model.weights` = a BLIP-2 directory) this stage is not part of the pipeline."""
from __future__ import annotations

from pathlib import Path

from sevila import bootstrap, tracking
from sevila.config import Config
from sevila.io import atomic_write_json
from sevila.run_settings import stage_run


def run(cfg: Config) -> dict:
    metrics = bootstrap.bootstrap_backbone(cfg.paths.world, cfg.paths.processed, cfg.model.weights, cfg.bootstrap)
    atomic_write_json(Path(cfg.paths.reports) / "bootstrap.json", metrics)
    with stage_run(cfg, "bootstrap", tracking.Phase.BOOTSTRAP, "bootstrap",
                   tracking.RunTags(variant="bootstrap", dvc_stage="bootstrap")) as run_log:
        run_log.log_metrics({k: float(v) for k, v in metrics.items()})
    return metrics
