"""Stage `pseudo_label` (reverse chain, paper §3.2): the frozen Answerer answers each question from each of its
`n_frames` frames alone (teacher-forced option-letter logits, all frames of a question in one batch); a frame is a
pseudo-positive keyframe iff that single-frame answer is correct. Written per round as a versioned file:
runs/round<N>/pseudo_labels.jsonl (per question: frame indices, timestamps, labels, the Answerer's margins) and
pseudo_label_stats.json (positives per question, share of questions without a positive frame, and, where ground
truth exists, how many pseudo-positives lie inside the event)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sevila import tracking
from sevila.atomic import atomic_write_json, atomic_write_text
from sevila.config import Config
from sevila.data.video import SkipLog, frame_labels
from sevila.stages.common import load_model, qa_prompt_pair, read_split, round_dir, split_clips
from sevila.tracking.run_settings import stage_run

MAX_ROWS = 512  # (question, frame) sequences per Answerer pass


def label_file(cfg: Config, round_: int | None = None) -> Path:
    return round_dir(cfg, round_) / "pseudo_labels.jsonl"


@torch.no_grad()
def label_clip(model, features: torch.Tensor, records) -> list[dict]:
    """Pseudo-labels of every question of one clip: features [T, P, D] shared by the clip's questions."""
    dev = next(model.t5.parameters()).device
    t = features.shape[0]
    per_pass = max(1, MAX_ROWS // t)
    rows = []
    for i in range(0, len(records), per_pass):
        recs = records[i:i + per_pass]
        feats = features[None].expand(len(recs), *features.shape).to(dev)  # [Q, T, P, D] (a view, no copy)
        out = model.answer_each_frame(feats, [qa_prompt_pair(r)[0] for r in recs], [len(r.options) for r in recs])
        logits = out.option_logits.float().cpu()  # [Q, T, C]
        for q, r in enumerate(recs):
            gold = logits[q, :, r.answer]  # [T]
            others = logits[q].clone()
            others[:, r.answer] = float("-inf")
            rows.append({"labels": (out.pred[q].cpu() == r.answer).tolist(),
                         "margins": [round(float(m), 4) for m in gold - others.max(dim=1).values]})
    return rows


def run(cfg: Config) -> dict:
    answerer = cfg.pseudo_label.answerer
    if answerer.finetuned and cfg.round < 2:
        raise ValueError(f"pseudo_label.answerer={answerer.value} needs a previous round's Answerer (round >= 2)")
    model = load_model(cfg, answerer=answerer, round_=cfg.round - 1 if answerer.finetuned else None)
    records = [r for r in read_split(cfg, "train") if r.answer is not None]
    skipped = SkipLog()
    lines, n_pos = [], []
    pos_with_truth = pos_inside = event_frames = 0  # where ground-truth spans exist (synthetic world)
    for c in tqdm(split_clips(cfg, model, records, skip_log=skipped), desc="pseudo-labels", unit="clip"):
        for r, row in zip(c.records, label_clip(model, c.features, c.records)):
            labels = np.array(row["labels"], dtype=bool)
            n_pos.append(int(labels.sum()))
            if r.evidence:
                inside = frame_labels(c.meta.timestamps, r.evidence)
                pos_with_truth += int(labels.sum())
                pos_inside += int((labels & inside).sum())
                event_frames += int(inside.sum())
            lines.append(json.dumps({"qid": r.qid, "video": r.video, "round": cfg.round,
                                     "frame_indices": c.meta.indices.tolist(),
                                     "timestamps": [round(float(x), 4) for x in c.meta.timestamps], **row}))
    out = label_file(cfg)
    atomic_write_text(out, "\n".join(lines) + "\n")
    pos = np.array(n_pos)
    stats = {"round": cfg.round, "questions": len(pos), "skipped": len(skipped),
             "positives_per_question": float(pos.mean()) if len(pos) else 0.0,
             "share_no_positive": float((pos == 0).mean()) if len(pos) else 0.0}
    if event_frames:
        stats["positive_precision_vs_event"] = pos_inside / max(1, pos_with_truth)  # pseudo-positives in the event
        stats["event_frame_recall"] = pos_inside / event_frames  # event frames the Answerer gets right alone
    atomic_write_json(out.with_name("pseudo_label_stats.json"), stats)
    if len(skipped):
        skipped.write(out.with_name("pseudo_label_skipped.json"))
    tags = tracking.RunTags(variant="pseudo_label", answerer=answerer.value, round=cfg.round,
                            n_frames=cfg.frames.n_frames, dvc_stage="pseudo_label")
    with stage_run(cfg, "pseudo_label", tracking.Phase.PSEUDO_LABEL, f"pseudo_label_r{cfg.round}", tags) as run_log:
        run_log.log_metrics({k: float(v) for k, v in stats.items()})
        run_log.set_tags({"pseudo_labels_digest": tracking.file_digest(out)})  # = the refine run's input digest
    return stats


def read_labels(path: Path) -> dict[str, dict]:
    rows = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    rows[row["qid"]] = row
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{path}:{lineno}: not a pseudo-label row ({e})") from None
    return rows

