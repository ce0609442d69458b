"""QVHighlights moment retrieval: the official metrics, and Localizer frame scores -> predicted windows.

The metrics follow the dataset's official standalone evaluation (jayleicn/moment_detr,
`standalone_eval/eval.py` + `utils.py`, itself adapted from MMAction2/ActivityNet) definition for definition,
so that the official sample predictions reproduce the official figures to the last printed digit
(tests/evaluation/test_moments.py pins every MR key of `sample_val_preds_metrics_raw.json`):

- IoU thresholds are `np.linspace(0.5, 0.95, 10)` rounded to 2 decimals (0.5, 0.55, ... 0.95), and a window
  counts at a threshold when IoU >= threshold.
- Length buckets: short (0, 10], middle (10, 30], long (30, 150] seconds of GT WINDOW length. A query's GT
  windows outside the range are dropped for that bucket, and a query with no window left is dropped from it.
  `full` keeps every query and every window, unfiltered.
- mAP: per query, the first `max_pred_windows` (10) predicted windows as listed, sorted by score descending
  (stable: ties keep their listed order), are greedily matched to GT windows per threshold in the ActivityNet
  way (`compute_average_precision_detection`): each prediction takes the unmatched GT window of highest IoU
  (ties: the later-listed GT window, as `argsort()[::-1]` does), and is a true positive when that IoU reaches
  the threshold. AP is the VOC-2011 interpolated area under precision/recall with recall = TP / #GT windows.
  mAP@t is the mean over queries; `average` is the mean over the ten thresholds.
- R1@t: the FIRST listed predicted window (the official code takes `pred_relevant_windows[0]`, it does not
  re-sort), against the GT window with which it has the highest IoU (first one on ties); the share of queries
  whose IoU >= t.
- Every figure is `float(f"{100 * x:.2f}")`.

Everything is vectorised over queries (padded arrays [Q, P, G]); the only Python loop is over the <= 10
predictions of a query, because greedy matching is sequential. The full val set evaluates in well under a second.
"""
from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

# np.linspace(0.5, 0.95, 10) rounded as the official code does (so 0.7 is 0.7, not 0.7000000000000001).
IOU_THRESHOLDS: tuple[float, ...] = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
MAX_PRED_WINDOWS = 10  # the official evaluation keeps at most the first 10 predicted windows per query


class LengthBucket(enum.Enum):
    """GT-window length buckets of the official evaluation, as (min, max] in seconds."""

    SHORT = "short"
    MIDDLE = "middle"
    LONG = "long"
    FULL = "full"

    @property
    def length_range(self) -> tuple[float, float]:
        return _RANGES[self]


_RANGES = {
    LengthBucket.SHORT: (0.0, 10.0),
    LengthBucket.MIDDLE: (10.0, 30.0),
    LengthBucket.LONG: (30.0, 150.0),
    LengthBucket.FULL: (0.0, 150.0),
}
# Official evaluation order (the output dict is sorted by name afterwards, like the official file).
BUCKETS: tuple[LengthBucket, ...] = (LengthBucket.SHORT, LengthBucket.MIDDLE, LengthBucket.LONG, LengthBucket.FULL)

BRIEF_KEYS: tuple[str, ...] = (
    "MR-full-R1@0.5",
    "MR-full-R1@0.7",
    "MR-full-mAP",
    "MR-full-mAP@0.5",
    "MR-full-mAP@0.75",
    "MR-long-mAP",
    "MR-middle-mAP",
    "MR-short-mAP",
)


def _pct(x: float) -> float:
    """The official rounding: float(f"{100 * x:.2f}")."""
    return float(f"{100 * x:.2f}")


# ----------------------------------------------------------------------------------------------------------
# IoU


def temporal_iou_cross(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    """IoU of every pair: spans1 [..., N, 2] x spans2 [..., M, 2] -> [..., N, M]. A zero union gives 0."""
    s1 = np.asarray(spans1, dtype=float)
    s2 = np.asarray(spans2, dtype=float)
    area1 = s1[..., :, 1] - s1[..., :, 0]  # [..., N]
    area2 = s2[..., :, 1] - s2[..., :, 0]  # [..., M]
    left = np.maximum(s1[..., :, None, 0], s2[..., None, :, 0])  # [..., N, M]
    right = np.minimum(s1[..., :, None, 1], s2[..., None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def temporal_iou_paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row i of a [N, 2] with row i of b [N, 2] -> [N].

    As in the official `compute_temporal_iou_batch_paired`, the "union" is the hull max(end) - min(start); it
    equals the true union whenever the windows overlap, and the IoU is 0 either way when they do not.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    inter = np.maximum(0, np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]))
    union = np.maximum(a[:, 1], b[:, 1]) - np.minimum(a[:, 0], b[:, 0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


# ----------------------------------------------------------------------------------------------------------
# Padded batches


@dataclass(frozen=True)
class QueryBatch:
    """Queries padded to common sizes so that every step runs on whole arrays."""

    gt: np.ndarray  # [Q, G, 2]
    gt_valid: np.ndarray  # [Q, G] bool
    pred: np.ndarray  # [Q, P, 3] (start, end, score), as listed (truncated to max_pred_windows)
    pred_valid: np.ndarray  # [Q, P] bool


def _pad(rows: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    n = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), max(n, 1), width))
    valid = np.zeros((len(rows), max(n, 1)), dtype=bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        valid[i, : len(r)] = True
    return out, valid


def batch_queries(
    gt_windows: Sequence[np.ndarray], pred_windows: Sequence[np.ndarray], max_pred_windows: int | None
) -> QueryBatch:
    """Pad per-query GT [G_i, 2] and predicted [P_i, 3] windows (as listed, cut to `max_pred_windows`)."""
    if max_pred_windows is not None:
        pred_windows = [p[:max_pred_windows] for p in pred_windows]
    gt, gt_valid = _pad(gt_windows, 2)
    pred, pred_valid = _pad(pred_windows, 3)
    return QueryBatch(gt, gt_valid, pred, pred_valid)


# ----------------------------------------------------------------------------------------------------------
# AP and R1


def average_precision(batch: QueryBatch, thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """Per-query, per-threshold AP [Q, T] with the official (ActivityNet) greedy matching and VOC interpolation."""
    thr = np.asarray(thresholds, dtype=float)  # [T]
    Q, P, _ = batch.pred.shape
    G = batch.gt.shape[1]
    T = len(thr)
    # Sort each query's predictions by score, descending; Python's sort (official) is stable, so is this.
    # Padding goes last (its score is irrelevant: it is masked out of TP and FP below).
    sort_key = np.where(batch.pred_valid, -batch.pred[..., 2], np.inf)
    order = np.argsort(sort_key, axis=1, kind="stable")  # [Q, P]
    pred = np.take_along_axis(batch.pred, order[..., None], axis=1)
    pred_valid = np.take_along_axis(batch.pred_valid, order, axis=1)

    iou = temporal_iou_cross(pred[..., :2], batch.gt)  # [Q, P, G]
    iou = np.where(batch.gt_valid[:, None, :], iou, -np.inf)
    locked = np.zeros((Q, T, G), dtype=bool)  # GT window already matched, per threshold
    tp = np.zeros((Q, T, P), dtype=bool)
    g_index = np.arange(G)
    for p in range(P):
        cand = np.where(locked, -np.inf, iou[:, None, p, :])  # [Q, T, G]
        # Highest IoU among unmatched GT; ties go to the LAST index, as the official argsort()[::-1] walk does.
        j = G - 1 - np.argmax(cand[..., ::-1], axis=-1)  # [Q, T]
        best = np.take_along_axis(cand, j[..., None], axis=-1)[..., 0]
        hit = (best >= thr[None, :]) & pred_valid[:, p, None]
        tp[:, :, p] = hit
        locked |= hit[..., None] & (g_index[None, None, :] == j[..., None])
    fp = ~tp & pred_valid[:, None, :]
    tp_cum = np.cumsum(tp, axis=-1, dtype=float)
    fp_cum = np.cumsum(fp, axis=-1, dtype=float)
    n_pos = batch.gt_valid.sum(axis=1).astype(float)  # [Q]
    recall = tp_cum / n_pos[:, None, None]
    seen = tp_cum + fp_cum
    precision = np.divide(tp_cum, seen, out=np.zeros_like(tp_cum), where=seen > 0)
    # VOC 2011 interpolation: precision made monotone from the right, integrated where recall steps.
    zeros = np.zeros((Q, T, 1))
    m_prec = np.concatenate([zeros, precision, zeros], axis=-1)
    m_rec = np.concatenate([zeros, recall, np.ones((Q, T, 1))], axis=-1)
    m_prec = np.maximum.accumulate(m_prec[..., ::-1], axis=-1)[..., ::-1]
    return np.sum((m_rec[..., 1:] - m_rec[..., :-1]) * m_prec[..., 1:], axis=-1)


def recall_at_one_iou(batch: QueryBatch) -> np.ndarray:
    """IoU [Q] of each query's first listed predicted window with its best-matching GT window."""
    top1 = batch.pred[:, 0, :2]  # [Q, 2]
    iou = temporal_iou_cross(top1[:, None, :], batch.gt)[:, 0, :]  # [Q, G]
    iou = np.where(batch.gt_valid, iou, -np.inf)
    best = np.argmax(iou, axis=1)  # first maximum, like np.argmax in the official code
    gt = batch.gt[np.arange(len(best)), best]
    return temporal_iou_paired(top1, gt)


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def _in_range(windows: np.ndarray, bucket: LengthBucket) -> np.ndarray:
    if bucket is LengthBucket.FULL:  # the official code returns the data untouched for [0, 150]
        return windows
    lo, hi = bucket.length_range
    length = windows[:, 1] - windows[:, 0]
    return windows[(length > lo) & (length <= hi)]


def evaluate_moments(
    ground_truth: Mapping[str, np.ndarray | Sequence[Sequence[float]]],
    predictions: Mapping[str, np.ndarray | Sequence[Sequence[float]]],
    max_pred_windows: int | None = MAX_PRED_WINDOWS,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict:
    """Moment-retrieval metrics in the official output layout.

    ground_truth: qid -> GT windows [[start, end], ...] (at least one each).
    predictions: qid -> predicted windows [[start, end, score], ...] (at least one each), best first.
    The two must hold the same qids (the official evaluation asserts it; see `match_qids` to evaluate an
    intersection explicitly).

    Returns {"brief": {...}, "full": {"MR-mAP": {"0.5": .., ..., "average": ..}, "MR-R1": {...}},
    "long": ..., "middle": ..., "short": ...}, all in percent with 2 decimals. A bucket with no query in it
    (possible on small sets) gets empty dicts and no brief entry.
    """
    gt = {str(q): _as_windows(w, 2, f"ground truth qid {q}") for q, w in ground_truth.items()}
    pred = {str(q): _as_windows(w, 3, f"prediction qid {q}") for q, w in predictions.items()}
    missing, extra = sorted(set(gt) - set(pred)), sorted(set(pred) - set(gt))
    if missing or extra:
        raise ValueError(
            f"qids of ground truth and predictions differ: {len(missing)} without prediction "
            f"{missing[:5]}, {len(extra)} without ground truth {extra[:5]}"
        )
    qids = list(pred)
    per_bucket: dict[str, dict[str, dict[str, float]]] = {}
    for bucket in BUCKETS:
        kept = [(q, _in_range(gt[q], bucket)) for q in qids]
        kept = [(q, w) for q, w in kept if len(w)]
        if not kept:
            per_bucket[bucket.value] = {"MR-mAP": {}, "MR-R1": {}}
            continue
        batch = batch_queries([w for _, w in kept], [pred[q] for q, _ in kept], max_pred_windows)
        ap = average_precision(batch, thresholds)  # [Q, T]
        ap_thds = ap.mean(0)
        m_ap = {str(t): _pct(v) for t, v in zip(thresholds, ap_thds)}
        m_ap["average"] = _pct(float(np.mean(ap_thds)))
        r1_iou = recall_at_one_iou(batch)
        r1 = {str(t): float(f"{np.mean(r1_iou >= t) * 100:.2f}") for t in thresholds}
        per_bucket[bucket.value] = {"MR-mAP": m_ap, "MR-R1": r1}

    full = per_bucket["full"]
    candidates = {
        "MR-full-R1@0.5": full["MR-R1"].get("0.5"),
        "MR-full-R1@0.7": full["MR-R1"].get("0.7"),
        "MR-full-mAP": full["MR-mAP"].get("average"),
        "MR-full-mAP@0.5": full["MR-mAP"].get("0.5"),
        "MR-full-mAP@0.75": full["MR-mAP"].get("0.75"),
        "MR-long-mAP": per_bucket["long"]["MR-mAP"].get("average"),
        "MR-middle-mAP": per_bucket["middle"]["MR-mAP"].get("average"),
        "MR-short-mAP": per_bucket["short"]["MR-mAP"].get("average"),
    }
    brief = {k: v for k, v in sorted(candidates.items()) if v is not None}
    out: dict = {"brief": brief}
    out.update(sorted(per_bucket.items()))
    return out


def match_qids(
    ground_truth: Mapping[str, object], predictions: Mapping[str, object]
) -> tuple[dict[str, object], dict[str, object], dict[str, int]]:
    """Keep only the qids present in both (the official `match_number=False`), and say how many were dropped."""
    gt = {str(k): v for k, v in ground_truth.items()}
    pred = {str(k): v for k, v in predictions.items()}
    shared = [q for q in pred if q in gt]
    counts = {"n_evaluated": len(shared), "n_without_prediction": len(set(gt) - set(pred)),
              "n_without_ground_truth": len(set(pred) - set(gt))}
    return {q: gt[q] for q in shared}, {q: pred[q] for q in shared}, counts


def _as_windows(w, width: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(w, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: windows must be lists of {width} numbers, got {w!r}") from None
    if arr.ndim != 2 or arr.shape[1] < width or (width == 2 and arr.shape[1] != 2) or len(arr) == 0:
        kind = "[start, end]" if width == 2 else "[start, end, score]"
        raise ValueError(f"{what}: expected a non-empty list of {kind} windows, got {w!r}")
    arr = arr[:, :width]
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: windows must be finite numbers, got {w!r}")
    if np.any(arr[:, 1] < arr[:, 0]):
        raise ValueError(f"{what}: a window ends before it starts: {w!r}")
    return arr


# ----------------------------------------------------------------------------------------------------------
# Files (official formats)


def _read_jsonl(path: Path):
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def load_ground_truth(path: str | Path) -> dict[str, np.ndarray]:
    """qid -> GT windows from the official QVHighlights jsonl (`qid`, `relevant_windows`) or from canonical
    `MomentRecord` jsonl (`qid`, `windows`). qids are compared as strings."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    for lineno, row in _read_jsonl(path):
        if "qid" not in row:
            raise ValueError(f"{path}:{lineno}: no 'qid'")
        qid = str(row["qid"])
        windows = row.get("relevant_windows", row.get("windows"))
        if windows is None:
            raise ValueError(f"{path}:{lineno}: qid {qid} has no 'relevant_windows' (an unlabelled test split?)")
        if qid in out:
            raise ValueError(f"{path}:{lineno}: qid {qid} appears twice")
        try:
            out[qid] = _as_windows(windows, 2, f"qid {qid}")
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    if not out:
        raise ValueError(f"{path}: no ground-truth records")
    return out


def load_predictions(path: str | Path, ground_truth: Mapping[str, object] | None = None) -> dict[str, np.ndarray]:
    """qid -> predicted windows [[start, end, score], ...] from an official submission jsonl
    (`qid`, `pred_relevant_windows`). With `ground_truth`, a qid it lacks is an error naming the line."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    for lineno, row in _read_jsonl(path):
        if "qid" not in row:
            raise ValueError(f"{path}:{lineno}: no 'qid'")
        qid = str(row["qid"])
        if "pred_relevant_windows" not in row:
            raise ValueError(f"{path}:{lineno}: qid {qid} has no 'pred_relevant_windows'")
        if qid in out:
            raise ValueError(f"{path}:{lineno}: qid {qid} appears twice")
        if ground_truth is not None and qid not in ground_truth:
            raise ValueError(f"{path}:{lineno}: qid {qid} has no ground truth")
        try:
            out[qid] = _as_windows(row["pred_relevant_windows"], 3, f"qid {qid}")
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    if not out:
        raise ValueError(f"{path}: no predictions")
    return out


# ----------------------------------------------------------------------------------------------------------
# Localizer frame scores -> windows


def frame_scores_to_windows(
    timestamps: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float,
    max_gap: float,
    frame_duration: float | None = None,
    duration: float | None = None,
) -> list[list[float]]:
    """Turn per-frame Localizer scores into moment predictions [[start, end, score], ...], best first.

    - A frame is positive when its score >= `threshold`.
    - Positive frames (in time order) are merged into one window while the gap between consecutive POSITIVE
      frames is <= `max_gap` seconds (so with `max_gap` = the frame spacing, one negative frame in between
      splits a window; a larger `max_gap` bridges short dips).
    - Each frame stands for the span [t - d/2, t + d/2], d = `frame_duration`: under SeViLA's uniform
      sampling a frame is the middle of its segment, so d = segment length. d = None uses the median spacing
      of the timestamps (0 for a single frame). Windows are clipped to [0, `duration`] (no upper clip when
      `duration` is None).
    - A window's score is the MEAN of its frames' scores: a long run of lukewarm frames does not outrank a short
      confident one, and one spike does not lift a long window (max would).
    - Sorted by score descending; ties keep time order.
    - When no frame reaches the threshold, the single best frame becomes the only window, so every query has a
      prediction (the official evaluation needs one per query).
    """
    t = np.asarray(timestamps, dtype=float).reshape(-1)
    s = np.asarray(scores, dtype=float).reshape(-1)
    if len(t) != len(s):
        raise ValueError(f"{len(t)} timestamps but {len(s)} scores")
    if len(t) == 0:
        raise ValueError("no frames")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(s))):
        raise ValueError("timestamps and scores must be finite")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    order = np.argsort(t, kind="stable")
    t, s = t[order], s[order]
    if frame_duration is None:
        frame_duration = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    if frame_duration < 0 or math.isnan(frame_duration):
        raise ValueError(f"frame_duration must be >= 0, got {frame_duration}")
    half = frame_duration / 2

    def span(first: float, last: float) -> tuple[float, float]:
        start, end = max(0.0, first - half), last + half
        if duration is not None:
            end = min(end, float(duration))
            start = min(start, end)
        return start, end

    pos = np.flatnonzero(s >= threshold)
    if len(pos) == 0:
        best = int(np.argmax(s))
        return [[*span(t[best], t[best]), float(s[best])]]
    # split the positive frames where the gap to the previous positive frame exceeds max_gap
    breaks = np.flatnonzero(np.diff(t[pos]) > max_gap) + 1
    windows = []
    for group in np.split(pos, breaks):
        start, end = span(t[group[0]], t[group[-1]])
        windows.append([start, end, float(np.mean(s[group]))])
    windows.sort(key=lambda w: -w[2])  # stable: equal scores stay in time order
    return windows
