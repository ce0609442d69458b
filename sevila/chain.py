"""What the chain's stages share: where each trained module lives, how a model is assembled from the backbone
plus module checkpoints, and how records become cached ViT features.

Module checkpoints hold ONE module each and name it (sevila.checkpoints), so assembling a variant is: load the
backbone, then overlay the Localizer and Answerer it asks for; nothing is merged by hand and every load is
reported (the official code's hard-coded path silently overwrote the pre-trained Localizer, DESIGN.md §2).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from sevila.config import Config
from sevila.settings import AnswererId, LocalizerId, TrainConfig
from sevila.data.records import QARecord, Record, read_records
from sevila.data.video import BadVideoPolicy, SkipLog

log = logging.getLogger(__name__)


def localizer_dir(cfg: Config, ident: LocalizerId, round_: int | None = None) -> Path:
    """models/localizer/qvh, models/localizer/{sr,qvh_sr}_r<round> (self-refined ones carry their round)."""
    ident = LocalizerId(ident)
    if ident is LocalizerId.BACKBONE:
        raise ValueError("the backbone's Localizer is part of the backbone checkpoint, not a module directory")
    name = ident.value if not ident.refined else f"{ident.value}_r{round_ or cfg.round}"
    return Path(cfg.paths.models) / "localizer" / name


def answerer_dir(cfg: Config, round_: int | None = None) -> Path:
    return Path(cfg.paths.models) / "answerer" / f"finetuned_r{round_ or cfg.round}"


def round_dir(cfg: Config, round_: int | None = None) -> Path:
    return Path(cfg.paths.runs) / f"round{round_ or cfg.round}"


def device_of(cfg: Config) -> torch.device:
    if cfg.model.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.model.device)


def load_model(cfg: Config, localizer: LocalizerId = LocalizerId.BACKBONE,
               answerer: AnswererId = AnswererId.ZERO_SHOT, round_: int | None = None):
    """The backbone from `model.weights` with the asked-for Localizer and Answerer laid over it, frozen, eval."""
    from sevila.checkpoints import load_sevila
    from sevila.loading import load_for_inference

    model, reports = load_for_inference(cfg.model.weights, cfg.model.backbone)
    if LocalizerId(localizer) is not LocalizerId.BACKBONE:
        reports.append(load_sevila(localizer_dir(cfg, localizer, round_), model)[1])
    if AnswererId(answerer) is AnswererId.FINETUNED:
        reports.append(load_sevila(answerer_dir(cfg, round_), model)[1])
    for rep in reports:
        log.info("%s", rep.summary())
    model.set_trainable(localizer=False, answerer=False)
    return model.to(device_of(cfg)).eval()


def read_split(cfg: Config, split: str, moments: bool = False) -> list[Record]:
    name = f"moments_{split}" if moments else split
    return read_records(Path(cfg.paths.processed) / f"{name}.jsonl")


def clip_features(cfg: Config, model, records: Sequence[Record], n_frames: int | None = None,
                  skip_log: SkipLog | None = None):
    """Cached ViT features per clip (one decode and one ViT pass per video and window, shared by every question,
    module, variant and round). Bad videos follow `frames.bad_video`: fail, or skip and write them down."""
    from sevila.features import FeatureCache, iter_clip_features

    cache = FeatureCache(cfg.frames.cache, model)
    policy = BadVideoPolicy(cfg.frames.bad_video.value)
    videos = Path(cfg.paths.world) / "videos"
    n_frames = cfg.frames.n_frames if n_frames is None else n_frames  # 0 is an error downstream, never "default"
    return list(iter_clip_features(cache, records, videos, n_frames, policy=policy,
                                   skip_log=skip_log if skip_log is not None else SkipLog()))


def qa_prompt_pair(rec: QARecord) -> tuple[str, str]:
    """(Answerer prompt, Localizer prompt) of a record, VLEP's question-less form included (DESIGN.md §2)."""
    from sevila.prompts import qa_prompts

    return qa_prompts(rec.question, rec.options)


def fit_module(cfg: Config, model, module: str, items: list, loss_fn, stage: str, settings: TrainConfig,
               out_dir: Path,
               logger=None, eval_fn=None) -> dict:
    """Train one module (`localizer` or `answerer`) with the shared loop, then save it alone to `out_dir`.

    Training state (resumable after an interruption) lives under runs/train/<stage>-<hash of settings>, so the
    same run resumes while changed settings start afresh; the published checkpoint holds and names one module."""
    import hashlib
    import json

    from sevila.checkpoints import save_sevila
    from sevila.config import to_dict
    from sevila.train import train

    model.set_trainable(**{module: True})
    digest = hashlib.sha256(json.dumps([settings.to_dict(), len(items), str(out_dir)]).encode()).hexdigest()[:10]
    work = Path(cfg.paths.runs) / "train" / f"{stage}-{digest}"
    result = train(model, items, loss_fn, settings, work, collate_fn=list, logger=logger, eval_fn=eval_fn,
                   device=device_of(cfg))
    model.set_trainable(**{module: False})
    save_sevila(model, out_dir, modules=(module,), step=result.step, run_config=to_dict(cfg))
    losses = [h["loss"] for h in result.history if "loss" in h]
    return {"steps": result.step, "final_loss": losses[-1] if losses else float("nan"),
            "first_loss": losses[0] if losses else float("nan")}


def stack(batch: list, key: str) -> torch.Tensor:
    return torch.stack([b[key] for b in batch])
