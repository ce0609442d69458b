"""Stage `evaluate`: every variant of `evaluate.variants` (a row of an ablation table) on one split: selector
(uniform, localizer, oracle, all) x fusion (concat, vote), n -> k, with the Localizer and Answerer it names.
Writes runs/round<N>/eval/<variant>/{predictions.jsonl,metrics.json} (predictions carry the chosen keyframes) and
logs each variant as an MLflow run tagged for the ablation tables."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from sevila import tracking
from sevila.atomic import atomic_write_json, atomic_write_text
from sevila.config import Config, Selector, VariantConfig, frame_slots
from sevila.data.video import SkipLog, frame_labels
from sevila.evaluation.qa_metrics import keyframe_in_span, localizer_metrics, qa_metrics
from sevila.model import chain
from sevila.stages.common import load_model, qa_prompt_pair, read_split, round_dir, split_clips
from sevila.tracking.run_settings import stage_run

MAX_QUESTIONS = 16  # questions of one clip per forward pass

log = logging.getLogger(__name__)


def variant_dir(cfg: Config, name: str) -> Path:
    return round_dir(cfg) / "eval" / name


def metrics_path(cfg: Config, name: str) -> Path:
    """The metrics file of variant `name` in round `cfg.round` (what dvc.yaml declares as evaluate's metrics; the
    rounds' stopping rule reads it back, sevila.experiments.rounds)."""
    return variant_dir(cfg, name) / "metrics.json"


@torch.no_grad()
def answer_clip(model, v: VariantConfig, features: torch.Tensor, meta, records) -> list[dict]:
    dev = next(model.t5.parameters()).device
    rows = []
    for i in range(0, len(records), MAX_QUESTIONS):
        recs = records[i:i + MAX_QUESTIONS]
        qa, loc = zip(*(qa_prompt_pair(r) for r in recs))
        gold = [r.answer for r in recs] if all(r.answer is not None for r in recs) else None
        feats = features[None].expand(len(recs), *features.shape).to(dev)  # [Q, T, P, D]
        res = chain.answer(model, feats, list(qa), [len(r.options) for r in recs], selector=v.selector, fusion=v.fusion,
                           n_keyframes=v.n_keyframes, loc_prompts=list(loc), gold=gold, frame_slots=v.frame_slots)
        for q, r in enumerate(recs):
            frames = res.frames[q].cpu().numpy()
            row = {"qid": r.qid, "qtype": r.qtype, "answer": r.answer, "pred": int(res.pred[q]),
                   "keyframes": [round(float(t), 4) for t in meta.timestamps[frames]],
                   "qa_truncated": bool(res.qa_truncated[q])}
            if res.correct is not None:
                row["correct"] = bool(res.correct[q])
            if res.frame_scores is not None:
                row["frame_scores"] = [round(float(s), 4) for s in res.frame_scores[q].float().cpu()]
            rows.append(row)
    return rows


def variant_metrics(v: VariantConfig, rows: list[dict], records: dict, timestamps: dict) -> dict[str, float]:
    labelled = [r for r in rows if r["answer"] is not None]
    dataset = records[rows[0]["qid"]].dataset if rows else "nextqa"
    metrics = qa_metrics(dataset if dataset != "synth" else "nextqa", [r["qid"] for r in labelled],
                         [r["qtype"] for r in labelled], [r["pred"] for r in labelled],
                         [r["answer"] for r in labelled]) if labelled else {}
    if v.selector.uses_keyframes:
        in_span, auc_pairs = [], []
        for r in rows:
            rec = records[r["qid"]]
            if not rec.evidence:
                continue
            ts = timestamps[r["qid"]]
            in_span.append(keyframe_in_span(r["keyframes"], ts, list(rec.evidence)))
            if "frame_scores" in r:
                auc_pairs.append((r["frame_scores"], frame_labels(ts, rec.evidence)))
        if in_span:
            metrics |= localizer_metrics(in_span, auc_pairs)
    metrics["qa_truncated"] = sum(r["qa_truncated"] for r in rows)
    return metrics


def variant_tags(cfg: Config, name: str, v: VariantConfig) -> tracking.RunTags:
    """The variant's MLflow pivot tags (checked on construction, so a bad variant fails before anything runs)."""
    uses_loc = v.selector is Selector.LOCALIZER
    return tracking.RunTags(variant=name, study=v.study, selector=v.selector, fusion=v.fusion, n_frames=v.n_frames,
                            n_keyframes=v.n_keyframes, loc_pretrain=v.localizer.pretrained if uses_loc else None,
                            loc_refine=v.localizer.refined if uses_loc else None, answerer=v.answerer.value,
                            round=cfg.round, dvc_stage=f"evaluate@{name}")


def evaluate_variant(cfg: Config, name: str, v: VariantConfig, records: list, model=None) -> dict:
    tags = variant_tags(cfg, name, v)
    model = model or load_model(cfg, localizer=v.localizer, answerer=v.answerer)
    v = dataclasses.replace(v, frame_slots=frame_slots(v, cfg.frames.n_keyframes))  # null: its Answerer's input
    skipped = SkipLog()
    rows, timestamps = [], {}
    for c in tqdm(split_clips(cfg, model, records, v.n_frames, skipped), desc=f"evaluate {name}", unit="clip"):
        rows += answer_clip(model, v, c.features, c.meta, c.records)
        timestamps |= {r.qid: c.meta.timestamps for r in c.records}
    by_qid = {r.qid: r for r in records}
    metrics = variant_metrics(v, rows, by_qid, timestamps) | {"skipped": len(skipped)}
    if metrics["qa_truncated"]:  # issue 24: said, not only counted in the JSON
        log.warning("evaluate %s: %d of %d Answerer prompts were cut at %d T5 tokens (their last options unseen); "
                    "model.max_text_len raises the limit (the official code's is 77)", name, metrics["qa_truncated"],
                    len(rows), model.config.max_text_len)
    out = variant_dir(cfg, name)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(metrics_path(cfg, name), metrics)
    if len(skipped):
        skipped.write(out / "skipped.json")
    with stage_run(cfg, "evaluate", tracking.Phase.EVALUATE, name, tags, variant=name) as run_log:
        run_log.log_metrics({k: float(x) for k, x in metrics.items()})
        run_log.log_artifact(out)
    return metrics


def run(cfg: Config) -> dict:
    ev = cfg.evaluate
    names = list(ev.only) or list(ev.variants)
    for name in names:  # every variant checked before the first one writes
        variant_tags(cfg, name, ev.variants[name])
    records = read_split(cfg, ev.split)
    return {name: evaluate_variant(cfg, name, ev.variants[name], records) for name in names}

