"""The chain's policy (paper §3.1-3.2): which frames the Answerer reads and how its answers become one, over the
modules of sevila.model.modeling.

- `answer`: the forward chain (SeViLA: Localizer keyframes -> Answerer) and the paper's baselines and upper bound,
  one typed `selector` x `fusion` each (sevila.model.selection): BLIP-2 concat (uniform frames), BLIP-2 voting
  (every frame alone, majority vote), the oracle (right iff any single frame is).
- `pseudo_labels`: the reverse chain: a frame is a keyframe iff the frozen Answerer answers right from it alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from sevila.model.modeling import SeViLA, check_batch, n_options_tensor
from sevila.model.selection import Fusion, Selector, frame_correct, oracle_correct, uniform_keyframes, vote


@dataclass
class AnswerResult:
    """What `answer` decided for each question, and from which frames."""

    pred: torch.Tensor  # [B] long option index (ORACLE: gold when any frame is right, else the vote)
    frames: torch.Tensor  # [B, K] long frame indices the Answerer read, temporal order
    qa_truncated: torch.Tensor  # [B] bool
    option_logits: torch.Tensor | None = None  # [B, C]      CONCAT
    per_frame_logits: torch.Tensor | None = None  # [B, K, C] VOTE / ORACLE
    frame_scores: torch.Tensor | None = None  # [B, T]      LOCALIZER
    loc_truncated: torch.Tensor | None = None  # [B] bool   LOCALIZER
    correct: torch.Tensor | None = None  # [B] bool when gold is given (ORACLE: any frame correct)


def answer(
    model: SeViLA,
    features: torch.Tensor,
    qa_prompts: Sequence[str],
    n_options: Sequence[int] | torch.Tensor,
    *,
    selector: Selector,
    fusion: Fusion,
    n_keyframes: int,
    loc_prompts: Sequence[str] | None = None,
    gold: Sequence[int] | torch.Tensor | None = None,
    frame_slots: int = 1,
) -> AnswerResult:
    """Answer B questions from their T sampled frames, features [B, T, P, Dv].

    selector x fusion (paper §4 baselines and SeViLA):
      LOCALIZER + CONCAT  SeViLA: Localizer keyframes -> Answerer (forward chain)
      UNIFORM   + CONCAT  BLIP-2 concat: k evenly spaced frames -> Answerer
      ALL       + VOTE    BLIP-2 voting: every frame answered alone, majority vote (UNIFORM + VOTE: k frames)
      ORACLE    + VOTE    upper bound: every frame answered alone; correct iff any frame is (needs `gold`)
    ORACLE with CONCAT is refused (the oracle is defined on single-frame answers).
    frame_slots (VOTE only): each frame read alone fills this many keyframe slots (`per_frame_inputs`); 1 is the
    official per-frame path, k the format of an Answerer fine-tuned on k keyframes.
    """
    selector, fusion = Selector(selector), Fusion(fusion)
    model._check_features(features, "answer")
    b, t = features.shape[:2]
    check_batch(qa_prompts, b, "qa_prompts")
    n_opt = n_options_tensor(n_options, b)  # [B]
    gold_t = None
    if gold is not None:
        gold_t = torch.as_tensor(list(gold) if not torch.is_tensor(gold) else gold, dtype=torch.long)  # [B]
        check_batch(gold_t.tolist(), b, "gold")
    device = features.device
    result_extra: dict[str, Any] = {}

    if frame_slots != 1 and fusion is not Fusion.VOTE:
        raise ValueError(f"frame_slots={frame_slots} is for frames read alone (fusion=vote), not {fusion.value}")
    if selector is Selector.ORACLE:
        if fusion is not Fusion.VOTE:
            raise ValueError("the oracle is defined on single-frame answers: use fusion=vote with selector=oracle")
        if gold_t is None:
            raise ValueError("selector=oracle needs the gold answers")
    if selector is Selector.LOCALIZER:
        if loc_prompts is None:
            raise ValueError("selector=localizer needs loc_prompts")
        loc = model.localize(features, loc_prompts, n_keyframes)
        frames = loc.keyframes  # [B, k]
        result_extra.update(frame_scores=loc.scores, loc_truncated=loc.truncated)
    elif selector is Selector.UNIFORM:
        frames = torch.tensor([uniform_keyframes(t, n_keyframes)] * b, dtype=torch.long)  # [B, k]
    else:  # ALL, ORACLE: every sampled frame
        frames = torch.arange(t).unsqueeze(0).expand(b, t)  # [B, T]
    frames = frames.to(device)
    rows = torch.arange(b, device=device).unsqueeze(1)  # [B, 1]
    chosen = features[rows, frames]  # [B, K, P, Dv] in temporal order

    if fusion is Fusion.CONCAT:
        out = model.answer_frames(chosen, qa_prompts, n_opt)  # [B, C]
        pred = out.pred  # [B]
        result_extra["option_logits"] = out.option_logits
    else:
        out = model.answer_each_frame(chosen, qa_prompts, n_opt, frame_slots)  # [B, K, C]
        pred = vote(out.option_logits)  # [B]
        result_extra["per_frame_logits"] = out.option_logits

    correct = None
    if gold_t is not None:
        gold_t = gold_t.to(pred.device)
        if selector is Selector.ORACLE:
            correct = oracle_correct(out.pred, gold_t)  # [B] any single frame right
            pred = torch.where(correct, gold_t, pred)  # [B]
        else:
            correct = pred == gold_t  # [B]
    return AnswerResult(pred=pred, frames=frames, qa_truncated=out.truncated, correct=correct, **result_extra)

def pseudo_labels(model: SeViLA, features: torch.Tensor, qa_prompts: Sequence[str], n_options: Sequence[int] | torch.Tensor,
                  gold: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Reverse chain (paper §3.2): [B, T] bool, True where the Answerer answers correctly from that frame alone."""
    with torch.no_grad():
        out = model.answer_each_frame(features, qa_prompts, n_options)  # pred [B, T]
    return frame_correct(out.pred, torch.as_tensor(gold, dtype=torch.long))  # [B, T]
