"""Stage `report`: the paper's ablation tables (sevila.evaluation.tables) for the round and the variants that
params.yaml
defines, plus the training loss curves of the round, as the last DVC stage.

Why this filters what `sevila report` does not: the MLflow store keeps every run ever made (older rounds from
the Prefect flow, variants since removed from params.yaml, one-off probes). The DVC stage must describe exactly
the graph it closes, so its rows are the latest FINISHED evaluate run of each variant of `evaluate.variants`
tagged with this `round`; a variant without such a run is listed under `missing` (e.g. the MLflow store was
deleted while DVC restored the evaluate outputs from its cache) instead of silently dropping out of the table.

Outputs under `paths.reports`: ablations.md / ablations.json / PNGs (sevila.evaluation.tables.write_report) and
`curves/<run name>.json`, one `[{"step": s, "loss": l}, ...]` file per training run of the round (Localizer
pre-training, both self-refinements, Answerer fine-tuning), which dvc.yaml shows as DVC plots.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sevila.atomic import atomic_write_json
from sevila.config import Config

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

CURVES_DIR = "curves"
LOSS = "loss"  # the metric sevila.training.loop logs at every optimizer step
TRAINING_PHASES = ("pretrain", "refine", "finetune")  # tracking.Phase values of the training stages


def round_rows(runs: pd.DataFrame, variants: list[str], round_: int) -> pd.DataFrame:
    """Evaluate runs of `variants` made in round `round_` (pure; `runs` as tracking.finished_runs gives it)."""
    if runs.empty:
        return runs
    return runs[runs["variant"].isin(variants) & runs["round"].eq(round_).fillna(False).astype(bool)]


def training_runs(runs: pd.DataFrame, round_: int) -> pd.DataFrame:
    """The latest FINISHED run of each training run name of round `round_` (pre-training has no round: it
    belongs to every round)."""
    from sevila.tracking import latest_per_variant

    if runs.empty:
        return runs
    mine = runs[runs["phase"].isin(TRAINING_PHASES)]
    mine = mine[mine["round"].isna() | mine["round"].eq(round_).fillna(False).astype(bool)]
    return latest_per_variant(mine.assign(variant=mine["run_name"]))


def write_loss_curves(runs: pd.DataFrame, out_dir: Path, uri: str) -> list[Path]:
    """One JSON list per training run: its `loss` at every optimizer step, from the run's MLflow history.
    The folder is rebuilt from scratch so a curve of a run that no longer belongs to the round cannot linger."""
    from sevila import tracking

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    written = []
    for _, r in runs.iterrows():
        by_step = tracking.metric_history(r["run_id"], LOSS, uri)
        if by_step:
            points = [{"step": s, LOSS: v} for s, v in sorted(by_step.items())]
            written.append(atomic_write_json(out_dir / f"{r['run_name']}.json", points))
    return written


def run(cfg: Config) -> dict:
    from sevila import tracking
    from sevila.evaluation.tables import log_report, write_report

    uri = tracking.tracking_uri()
    tracking.reap_stale_runs(uri)
    dataset, variants = cfg.dataset.value, list(cfg.evaluate.variants)
    rows = round_rows(tracking.finished_runs(dataset, tracking.Phase.EVALUATE), variants, cfg.round)
    found = set(rows["variant"]) if not rows.empty else set()
    missing = [v for v in variants if v not in found]
    if missing:
        log.warning("report: no finished round-%d evaluate run of %s in %s", cfg.round, missing, uri)
    out = Path(cfg.paths.reports)
    files = write_report(rows, out, source=uri)
    curves = write_loss_curves(training_runs(tracking.finished_runs(dataset), cfg.round), out / CURVES_DIR, uri)
    run_ids = log_report(files) if files.records else []
    return {"round": cfg.round, "variants": len(files.records), "missing": missing,
            "curves": sorted(p.stem for p in curves), "report_runs": run_ids}
