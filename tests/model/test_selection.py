"""Frame selection and answer fusion, checked on hand-made arrays."""
from __future__ import annotations

import pytest
import torch

from sevila.model.selection import (
    Fusion, Selector, frame_correct, localizer_topk, oracle_correct, uniform_keyframes, vote,
)

NEG = float("-inf")


def test_modes_are_typed_and_parse_from_config_strings():
    assert Selector("localizer") is Selector.LOCALIZER and Fusion("vote") is Fusion.VOTE
    assert {s.value for s in Selector} == {"uniform", "localizer", "oracle", "all"}
    with pytest.raises(ValueError):
        Selector("localizer_vote")  # no substrings of task strings


@pytest.mark.parametrize(
    "n,k,expected",
    [(32, 4, [4, 12, 20, 28]), (8, 8, list(range(8))), (5, 2, [1, 3]), (6, 1, [3]), (16, 4, [2, 6, 10, 14])],
)
def test_uniform_keyframes_are_segment_middles(n, k, expected):
    assert uniform_keyframes(n, k) == expected


def test_uniform_keyframes_rejects_impossible_k():
    with pytest.raises(ValueError, match="cannot pick 5 keyframes out of 4"):
        uniform_keyframes(4, 5)
    with pytest.raises(ValueError):
        uniform_keyframes(4, 0)


def test_localizer_topk_temporal_order_with_scores():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2, 0.7],
                           [5.0, 4.0, 3.0, 2.0, 1.0, 6.0]])
    idx, top = localizer_topk(scores, 3)
    assert idx.tolist() == [[1, 3, 5], [0, 1, 5]]  # best three, then sorted by time
    assert torch.equal(top, torch.tensor([[0.9, 0.8, 0.7], [5.0, 4.0, 6.0]]))


def test_localizer_topk_ties_go_to_earlier_frames():
    scores = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    idx, _ = localizer_topk(scores, 2)
    assert idx.tolist() == [[1, 2], [0, 1]]


def test_localizer_topk_checks_shapes():
    with pytest.raises(ValueError):
        localizer_topk(torch.zeros(4), 2)
    with pytest.raises(ValueError):
        localizer_topk(torch.zeros(1, 3), 4)


def test_vote_majority():
    # 3 frames vote B, B, C -> B
    logits = torch.tensor([[[0.0, 2.0, 1.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0]]])
    assert vote(logits).tolist() == [1]


def test_vote_tie_goes_to_highest_summed_logit():
    # frames vote A, B, A, B: tie; summed logits A = 4+0+4+0 = 8, B = 1+9+1+9 = 20 -> B
    logits = torch.tensor([[[4.0, 1.0], [0.0, 9.0], [4.0, 1.0], [0.0, 9.0]]])
    assert vote(logits).tolist() == [1]
    # same votes, but A's margin bigger: A = 9+0+9+0 = 18, B = 1+2+1+2 = 6 -> A
    logits = torch.tensor([[[9.0, 1.0], [0.0, 2.0], [9.0, 1.0], [0.0, 2.0]]])
    assert vote(logits).tolist() == [0]


def test_vote_exact_tie_goes_to_lowest_option_and_missing_options_never_win():
    logits = torch.tensor([[[1.0, 0.0, NEG], [0.0, 1.0, NEG]]])  # A, B; sums 1 and 1
    assert vote(logits).tolist() == [0]
    # a 2-option question in a 3-letter batch: the -inf letter is never chosen even with no votes elsewhere
    logits = torch.tensor([[[-5.0, -6.0, NEG]], [[-9.0, -1.0, NEG]]])
    assert vote(logits).tolist() == [0, 1]


def test_vote_batch_rows_are_independent():
    a = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # B, B, A -> B
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # A, A, B -> A
    assert vote(torch.stack([a, b])).tolist() == [1, 0]


def test_frame_correct_and_oracle():
    preds = torch.tensor([[0, 1, 2], [3, 3, 3], [1, 0, 1]])
    gold = torch.tensor([2, 1, 1])
    assert frame_correct(preds, gold).tolist() == [[False, False, True], [False, False, False], [True, False, True]]
    assert oracle_correct(preds, gold).tolist() == [True, False, True]
    with pytest.raises(ValueError):
        frame_correct(preds, torch.tensor([1, 2]))
