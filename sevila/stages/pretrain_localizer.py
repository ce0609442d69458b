"""Stage `pretrain_localizer` (paper §3.3): the Localizer learns moment labels. A frame is a positive iff its
timestamp lies in a relevant window; the prompt is the QVHighlights one (`Option A: yes. Option B: no.`) and the
LM loss is on the target `yes`/`no` of every frame. Frames are the cached uniform samples of each video (the
official loader draws a random frame per segment; with cached features we take each segment's middle)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from sevila import prompts
from sevila.chain import clip_features, fit_module, load_model, localizer_dir, read_split, stack
from sevila.config import Config, LocalizerId
from sevila.data.video import frame_labels
from sevila.io import atomic_write_json
from sevila.metrics import keyframe_in_span, localizer_metrics
from sevila.run_settings import stage_run


def moment_items(clips) -> list[dict]:
    items = []
    for c in clips:
        for m in c.records:
            labels = frame_labels(c.meta.timestamps, m.windows or ())
            items.append({"features": c.features, "prompt": prompts.qvh_localizer_prompt(m.query),
                          "labels": torch.as_tensor(labels, dtype=torch.bool), "timestamps": c.meta.timestamps,
                          "windows": m.windows or ()})
    return items


def localizer_loss(model, batch: list[dict]) -> torch.Tensor:
    dev = next(model.t5.parameters()).device
    loss, _ = model.localizer_loss(stack(batch, "features").to(dev), [b["prompt"] for b in batch],
                                   stack(batch, "labels").to(dev))
    return loss


@torch.no_grad()
def moment_quality(model, items: list[dict], k: int) -> dict[str, float]:
    """Frame AUC of the Localizer score and keyframe_in_span of its top-k, against the moment windows."""
    dev = next(model.t5.parameters()).device
    in_span, auc_pairs = [], []
    for it in items:
        out = model.localize(it["features"][None].to(dev), [it["prompt"]], k)
        scores = out.scores[0].float().cpu().numpy()
        chosen = it["timestamps"][out.keyframes[0].cpu().numpy()]
        in_span.append(keyframe_in_span(chosen, it["timestamps"], list(it["windows"])) if it["windows"] else None)
        auc_pairs.append((scores, it["labels"].numpy()))
    return localizer_metrics(in_span, auc_pairs)


def run(cfg: Config) -> dict:
    from sevila import tracking

    model = load_model(cfg)
    train_items = moment_items(clip_features(cfg, model, read_split(cfg, "train", moments=True)))
    val_items = moment_items(clip_features(cfg, model, read_split(cfg, "val", moments=True)))
    k = cfg.frames.n_keyframes
    tags = tracking.RunTags(variant="pretrain_localizer", loc_pretrain=True, loc_refine=False,
                            n_frames=cfg.frames.n_frames, n_keyframes=k, dvc_stage="pretrain_localizer")
    with stage_run(cfg, "pretrain_localizer", tracking.Phase.PRETRAIN, "pretrain_localizer", tags) as run_log:
        before = moment_quality(model, val_items, k)
        metrics = fit_module(cfg, model, "localizer", train_items, localizer_loss, "pretrain_localizer",
                             cfg.pretrain_localizer.train, localizer_dir(cfg, LocalizerId.QVH), logger=run_log)
        after = moment_quality(model, val_items, k)
        metrics |= {f"val_{k_}_before": v for k_, v in before.items()} | {f"val_{k_}": v for k_, v in after.items()}
        run_log.log_metrics({k_: float(v) for k_, v in metrics.items()})
    atomic_write_json(Path(cfg.paths.reports) / "pretrain_localizer.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    from sevila.cli import main as cli_main

    return cli_main(["stage", "pretrain_localizer", *(sys.argv[1:] if argv is None else argv)])
