"""QA metrics, oracle/voting, keyframe-in-span and frame AUC, pinned on hand-worked cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sevila.config import Benchmark
from sevila.evaluation.qa_metrics import (
    accuracy, aggregate_keyframe_in_span, average_ranks, keyframe_in_span, mean_roc_auc, qa_metrics,
    qa_benchmark, question_type, roc_auc,
)

# ---------------------------------------------------------------------------------------------- NExT-QA


def test_nextqa_types_and_count_weighted_groups():
    # qid            type  pred answer  correct
    # CW_1_0         CW    0    0       yes
    # CW_1_1         CW    1    1       yes
    # CW_1_2         CW    2    2       yes
    # CH_1_3         CH    0    1       no     -> CW 3/3 = 100, CH 0/1 = 0
    #   Causal (count-weighted) = 3/4 = 75   (the unweighted mean of CW, CH would be 50)
    # TN_2_0         TN    4    4       yes
    # TC_2_1         TC    0    3       no
    # TC_2_2         TC    1    2       no     -> TN 100, TC 0
    #   Temporal = 1/3 = 33.33               (unweighted 50)
    # "7" + type DL  DL    3    3       yes    -> the raw type column wins over the qid prefix
    #   Descriptive = 1/1 = 100
    # DO_3_0         DO    0    None    unlabelled: excluded and counted, so DO is absent (not 0)
    # overall = 5/8 = 62.5
    qids = ["CW_1_0", "CW_1_1", "CW_1_2", "CH_1_3", "TN_2_0", "TC_2_1", "TC_2_2", "7", "DO_3_0"]
    qtypes = [None, None, None, None, None, None, None, "DL", None]
    preds = [0, 1, 2, 0, 4, 0, 1, 3, 0]
    answers = [0, 1, 2, 1, 4, 3, 2, 3, None]
    m = qa_metrics("nextqa", qids, qtypes, preds, answers)
    assert m["CW"] == 100.0 and m["CH"] == 0.0
    assert m["Causal"] == pytest.approx(75.0)
    assert m["TN"] == 100.0 and m["TC"] == 0.0
    assert m["Temporal"] == pytest.approx(100 / 3)
    assert m["DL"] == 100.0 and m["Descriptive"] == 100.0
    assert m["accuracy"] == pytest.approx(62.5)
    assert m["count"] == 8 and m["unlabelled"] == 1
    assert m["count_CW"] == 3 and m["count_TC"] == 2
    for absent in ("TP", "DC", "DO", "count_DO"):
        assert absent not in m


def test_nextqa_raw_type_column_without_qid_prefix_and_bad_type():
    m = qa_metrics("NExT-QA", ["12", "13"], ["TP", "TP"], [1, 0], [1, 1])
    assert m["TP"] == 50.0 and m["Temporal"] == 50.0 and "Causal" not in m
    with pytest.raises(ValueError, match="XX_1_2"):
        qa_metrics("nextqa", ["XX_1_2"], None, [0], [0])


def test_group_absent_when_no_question():
    m = qa_metrics("nextqa", ["DC_1_1"], None, [2], [2])
    assert m == {"accuracy": 100.0, "count": 1, "unlabelled": 0, "DC": 100.0, "count_DC": 1, "Descriptive": 100.0}


# ---------------------------------------------------------------------------------------------- STAR


def test_star_unweighted_mean_of_types():
    # Interaction 1/1 = 100, Sequence 1/4 = 25, Prediction 1/2 = 50, Feasibility absent
    # mean = (100 + 25 + 50) / 3 = 58.33 ; per-question accuracy = 3/7 = 42.86 (they differ)
    qids = ["Interaction_T1_13", "Sequence_T1_1", "Sequence_T1_2", "Sequence_T1_3", "Sequence_T1_4",
            "Prediction_T1_5", "Prediction_T1_6"]
    preds = [2, 0, 1, 1, 1, 3, 0]
    answers = [2, 0, 0, 0, 0, 3, 1]
    m = qa_metrics("star", qids, None, preds, answers)
    assert m["Interaction"] == 100.0 and m["Sequence"] == 25.0 and m["Prediction"] == 50.0
    assert "Feasibility" not in m
    assert m["mean"] == pytest.approx(175 / 3)
    assert m["accuracy"] == pytest.approx(300 / 7)
    assert m["count"] == 7


def test_plain_accuracy_datasets_and_unlabelled():
    for ds in ("how2qa", "TVQA", "vlep"):
        m = qa_metrics(ds, ["a", "b", "c", "d"], None, [0, 1, 1, 0], [0, 0, 1, None])
        assert m == {"accuracy": pytest.approx(200 / 3), "count": 3, "unlabelled": 1}
    # all unlabelled (a test split): no accuracy key, never a fake 0
    assert qa_metrics("tvqa", ["a"], None, [0], [None]) == {"count": 0, "unlabelled": 1}


def test_dataset_parsing_and_errors():
    assert qa_benchmark("Next_QA") is Benchmark.NEXTQA
    assert question_type("star", "Feasibility_T6_1") == "Feasibility"
    assert question_type("vlep", "VLEP_1") is None
    with pytest.raises(ValueError, match="unknown QA dataset"):
        qa_metrics("msrvtt", ["a"], None, [0], [0])
    with pytest.raises(ValueError, match="lengths differ"):
        qa_metrics("tvqa", ["a", "b"], None, [0], [0, 1])
    assert accuracy([1, 2, 3, 4], [1, 0, 3, 0]) == 50.0


# ---------------------------------------------------------------------------------------------- keyframes


def test_keyframe_in_span():
    cands = [5, 10, 15, 20, 25]  # inside (10, 20), inclusive: 10, 15, 20 -> 3 candidates
    # k = 4 keyframes, 2 inside (10, 15) -> 2 / min(4, 3) = 2/3
    assert keyframe_in_span([10, 15, 25, 5], cands, (10, 20)) == pytest.approx(2 / 3)
    # k = 2, 1 inside -> 1 / min(2, 3) = 1/2
    assert keyframe_in_span([15, 25], cands, (10, 20)) == 0.5
    # k = 4, all 3 candidates inside chosen -> 3 / min(4, 3) = 1 (the best achievable)
    assert keyframe_in_span([10, 15, 20, 25], cands, (10, 20)) == 1.0
    # no candidate inside (11, 14) -> None, not 0
    assert keyframe_in_span([15], cands, (11, 14)) is None
    # several spans: inside (0, 5) or (20, 20) -> candidates 5, 20; chosen [5, 25] -> 1 / min(2, 2)
    assert keyframe_in_span([5, 25], cands, [(0, 5), (20, 20)]) == 0.5
    with pytest.raises(ValueError, match="no chosen"):
        keyframe_in_span([], cands, (0, 5))


def test_aggregate_keyframe_in_span():
    agg = aggregate_keyframe_in_span([2 / 3, 0.5, None])
    # mean over the 2 scorable questions: (66.67 + 50) / 2 = 58.33
    assert agg["keyframe_in_span"] == pytest.approx(175 / 3)
    assert agg["n_scored"] == 2 and agg["n_no_candidate"] == 1
    assert aggregate_keyframe_in_span([None]) == {"n_scored": 0, "n_no_candidate": 1}


# ---------------------------------------------------------------------------------------------- AUC


def test_average_ranks_ties():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks([3, 1, 3, 3]).tolist() == [3.0, 1.0, 3.0, 3.0]  # ranks 2, 3, 4 share 3


def test_roc_auc_hand_cases():
    # positives .35, .8; negatives .1, .4. Pairs won: (.35>.1), (.8>.1), (.8>.4); lost (.35<.4) -> 3/4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a positive/negative tie counts half: pos .5 vs neg .5 -> .5, vs neg .2 -> 1; pos .9 wins both -> 3.5/4
    # (by ranks: .2 -> 1, .5/.5 -> 2.5, .9 -> 4; R_pos = 6.5; U = 6.5 - 3 = 3.5)
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert roc_auc([1, 1, 1], [True, False, True]) == 0.5  # all tied: chance
    assert roc_auc([0.9, 0.1], [0, 1]) == 0.0  # perfectly wrong
    assert roc_auc([0.1, 0.2], [1, 1]) is None  # one class absent
    with pytest.raises(ValueError, match="binary"):
        roc_auc([0.1, 0.2], [0, 2])


def test_roc_auc_matches_pairwise_definition_on_random_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=60).astype(float)  # heavy ties
    y = rng.integers(0, 2, size=60)
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(s, y) == pytest.approx(pairwise)


def test_mean_roc_auc():
    out = mean_roc_auc([([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), ([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]), ([1, 2], [0, 0])])
    assert out["frame_auc"] == pytest.approx((75 + 87.5) / 2)
    assert out["n_scored"] == 2 and out["n_single_class"] == 1
    assert not math.isnan(out["frame_auc"])
