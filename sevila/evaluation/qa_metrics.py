"""Evaluation metrics: pure functions over lists/arrays (numpy only; no torch, no I/O).

- QA accuracy per benchmark, with each benchmark's official breakdown (`qa_metrics`):
  NExT-QA per type code and the paper's count-weighted groups; STAR per type and the unweighted mean of the
  four types (its headline); How2QA, TVQA, VLEP plain accuracy.
- Keyframe quality where ground-truth spans exist: keyframes-in-span, and ROC AUC of Localizer frame scores.

All percentages are 0-100. Moment retrieval (QVHighlights) lives in sevila.evaluation.moments.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from sevila.config.modes import Benchmark
from sevila.data.records import Window

NEXTQA_TYPES: tuple[str, ...] = ("CW", "CH", "TN", "TC", "TP", "DC", "DL", "DO")
# NExT-QA groups (Xiao et al. 2021; SeViLA Table 1): Causal = why/how, Temporal = next/current/previous,
# Descriptive = count/location/other. Each group is the accuracy over all its questions (count-weighted).
NEXTQA_GROUPS: dict[str, tuple[str, ...]] = {
    "Causal": ("CW", "CH"),
    "Temporal": ("TN", "TC", "TP"),
    "Descriptive": ("DC", "DL", "DO"),
}
STAR_TYPES: tuple[str, ...] = ("Interaction", "Sequence", "Prediction", "Feasibility")


def qa_benchmark(name: str | Benchmark) -> Benchmark:
    """The multiple-choice benchmark `name` names (sevila.config.Benchmark.parse), or an error naming the known ones."""
    try:
        ds = Benchmark.parse(name)
    except ValueError:
        ds = None
    if ds is None or not ds.multiple_choice:
        raise ValueError(f"unknown QA dataset {name!r}; known: {[m.value for m in Benchmark if m.multiple_choice]}")
    return ds


# ----------------------------------------------------------------------------------------------------------
# QA accuracy


def question_type(dataset: Benchmark | str, qid: str, qtype: str | None = None) -> str | None:
    """The question's type: the given type column when set, else the qid's prefix before the first '_'
    ("CW_123_4" -> "CW", "Interaction_T1_13" -> "Interaction"). Types are only defined for NExT-QA and STAR
    (None for the others); an unknown type is an error naming the qid."""
    ds = qa_benchmark(dataset)
    if ds is Benchmark.NEXTQA:
        known = NEXTQA_TYPES
    elif ds is Benchmark.STAR:
        known = STAR_TYPES
    else:
        return None
    t = qtype if qtype else str(qid).split("_", 1)[0]
    if t not in known:
        raise ValueError(f"qid {qid!r}: {ds.value} question type {t!r} is not one of {list(known)}")
    return t


def accuracy(predictions: Sequence[int] | np.ndarray, answers: Sequence[int] | np.ndarray) -> float:
    """Percentage of predictions equal to answers (all labelled); NaN for no questions."""
    p = np.asarray(predictions)
    a = np.asarray(answers)
    if p.shape != a.shape:
        raise ValueError(f"{p.shape} predictions but {a.shape} answers")
    return float(np.mean(p == a) * 100) if p.size else math.nan


def qa_metrics(
    dataset: Benchmark | str,
    qids: Sequence[str],
    qtypes: Sequence[str | None] | None,
    predictions: Sequence[int] | np.ndarray,
    answers: Sequence[int | None],
) -> dict[str, float]:
    """Accuracy with the benchmark's official breakdown, in percent.

    Keys (a key is omitted when none of its questions is present, never reported as 0):
    - all datasets: "accuracy" (over all labelled questions), "count" (labelled questions scored),
      "unlabelled" (questions whose answer is None: excluded, and counted here).
    - NExT-QA: each type code ("CW", ...), "count_<type>", and the groups "Causal", "Temporal", "Descriptive",
      each the accuracy over all its questions (count-weighted, as the paper reports them).
    - STAR: each type ("Interaction", ...), "count_<type>", and "mean" = the UNWEIGHTED mean of the per-type
      accuracies present (the STAR headline; "accuracy" stays the per-question figure).
    `qtypes` (a raw type column) wins over the qid prefix where given.
    """
    ds = qa_benchmark(dataset)
    n = len(qids)
    if len(predictions) != n or len(answers) != n or (qtypes is not None and len(qtypes) != n):
        raise ValueError(
            f"lengths differ: {n} qids, {len(predictions)} predictions, {len(answers)} answers"
            + ("" if qtypes is None else f", {len(qtypes)} qtypes")
        )
    correct: list[bool] = []
    types: list[str | None] = []
    unlabelled = 0
    for i in range(n):
        if answers[i] is None:
            unlabelled += 1
            continue
        if predictions[i] is None:
            raise ValueError(f"qid {qids[i]!r}: no prediction")
        correct.append(int(predictions[i]) == int(answers[i]))
        types.append(question_type(ds, qids[i], None if qtypes is None else qtypes[i]))

    out: dict[str, float] = {}
    if correct:
        out["accuracy"] = 100.0 * sum(correct) / len(correct)
    out["count"] = len(correct)
    out["unlabelled"] = unlabelled
    if ds in (Benchmark.NEXTQA, Benchmark.STAR):
        per_type = _per_type(correct, types, NEXTQA_TYPES if ds is Benchmark.NEXTQA else STAR_TYPES)
        for t, (n_right, n_t) in per_type.items():
            out[t] = 100.0 * n_right / n_t
            out[f"count_{t}"] = n_t
        if ds is Benchmark.NEXTQA:
            for group, members in NEXTQA_GROUPS.items():
                n_right = sum(per_type[t][0] for t in members if t in per_type)
                n_g = sum(per_type[t][1] for t in members if t in per_type)
                if n_g:
                    out[group] = 100.0 * n_right / n_g
        else:
            accs = [100.0 * r / c for r, c in per_type.values()]
            if accs:
                out["mean"] = sum(accs) / len(accs)
    return out


def _per_type(correct: list[bool], types: list[str | None], order: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """type -> (n correct, n questions), in the benchmark's canonical order, present types only."""
    counts: dict[str, list[int]] = {}
    for c, t in zip(correct, types):
        entry = counts.setdefault(t, [0, 0])  # type: ignore[arg-type]
        entry[0] += int(c)
        entry[1] += 1
    return {t: (counts[t][0], counts[t][1]) for t in order if t in counts}


# ----------------------------------------------------------------------------------------------------------
# Keyframe quality


def _spans(span: Window | Sequence[Window]) -> list[Window]:
    """One (start, end) window, or several."""
    if len(span) == 2 and all(isinstance(x, (int, float, np.integer, np.floating)) for x in span):
        spans = [(float(span[0]), float(span[1]))]  # type: ignore[index]
    else:
        spans = [(float(w[0]), float(w[1])) for w in span]  # type: ignore[index]
    if not spans:
        raise ValueError("no ground-truth span")
    for s, e in spans:
        if not (math.isfinite(s) and math.isfinite(e)) or e < s:
            raise ValueError(f"bad span ({s}, {e})")
    return spans


def _inside(t: np.ndarray, spans: list[Window]) -> np.ndarray:
    # Inclusive bounds: a frame exactly on a boundary is inside.
    return np.any([(t >= s) & (t <= e) for s, e in spans], axis=0) if len(t) else np.zeros(0, dtype=bool)


def keyframe_in_span(
    chosen_timestamps: Sequence[float],
    candidate_timestamps: Sequence[float],
    span: Window | Sequence[Window],
) -> float | None:
    """Share of chosen keyframes inside the ground-truth span(s), normalised by what was achievable:
    (# chosen inside) / min(k, # candidate frames inside), k = # chosen. A selector that puts all k keyframes
    inside the span scores 1, and so does one that picks every candidate inside when fewer than k are.
    None when no candidate frame lies inside (the question cannot be scored; count it, do not score it 0).
    Bounds are inclusive; `span` is one (start, end) or several (inside = inside any)."""
    spans = _spans(span)
    chosen = np.asarray(chosen_timestamps, dtype=float).reshape(-1)
    cand = np.asarray(candidate_timestamps, dtype=float).reshape(-1)
    if len(chosen) == 0:
        raise ValueError("no chosen keyframes")
    n_cand_in = int(_inside(cand, spans).sum())
    if n_cand_in == 0:
        return None
    return int(_inside(chosen, spans).sum()) / min(len(chosen), n_cand_in)


def aggregate_keyframe_in_span(values: Iterable[float | None]) -> dict[str, float]:
    """Mean keyframe-in-span over the scorable questions, in percent ("keyframe_in_span", omitted when none),
    with "n_scored" and "n_no_candidate" (questions excluded because no candidate frame lay inside)."""
    vals = list(values)
    scored = [v for v in vals if v is not None]
    out: dict[str, float] = {"n_scored": len(scored), "n_no_candidate": len(vals) - len(scored)}
    if scored:
        out["keyframe_in_span"] = 100.0 * sum(scored) / len(scored)
    return out


def average_ranks(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (e.g. [10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    x = np.asarray(x, dtype=float).reshape(-1)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # tie groups: runs of equal sorted values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool | int] | np.ndarray) -> float | None:
    """ROC AUC of scores against binary labels, as the Mann-Whitney U statistic over average ranks:
    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), so a tie between a positive and a negative counts
    half. None when either class is absent (AUC is undefined there)."""
    s = np.asarray(scores, dtype=float).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be binary (0/1 or bool)")
    pos = y.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r_pos = average_ranks(s)[pos].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mean_roc_auc(per_question: Iterable[tuple[Sequence[float], Sequence[bool | int]]]) -> dict[str, float]:
    """Per-question frame AUC averaged over questions, in percent ("frame_auc", omitted when none scorable),
    with "n_scored" and "n_single_class" (questions whose frames are all positive or all negative)."""
    aucs = [roc_auc(s, y) for s, y in per_question]
    scored = [a for a in aucs if a is not None]
    out: dict[str, float] = {"n_scored": len(scored), "n_single_class": len(aucs) - len(scored)}
    if scored:
        out["frame_auc"] = 100.0 * sum(scored) / len(scored)
    return out


def localizer_metrics(in_span: Iterable[float | None],
                      auc_pairs: Iterable[tuple[Sequence[float], Sequence[bool | int]]]) -> dict[str, float]:
    """keyframe_in_span and frame_auc together, with their counts kept apart (`kis_*`, `auc_*`)."""
    kis = aggregate_keyframe_in_span(in_span)
    auc = mean_roc_auc(auc_pairs)
    out = {k if k == "keyframe_in_span" else f"kis_{k}": v for k, v in kis.items()}
    out |= {k if k == "frame_auc" else f"auc_{k}": v for k, v in auc.items()}
    return out
