"""QVHighlights moment retrieval: hand cases, the official figures reproduced exactly, the CLI, and
frame scores -> windows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sevila.cli import main
from sevila.data import realdata_dir
from sevila.evaluation.moments import (
    BRIEF_KEYS, IOU_THRESHOLDS, average_precision, batch_queries, evaluate_moments, frame_scores_to_windows,
    load_ground_truth, load_predictions, temporal_iou_cross,
)

# the excerpts shipped in the package (sevila/data/realdata); a missing copy fails these tests, never skips them
QVH = realdata_dir() / "qvhighlights"
GT_FILE = QVH / "highlight_val_release.jsonl"
PRED_FILE = QVH / "sample_val_preds.jsonl"
OFFICIAL_FILE = QVH / "sample_val_preds_metrics_raw.json"


def official_mr() -> dict:
    """The official figures, moment-retrieval part only (HL-* is highlight detection, not computed here)."""
    off = json.loads(OFFICIAL_FILE.read_text())
    return {
        "brief": {k: v for k, v in off["brief"].items() if k.startswith("MR-")},
        **{b: off[b] for b in ("full", "long", "middle", "short")},
    }


# ---------------------------------------------------------------------------------------------- hand cases

# q1: GT [0,10] (short). Listed preds: [0,10] score .5, then [20,30] score .9.
#     AP re-sorts by score: [20,30] (FP), [0,10] (TP): precision [0, .5], recall [0, 1]
#     -> interpolated AP = 1 * .5 = .5 at every threshold.
#     R1 takes the FIRST LISTED window [0,10]: IoU 1 -> hit at every threshold (R1 does not re-sort).
# q2: GT [0,10], [20,30] (both short). Preds [0,8] .9, [0,10] .8, [22,30] .7.
#     IoUs: [0,8]-g1 .8; [0,10]-g1 1.0, -g2 0; [22,30]-g2 .8.
#     t <= .8 : [0,8] takes g1 (TP); [0,10]: g1 taken, g2 IoU 0 -> FP; [22,30] takes g2 (TP)
#               precision [1, .5, 2/3], recall [.5, .5, 1] -> AP = .5*1 + .5*(2/3) = 5/6
#     t >= .85: FP, TP (g1), FP: precision [0, .5, 1/3], recall [0, .5, .5] -> AP = .5*.5 = .25
#     R1: [0,8] vs best GT g1 -> IoU .8 (hit up to 0.8 inclusive)
# q3: GT [0,40] (long), [100,120] (middle). Preds [0,20] 1.0, [100,120] .5.
#     full, t = .5: both TP -> AP 1;  t > .5: FP, TP: precision [0, .5], recall [0, .5] -> AP .25
#     long bucket (GT [0,40] only): t = .5: TP, FP -> AP 1; else 0
#     middle bucket (GT [100,120] only): FP, TP, recall [0, 1] -> AP .5 at every t; R1 IoU([0,20],[100,120]) = 0
#     R1 full: [0,20] vs best GT [0,40] -> IoU .5
HAND_GT = {"1": [[0, 10]], "2": [[0, 10], [20, 30]], "3": [[0, 40], [100, 120]]}
HAND_PRED = {
    "1": [[0, 10, 0.5], [20, 30, 0.9]],
    "2": [[0, 8, 0.9], [0, 10, 0.8], [22, 30, 0.7]],
    "3": [[0, 20, 1.0], [100, 120, 0.5]],
}


def _per_thr(low: float, mid: float, high: float) -> dict[str, float]:
    """t = 0.5 -> low; 0.55..0.8 -> mid; 0.85..0.95 -> high."""
    return {str(t): (low if t == 0.5 else mid if t <= 0.8 else high) for t in IOU_THRESHOLDS}


def test_hand_case_all_buckets():
    res = evaluate_moments(HAND_GT, HAND_PRED)
    # full mAP: t=.5: (.5 + 5/6 + 1)/3 = 77.78; .55-.8: (.5 + 5/6 + .25)/3 = 52.78; .85+: (.5+.25+.25)/3 = 33.33
    # average = (.7778 + 6 * .5278 + 3 * .3333) / 10 = 49.44
    assert res["full"]["MR-mAP"] == {**_per_thr(77.78, 52.78, 33.33), "average": 49.44}
    # full R1: IoUs 1, .8, .5 -> @.5 100; @.55-.8 66.67; @.85+ 33.33
    assert res["full"]["MR-R1"] == _per_thr(100.0, 66.67, 33.33)
    # short = q1, q2: t<=.8: (.5 + 5/6)/2 = 66.67; .85+: (.5 + .25)/2 = 37.5; average (7*.6667 + 3*.375)/10
    assert res["short"]["MR-mAP"] == {**_per_thr(66.67, 66.67, 37.5), "average": 57.92}
    assert res["short"]["MR-R1"] == _per_thr(100.0, 100.0, 50.0)
    assert res["long"]["MR-mAP"] == {**_per_thr(100.0, 0.0, 0.0), "average": 10.0}
    assert res["long"]["MR-R1"] == _per_thr(100.0, 0.0, 0.0)
    assert res["middle"]["MR-mAP"] == {**_per_thr(50.0, 50.0, 50.0), "average": 50.0}
    assert res["middle"]["MR-R1"] == _per_thr(0.0, 0.0, 0.0)
    assert res["brief"] == {
        "MR-full-R1@0.5": 100.0, "MR-full-R1@0.7": 66.67, "MR-full-mAP": 49.44, "MR-full-mAP@0.5": 77.78,
        "MR-full-mAP@0.75": 52.78, "MR-long-mAP": 10.0, "MR-middle-mAP": 50.0, "MR-short-mAP": 57.92,
    }
    assert list(res) == ["brief", "full", "long", "middle", "short"]


def test_gt_tie_goes_to_later_window():
    # GT g1 [0,10], g2 [2,12]; pred p1 [1,11] (score .9) has IoU 9/11 with BOTH; p2 [0,10] (.8): g1 1.0, g2 8/12.
    # Official walk (argsort()[::-1]) takes g2 for p1, leaving g1 (IoU 1) to p2:
    #   t <= .8: TP, TP -> AP 1.   t >= .85: p1 FP (.818), p2 TP on g1 -> precision [0, .5], recall [0, .5] -> .25
    # (taking g1 first would leave p2 only g2 at .667 and give AP .5 at t = .7, .75, .8)
    b = batch_queries([np.array([[0, 10], [2, 12]], float)], [np.array([[1, 11, 0.9], [0, 10, 0.8]])], 10)
    ap = average_precision(b)[0]
    assert ap.tolist() == pytest.approx([1.0] * 7 + [0.25] * 3)


def test_score_ties_keep_listed_order_and_top10():
    # two predictions with equal score: the listed order is kept (stable sort): [20,30] FP first, then [0,10] TP
    b = batch_queries([np.array([[0, 10]], float)], [np.array([[20, 30, 0.5], [0, 10, 0.5]])], 10)
    assert average_precision(b)[0] == pytest.approx([0.5] * 10)
    # only the first 10 listed windows count: the correct 11th window is ignored
    preds = np.array([[50 + i, 51 + i, 1.0] for i in range(10)] + [[0, 10, 0.99]])
    assert average_precision(batch_queries([np.array([[0, 10]], float)], [preds], 10))[0].tolist() == [0.0] * 10
    assert average_precision(batch_queries([np.array([[0, 10]], float)], [preds], None))[0][0] == pytest.approx(1 / 11)


def test_iou_cross():
    iou = temporal_iou_cross(np.array([[0, 0.2], [0.5, 1.0]]), np.array([[0, 0.3], [0.0, 1.0]]))
    assert iou == pytest.approx(np.array([[2 / 3, 0.2], [0.0, 0.5]]))


def _reference_ap(gt: list, pred: list, thr: float) -> float:
    """Straight, loop-by-loop transcription of the ActivityNet definition for one query, one threshold."""
    pred = sorted(pred[:10], key=lambda w: -w[2])  # first 10 listed, then by score (stable)
    used = [False] * len(gt)
    tp = []
    for s, e, _ in pred:
        ious = []
        for gs, ge in gt:
            inter = max(0.0, min(e, ge) - max(s, gs))
            union = (e - s) + (ge - gs) - inter
            ious.append(inter / union if union else 0.0)
        order = sorted(range(len(gt)), key=lambda j: (ious[j], j), reverse=True)
        hit = next((j for j in order if not used[j]), None)
        if hit is not None and ious[hit] >= thr:
            used[hit] = True
            tp.append(1)
        else:
            tp.append(0)
    prec, rec, n_tp = [], [], 0
    for i, t in enumerate(tp, 1):
        n_tp += t
        prec.append(n_tp / i)
        rec.append(n_tp / len(gt))
    ap, best = 0.0, 0.0
    points = list(zip([0.0] + rec, [0.0] + prec))
    for i in range(len(points) - 1, 0, -1):
        best = max(best, points[i][1])
        ap += (points[i][0] - points[i - 1][0]) * best
    return ap


def test_vectorised_ap_matches_reference_on_random_queries():
    rng = np.random.default_rng(1)
    gts, preds = [], []
    for _ in range(40):
        g = np.sort(rng.integers(0, 30, size=(rng.integers(1, 5), 2)) * 2.0, axis=1)
        g[:, 1] += 2
        p = np.sort(rng.integers(0, 30, size=(rng.integers(1, 13), 2)) * 2.0, axis=1)
        p[:, 1] += 2
        p = np.c_[p, rng.integers(0, 4, size=len(p)) / 4]  # tied scores on purpose
        gts.append(g)
        preds.append(p)
    ap = average_precision(batch_queries(gts, preds, 10))
    ref = np.array([[_reference_ap(g.tolist(), p.tolist(), t) for t in IOU_THRESHOLDS] for g, p in zip(gts, preds)])
    np.testing.assert_allclose(ap, ref, atol=1e-12)


def test_qid_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1 without prediction"):
        evaluate_moments(HAND_GT, {k: v for k, v in HAND_PRED.items() if k != "3"})
    with pytest.raises(ValueError, match="ends before it starts"):
        evaluate_moments({"1": [[5, 1]]}, {"1": [[0, 1, 1]]})


# ---------------------------------------------------------------------------------------------- official figures


def test_official_sample_predictions_reproduce_official_metrics():
    gt = load_ground_truth(GT_FILE)
    pred = load_predictions(PRED_FILE, gt)
    assert len(gt) == len(pred) == 1550
    res = evaluate_moments(gt, pred)
    expected = official_mr()
    assert res == expected  # every MR key of every bucket, to the official 2 decimals
    assert res["brief"]["MR-full-R1@0.5"] == 53.94 and res["brief"]["MR-short-mAP"] == 3.28
    assert set(res["brief"]) == set(BRIEF_KEYS)


def test_cli_reproduces_official_metrics(tmp_path, capsys):
    out = tmp_path / "sub" / "metrics.json"
    rc = main(["eval-moments", str(GT_FILE), str(PRED_FILE), "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    expected = official_mr()
    assert printed == expected
    assert json.loads(out.read_text()) == expected


@pytest.fixture
def small_files(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"qid": int(q), "relevant_windows": w}) + "\n" for q, w in HAND_GT.items()))
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"qid": int(q), "pred_relevant_windows": w}) + "\n" for q, w in HAND_PRED.items()))
    return gt, pred


def test_cli_small(small_files, capsys):
    gt, pred = small_files
    assert main(["eval-moments", str(gt), str(pred)]) == 0
    assert json.loads(capsys.readouterr().out)["brief"]["MR-full-mAP"] == 49.44


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "pred.jsonl:2: not valid JSON"),
        ('{"pred_relevant_windows": [[0, 1, 1]]}', "pred.jsonl:2: no 'qid'"),
        ('{"qid": 99, "pred_relevant_windows": [[0, 1, 1]]}', "pred.jsonl:2: qid 99 has no ground truth"),
        ('{"qid": 1, "pred_relevant_windows": [[0, 1, 1]]}', "pred.jsonl:2: qid 1 appears twice"),
        ('{"qid": 5, "pred_relevant_windows": []}', "pred.jsonl:2:"),
        ('{"qid": 5}', "pred.jsonl:2: qid 5 has no 'pred_relevant_windows'"),
    ],
)
def test_cli_errors_name_file_and_line(tmp_path, capsys, line, message):
    gt = tmp_path / "gt.jsonl"
    gt.write_text(json.dumps({"qid": 1, "relevant_windows": [[0, 10]]}) + "\n"
                  + json.dumps({"qid": 5, "relevant_windows": [[0, 10]]}) + "\n")
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"qid": 1, "pred_relevant_windows": [[0, 10, 1]]}) + "\n" + line + "\n")
    assert main(["eval-moments", str(gt), str(pred)]) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_prediction_and_partial(tmp_path, small_files, capsys):
    gt, pred = small_files
    pred.write_text("\n".join(pred.read_text().splitlines()[:2]) + "\n")  # drop q3
    assert main(["eval-moments", str(gt), str(pred)]) == 2
    assert "have no prediction" in capsys.readouterr().err
    assert main(["eval-moments", str(gt), str(pred), "--partial"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["qids"] == {"n_evaluated": 2, "n_without_prediction": 1, "n_without_ground_truth": 0}
    assert res["short"]["MR-mAP"]["average"] == 57.92  # q1, q2 only: same as the hand case's short bucket
    # unlabelled ground truth (test split) is named as such
    gt.write_text(json.dumps({"qid": 1, "query": "x", "duration": 150}) + "\n")
    assert main(["eval-moments", str(gt), str(pred)]) == 2
    assert "gt.jsonl:1: qid 1 has no 'relevant_windows'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- frame scores -> windows

def assert_windows(got: list, expected: list) -> None:
    assert isinstance(got, list) and len(got) == len(expected), got
    np.testing.assert_allclose(np.array(got, dtype=float), np.array(expected, dtype=float), rtol=0, atol=1e-9)


TS = [1, 3, 5, 7, 9, 11]  # uniform sampling of a 12 s clip in 6 segments: each frame stands for 2 s
SC = [0.1, 0.9, 0.8, 0.2, 0.7, 0.6]


def test_windows_split_on_gap():
    # positives (>= .5): t = 3, 5, 9, 11. Gap 5 -> 9 is 4 s > max_gap 2 -> two windows.
    # frame span = t +- 1 (median spacing 2): [2, 6] mean(.9, .8) = .85 ; [8, 12] mean(.7, .6) = .65
    w = frame_scores_to_windows(TS, SC, threshold=0.5, max_gap=2)
    assert_windows(w, [[2, 6, 0.85], [8, 12, 0.65]])


def test_windows_bridge_gap_and_sort():
    # max_gap 4 bridges the negative frame at t=7: one window [2, 12], mean(.9, .8, .7, .6) = .75
    assert_windows(frame_scores_to_windows(TS, SC, 0.5, 4), [[2, 12, 0.75]])
    # later window scoring higher comes first
    w = frame_scores_to_windows(TS, [0.6, 0.6, 0.0, 0.0, 0.9, 0.0], 0.5, 2)
    assert_windows(w, [[8, 10, 0.9], [0, 4, 0.6]])


def test_windows_fallback_clip_and_explicit_duration():
    # nothing reaches .95 -> the single best frame (t=3, .9) as the only window
    assert_windows(frame_scores_to_windows(TS, SC, 0.95, 2), [[2, 4, 0.9]])
    # clipped to the video duration 11.5; explicit frame_duration 0 gives point-to-point windows
    assert frame_scores_to_windows(TS, SC, 0.5, 2, duration=11.5)[1] == pytest.approx([8, 11.5, 0.65])
    assert_windows(frame_scores_to_windows(TS, SC, 0.5, 2, frame_duration=0), [[3, 5, 0.85], [9, 11, 0.65]])
    # input order does not matter (frames are put in time order first)
    assert_windows(frame_scores_to_windows(TS[::-1], SC[::-1], 0.5, 2), [[2, 6, 0.85], [8, 12, 0.65]])
    with pytest.raises(ValueError, match="6 timestamps but 5 scores"):
        frame_scores_to_windows(TS, SC[:5], 0.5, 2)


def test_windows_feed_the_evaluation():
    # A Localizer that scores exactly the GT frames high yields a perfect prediction.
    ts = np.arange(1, 150, 2.0)  # 75 frames of 2 s
    scores = np.where((ts > 20) & (ts < 40), 3.0, -3.0)  # frames 21..39 -> window [20, 40]
    w = frame_scores_to_windows(ts, scores, threshold=0.0, max_gap=2.0, duration=150)
    assert_windows(w, [[20, 40, 3.0]])
    res = evaluate_moments({"q": [[20, 40]]}, {"q": w})
    assert res["brief"]["MR-full-mAP"] == 100.0 and res["brief"]["MR-full-R1@0.7"] == 100.0
