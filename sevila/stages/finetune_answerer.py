"""Stage `finetune_answerer` (forward chain, paper §3.1): the frozen Localizer picks k of the n frames of each
training question (top-k by score, kept in temporal order) and the Answerer learns `Option X` from them. Uniform
or random frames are the typed alternatives the baselines need (`finetune_answerer.frames`); each makes its own
Answerer (`AnswererId.trained_on`): the uniform one is the paper's BLIP-2^concat (Table 9), fine-tuned on the
frames it is evaluated on. The epoch kept is the one with the best val accuracy through the same frame choice."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sevila import tracking
from sevila.atomic import atomic_write_json
from sevila.config import AnswererId, Config, FrameSelection, LocalizerId, Selector
from sevila.inference.features import take_frames
from sevila.model.selection import uniform_keyframes
from sevila.stages.common import (
    answerer_dir, chain_accuracy, fit_module, load_model, qa_items, qa_prompt_pair, read_split, split_clips, stack,
)
from sevila.tracking.run_settings import stage_run

#: How val questions pick their frames for the kept-epoch accuracy (random frames are judged on uniform ones).
VAL_SELECTOR = {FrameSelection.LOCALIZER: Selector.LOCALIZER, FrameSelection.UNIFORM: Selector.UNIFORM,
                FrameSelection.RANDOM: Selector.UNIFORM}


@torch.no_grad()
def pick_frames(model, features: torch.Tensor, records, how: FrameSelection, k: int, seed: int) -> list[list[int]]:
    """Frame indices (temporal order) each question of one clip trains on."""
    t = features.shape[0]
    if how is FrameSelection.UNIFORM:
        return [uniform_keyframes(t, k)] * len(records)
    if how is FrameSelection.RANDOM:  # seeded per question, so a rerun or a resume picks the same frames
        return [sorted(np.random.default_rng([seed, *map(ord, r.qid)]).choice(t, size=min(k, t), replace=False)
                       .tolist()) for r in records]
    dev = next(model.t5.parameters()).device
    feats = features[None].expand(len(records), *features.shape).to(dev)  # [Q, T, P, D]
    out = model.localize(feats, [qa_prompt_pair(r)[1] for r in records], k)
    return out.keyframes.cpu().tolist()


def answerer_items(model, clips, how: FrameSelection, k: int, seed: int) -> list[dict]:
    items = []
    for c in clips:
        recs = [r for r in c.records if r.answer is not None]
        if not recs:
            continue
        for r, idx in zip(recs, pick_frames(model, c.features, recs, how, k, seed)):
            items.append({"features": take_frames(c.held, idx), "prompt": qa_prompt_pair(r)[0], "answer": r.answer,
                          "n_options": len(r.options)})
    return items


def answerer_loss(model, batch: list[dict]) -> torch.Tensor:
    dev = next(model.t5.parameters()).device
    loss, _ = model.answerer_loss(stack(batch, "features").to(dev), [b["prompt"] for b in batch],
                                  [b["answer"] for b in batch], [b["n_options"] for b in batch])
    return loss


def stage_name(frames: FrameSelection) -> str:
    """The DVC stage that makes the Answerer of `frames`: finetune_answerer (SeViLA's), finetune_answerer_uniform."""
    return "finetune_answerer" + ("" if frames is FrameSelection.LOCALIZER else f"_{frames.value}")


def run(cfg: Config) -> dict:
    ft = cfg.finetune_answerer
    answerer = AnswererId.trained_on(ft.frames)
    stage = stage_name(ft.frames)
    name = f"{stage}_r{cfg.round}"  # report file and MLflow run
    uses_loc = ft.frames is FrameSelection.LOCALIZER
    model = load_model(cfg, localizer=ft.localizer if uses_loc else LocalizerId.BACKBONE,
                       precision=ft.train.precision)
    k = cfg.frames.n_keyframes
    items = answerer_items(model, split_clips(cfg, model, read_split(cfg, "train")), ft.frames, k, ft.train.seed)
    val = qa_items(split_clips(cfg, model, read_split(cfg, "val")))
    tags = tracking.RunTags(variant=f"finetune_{ft.frames.value}", round=cfg.round, answerer=answerer,
                            loc_pretrain=ft.localizer.pretrained if uses_loc else None,
                            loc_refine=ft.localizer.refined if uses_loc else None,
                            n_frames=cfg.frames.n_frames, n_keyframes=k, dvc_stage=stage)
    with stage_run(cfg, "finetune_answerer", tracking.Phase.FINETUNE, name, tags) as run_log:
        metrics = fit_module(cfg, model, "answerer", items, answerer_loss, stage, ft.train,
                             answerer_dir(cfg, answerer), logger=run_log, best_metric="qa_acc",
                             eval_fn=lambda m: {"qa_acc": chain_accuracy(m, val, VAL_SELECTOR[ft.frames], k)})
        run_log.log_metrics({k_: float(v) for k_, v in metrics.items()})
    metrics |= {"round": cfg.round, "questions": len(items), "val_questions": len(val), "frames": ft.frames.value,
                "answerer": answerer.value, "localizer": ft.localizer.value if uses_loc else None}
    atomic_write_json(Path(cfg.paths.reports) / f"{name}.json", metrics)
    return metrics
