"""Stage `bootstrap` (synthetic world only): give the tiny backbone what BLIP-2 and Flan-T5 bring pre-trained,
then freeze it. The recipe lives in sevila.synthetic.bootstrap; its settings are the `bootstrap` section of params.yaml.

A real benchmark brings its weights (`model.weights`: a BLIP-2 directory or a SeViLA .pth), so nothing is trained:
the stage writes only `models/backbone/not_trained.json` and `bootstrap.json` saying so. It never writes to
`model.weights` (dvc.yaml names its output `models/backbone`, never `${model.weights}`: DVC empties a stage's
outputs before it runs), and it logs no MLflow run."""
from __future__ import annotations

from pathlib import Path

from sevila import tracking
from sevila.atomic import atomic_write_json
from sevila.config import Config
from sevila.errors import UserError
from sevila.synthetic import bootstrap
from sevila.tracking.run_settings import stage_run

NOT_TRAINED = "not_trained.json"


def run(cfg: Config) -> dict:
    if cfg.dataset.real:
        backbone = Path(cfg.paths.models) / "backbone"  # dvc.yaml's `bootstrap` output
        if Path(cfg.model.weights).resolve() == backbone.resolve():
            raise UserError(f"model.weights={cfg.model.weights} is the bootstrap stage's output folder, which DVC "
                            "empties before the stage runs: keep real weights (a BLIP-2 directory) elsewhere")
        note = {"dataset": cfg.dataset.value, "trained": False,
                "why": f"a real benchmark runs on model.weights={cfg.model.weights}; the tiny backbone is synth's"}
        atomic_write_json(backbone / NOT_TRAINED, note)
        atomic_write_json(Path(cfg.paths.reports) / "bootstrap.json", {"trained": 0})
        return {"trained": 0}
    metrics = bootstrap.bootstrap_backbone(cfg.paths.world, cfg.paths.processed, cfg.model.weights, cfg.bootstrap)
    atomic_write_json(Path(cfg.paths.reports) / "bootstrap.json", metrics)
    with stage_run(cfg, "bootstrap", tracking.Phase.BOOTSTRAP, "bootstrap",
                   tracking.RunTags(variant="bootstrap", dvc_stage="bootstrap")) as run_log:
        run_log.log_metrics({k: float(v) for k, v in metrics.items()})
    return metrics
