"""Stage `refine_localizer` (self-refinement, paper §3.2): the Localizer is trained on the reverse chain's
pseudo-labels with the Localizer prompt and yes/no targets. It starts from the Localizer each entry of
`refine_localizer.starts` names (the backbone's Q-Former -> `sr`, the pre-trained one -> `qvh_sr`; from round 2
on, the previous round's refined one), and each result is written to its own round-suffixed directory: nothing
is silently overwritten. The epoch kept is the one whose keyframes let the (frozen) Answerer answer the most val
questions: the chain's own val accuracy, what LAVIS's runner selects on; val needs no ground-truth spans."""
from __future__ import annotations

from pathlib import Path

import torch

from sevila import tracking
from sevila.atomic import atomic_write_json
from sevila.config import Config, LocalizerId, Selector
from sevila.stages.common import (
    chain_accuracy, fit_module, load_model, localizer_dir, qa_items, qa_prompt_pair, read_split, split_clips,
)
from sevila.stages.pretrain_localizer import localizer_loss
from sevila.stages.pseudo_label import label_file, read_labels
from sevila.tracking.run_settings import stage_run

REFINED = {LocalizerId.BACKBONE: LocalizerId.SR, LocalizerId.QVH: LocalizerId.QVH_SR}


def start_and_target(start: LocalizerId, round_: int) -> tuple[LocalizerId, int | None, LocalizerId]:
    """(Localizer to load, its round, Localizer produced). Round 1 refines `start`; round N the round N-1 result."""
    if start not in REFINED:
        raise ValueError(f"refine_localizer.starts: {start.value!r} cannot be a starting point; use none or qvh")
    target = REFINED[start]
    return (start, None, target) if round_ == 1 else (target, round_ - 1, target)


def pseudo_items(clips, labels: dict[str, dict]) -> list[dict]:
    items = []
    for c in clips:
        for r in c.records:
            row = labels.get(r.qid)
            if row is None:
                continue
            if row["frame_indices"] != c.meta.indices.tolist():
                raise ValueError(f"pseudo-labels of {r.qid} were made on other frames than the features in use "
                                 "(n_frames or the video changed): rerun pseudo_label")
            items.append({"features": c.held, "prompt": qa_prompt_pair(r)[1],
                          "labels": torch.tensor(row["labels"], dtype=torch.bool)})
    return items


def run(cfg: Config) -> dict:
    labels = read_labels(label_file(cfg))
    records = [r for r in read_split(cfg, "train") if r.qid in labels]
    results = {}
    for start in cfg.refine_localizer.starts:
        load_id, load_round, target = start_and_target(LocalizerId(start), cfg.round)
        model = load_model(cfg, localizer=load_id, round_=load_round, precision=cfg.refine_localizer.train.precision)
        items = pseudo_items(split_clips(cfg, model, records), labels)
        val = qa_items(split_clips(cfg, model, read_split(cfg, "val")))
        k = cfg.frames.n_keyframes
        tags = tracking.RunTags(variant=f"refine_{target.value}", study=tracking.Study.ROUND, round=cfg.round,
                                loc_pretrain=target.pretrained, loc_refine=True, n_frames=cfg.frames.n_frames,
                                dvc_stage="refine_localizer")
        pseudo = tracking.InputFile(label_file(cfg), tracking.InputContext.TRAIN, "pseudo_labels")
        with stage_run(cfg, "refine_localizer", tracking.Phase.REFINE, f"refine_{target.value}_r{cfg.round}", tags,
                       inputs=[pseudo]) as run_log:
            metrics = fit_module(cfg, model, "localizer", items, localizer_loss, f"refine_{target.value}",
                                 cfg.refine_localizer.train, localizer_dir(cfg, target), logger=run_log,
                                 best_metric="qa_acc",
                                 eval_fn=lambda m: {"qa_acc": chain_accuracy(m, val, Selector.LOCALIZER, k)})
            run_log.log_metrics({k: float(v) for k, v in metrics.items()})
        results[target.value] = {"from": load_id.value, "from_round": load_round, "questions": len(items), **metrics}
    out = {"round": cfg.round, "localizers": results}
    atomic_write_json(Path(cfg.paths.reports) / f"refine_localizer_r{cfg.round}.json", out)
    return out

