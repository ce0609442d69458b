"""Which frames the Answerer reads and how per-frame answers become one answer: pure functions on tensors.

The typed modes (docs/design.md §3: never substrings of a task string, the official code's main source of bugs) are
defined in sevila.config: `Selector` picks frames (uniform, localizer, all, oracle), `Fusion` turns the chosen
frames into one answer (concat, vote).
"""
from __future__ import annotations

import torch

from sevila.config import Fusion, Selector  # noqa: F401 - the modes these functions implement


def uniform_keyframes(n_frames: int, k: int) -> list[int]:
    """k of `n_frames` frames, evenly: the middle frame of each of k equal segments (the same rule as the
    uniform frame sampling of docs/design.md §2), e.g. n=32, k=4 -> [4, 12, 20, 28]; k == n gives every frame."""
    if not 1 <= k <= n_frames:
        raise ValueError(f"cannot pick {k} keyframes out of {n_frames} frames (need 1 <= k <= n_frames)")
    return [int((2 * i + 1) * n_frames // (2 * k)) for i in range(k)]


def localizer_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k frames by Localizer score, returned in TEMPORAL order with their scores.

    scores: [B, T] -> (indices [B, k] ascending, scores [B, k]). Ties go to the earlier frame (a stable sort),
    so equal scores never make the choice depend on the kernel, unlike `torch.topk`.
    (Official code: `torch.topk(loc_yes, k).indices`, then each row sorted.)
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, T], got shape {tuple(scores.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"cannot pick {k} keyframes out of {scores.shape[1]} frames")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [B, T] best first, ties earlier first
    idx = torch.sort(order[:, :k], dim=1).values  # [B, k] temporal order
    return idx, torch.gather(scores, 1, idx)  # [B, k], [B, k]


def vote(per_frame_logits: torch.Tensor) -> torch.Tensor:
    """Majority vote over per-frame answers (BLIP-2 voting).

    per_frame_logits: [B, T, C] option logits of each frame answered alone (options a question lacks hold
    -inf) -> [B] long. Each frame votes for its argmax option. A tie between options with the most votes goes
    to the tied option with the highest logit summed over the frames, then to the lowest option index.
    (The official code takes `Counter(...).most_common(1)`, which breaks ties by the earliest frame; ours does
    not depend on frame order.)
    """
    if per_frame_logits.dim() != 3:
        raise ValueError(f"per-frame logits must be [B, T, C], got shape {tuple(per_frame_logits.shape)}")
    n_options = per_frame_logits.shape[2]
    votes = torch.nn.functional.one_hot(per_frame_logits.argmax(dim=2), n_options).sum(dim=1)  # [B, C]
    tied = votes == votes.max(dim=1, keepdim=True).values  # [B, C] options with the most votes
    summed = per_frame_logits.float().sum(dim=1)  # [B, C] (-inf for missing options, never tied anyway)
    summed = summed.masked_fill(~tied, float("-inf"))  # [B, C] only tied options compete
    return summed.argmax(dim=1)  # [B]; argmax returns the first maximum = lowest index


def frame_correct(per_frame_pred: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """[B, T] predictions vs [B] gold answers -> [B, T] bool: which frames alone answer correctly.
    (Reverse chain, paper §3.2: a frame is a pseudo-positive keyframe iff this is True.)"""
    if per_frame_pred.dim() != 2 or gold.shape != per_frame_pred.shape[:1]:
        raise ValueError(
            f"need [B, T] predictions and [B] gold, got {tuple(per_frame_pred.shape)} and {tuple(gold.shape)}"
        )
    return per_frame_pred == gold.to(per_frame_pred.device).unsqueeze(1)  # [B, T]


def oracle_correct(per_frame_pred: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Oracle upper bound: [B] bool, correct iff ANY single frame answers correctly."""
    return frame_correct(per_frame_pred, gold).any(dim=1)  # [B]
