"""Stage `pretrain_localizer` (paper §3.3): the Localizer learns moment labels. A frame is a positive iff its
timestamp lies in a relevant window; the prompt is the QVHighlights one (`Option A: yes. Option B: no.`) and the
LM loss is on the target `yes`/`no` of every frame. Frames are the cached uniform samples of each video (the
official loader draws a random frame per segment; with cached features we take each segment's middle).

Besides frame AUC and keyframe-in-span, the val moments are scored as QVHighlights moment retrieval (R1@0.5,
R1@0.7, mAP over IoU 0.5:0.95, sevila.evaluation.moments' official definitions; the paper reports the Localizer on
QVHighlights): frame scores -> windows by `moment_windows`. The epoch kept is the one with the best val frame AUC
(how well the scores rank a moment's frames above the rest, which is all top-k keyframe selection uses)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sevila import tracking
from sevila.atomic import atomic_write_json
from sevila.config import Config, LocalizerId
from sevila.data.video import frame_labels
from sevila.evaluation.moments import evaluate_moments, frame_scores_to_windows
from sevila.evaluation.qa_metrics import keyframe_in_span, localizer_metrics
from sevila.inference.features import load_features
from sevila.model import prompts
from sevila.stages.common import fit_module, load_model, localizer_dir, read_split, split_clips, stack
from sevila.tracking.run_settings import stage_run


def moment_items(clips) -> list[dict]:
    items = []
    for c in clips:
        for m in c.records:
            labels = frame_labels(c.meta.timestamps, m.windows or ())
            items.append({"features": c.held, "prompt": prompts.qvh_localizer_prompt(m.query),
                          "labels": torch.as_tensor(labels, dtype=torch.bool), "timestamps": c.meta.timestamps,
                          "windows": m.windows or (), "qid": m.qid, "duration": m.duration})
    return items


def localizer_loss(model, batch: list[dict]) -> torch.Tensor:
    dev = next(model.t5.parameters()).device
    loss, _ = model.localizer_loss(stack(batch, "features").to(dev), [b["prompt"] for b in batch],
                                   stack(batch, "labels").to(dev))
    return loss


def moment_windows(timestamps: np.ndarray, scores: np.ndarray, duration: float) -> list[list[float]]:
    """Predicted moments [[start, end, score], ...] of one query from its frame scores. Localizer scores are `yes`
    logits, not comparable across queries, so each query's scores are first scaled to [0, 1] over its own frames;
    frames in the upper half are positive, and runs of them separated by at most one frame spacing form a window
    (`frame_scores_to_windows`: each frame stands for its sampling segment, windows clipped to the video)."""
    lo, hi = float(scores.min()), float(scores.max())
    scaled = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    spacing = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 0.0
    return frame_scores_to_windows(timestamps, scaled, threshold=0.5, max_gap=spacing, duration=duration)


@torch.no_grad()
def moment_quality(model, items: list[dict], k: int) -> dict[str, float]:
    """Frame AUC of the Localizer score and keyframe_in_span of its top-k against the moment windows, and moment
    retrieval (`mr_r1_iou50`, `mr_r1_iou70`, `mr_map`: QVHighlights' R1@0.5, R1@0.7 and mAP, in percent)."""
    dev = next(model.t5.parameters()).device
    in_span, auc_pairs, truth, predicted = [], [], {}, {}
    for it in items:
        out = model.localize(load_features(it["features"])[None].to(dev), [it["prompt"]], k)
        scores = out.scores[0].float().cpu().numpy()
        chosen = it["timestamps"][out.keyframes[0].cpu().numpy()]
        in_span.append(keyframe_in_span(chosen, it["timestamps"], list(it["windows"])) if it["windows"] else None)
        auc_pairs.append((scores, it["labels"].numpy()))
        if it["windows"]:
            truth[it["qid"]] = [list(w) for w in it["windows"]]
            predicted[it["qid"]] = moment_windows(it["timestamps"], scores, it["duration"])
    metrics = localizer_metrics(in_span, auc_pairs)
    if truth:
        brief = evaluate_moments(truth, predicted)["brief"]
        metrics |= {"mr_r1_iou50": brief["MR-full-R1@0.5"], "mr_r1_iou70": brief["MR-full-R1@0.7"],
                    "mr_map": brief["MR-full-mAP"]}
    return metrics


def run(cfg: Config) -> dict:
    model = load_model(cfg, precision=cfg.pretrain_localizer.train.precision)
    train_items = moment_items(split_clips(cfg, model, read_split(cfg, "train", moments=True)))
    val_items = moment_items(split_clips(cfg, model, read_split(cfg, "val", moments=True)))
    k = cfg.frames.n_keyframes
    tags = tracking.RunTags(variant="pretrain_localizer", loc_pretrain=True, loc_refine=False,
                            n_frames=cfg.frames.n_frames, n_keyframes=k, dvc_stage="pretrain_localizer")
    with stage_run(cfg, "pretrain_localizer", tracking.Phase.PRETRAIN, "pretrain_localizer", tags) as run_log:
        before = moment_quality(model, val_items, k)
        metrics = fit_module(cfg, model, "localizer", train_items, localizer_loss, "pretrain_localizer",
                             cfg.pretrain_localizer.train, localizer_dir(cfg, LocalizerId.QVH), logger=run_log,
                             best_metric="frame_auc", eval_fn=lambda m: moment_quality(m, val_items, k))
        after = moment_quality(model, val_items, k)
        metrics |= {f"val_{k_}_before": v for k_, v in before.items()} | {f"val_{k_}": v for k_, v in after.items()}
        run_log.log_metrics({k_: float(v) for k_, v in metrics.items()})
    atomic_write_json(Path(cfg.paths.reports) / "pretrain_localizer.json", metrics)
    return metrics

