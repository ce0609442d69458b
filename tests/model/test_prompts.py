"""The exact T5 text of SeViLA (docs/design.md §2; the official loader mc_video_vqa_datasets.py). Pinned character
for character: a changed space is a different token sequence for a pre-trained checkpoint."""
from __future__ import annotations

import json

import pytest

from sevila.model import prompts


def test_answerer_prompt_exact():
    got = prompts.answerer_prompt("what is the man doing?", ["running.", "sitting.", "eating."])
    assert got == (
        "Question: what is the man doing? Option A: running. Option B: sitting. Option C: eating. "
        "Considering the information presented in the frame, select the correct answer from the options."
    )


def test_localizer_prompt_exact_lists_options_without_letters():
    got = prompts.localizer_prompt("what is the man doing?", ["running.", "sitting."])
    # official: hints = 'Options: (' + each option followed by ' ' + ')'  -> a space before ')'
    assert got == (
        "Question: what is the man doing? Options: (running. sitting. ) Does the information within the frame "
        "provide the necessary details to accurately answer the given question?"
    )


def test_vlep_prompts_exact():
    events = ["Ross will stop.", "Ross will ask Monica."]
    qa, loc = prompts.qa_prompts(None, events)
    assert qa == (
        "Upon observing the provided frames, what is the most probable subsequent event? "
        "Option A: Ross will stop. Option B: Ross will ask Monica."
    )
    assert loc == qa + " Does the information within the frame provide the necessary details to predict next event?"


def test_qvh_pretraining_prompt_adds_full_stop_once():
    expected = (
        "Question: a man plays guitar. Option A: yes. Option B: no. Does the information within the frame "
        "provide the necessary details to accurately answer the given question?"
    )
    assert prompts.qvh_localizer_prompt("a man plays guitar") == expected
    assert prompts.qvh_localizer_prompt("a man plays guitar.") == expected
    with pytest.raises(ValueError):
        prompts.qvh_localizer_prompt("")


def test_frame_prefixes():
    assert prompts.frame_prefixes(1) == ["Frame: "]
    assert prompts.frame_prefixes(3) == ["Frame 1: ", "Frame 2: ", "Frame 3: "]
    with pytest.raises(ValueError):
        prompts.frame_prefixes(0)


def test_targets():
    assert [prompts.answer_target(i) for i in range(5)] == ["Option A", "Option B", "Option C", "Option D", "Option E"]
    assert prompts.localizer_target(True) == "yes" and prompts.localizer_target(False) == "no"
    with pytest.raises(ValueError, match="outside 0..3"):
        prompts.answer_target(4, n_options=4)
    with pytest.raises(ValueError):
        prompts.answer_target(-1)


def test_option_count_is_checked():
    with pytest.raises(ValueError, match="6 options"):
        prompts.answerer_prompt("q", ["a"] * 6)
    with pytest.raises(ValueError, match="0 options"):
        prompts.localizer_prompt("q", [])


def test_prompts_of_a_real_nextqa_record(realdata):
    """The first record of SeViLA's converted NExT-QA val file, rendered as the official loader would."""
    rec = json.loads((realdata / "sevila_data" / "nextqa" / "val.json").read_text())[0]
    assert rec["qid"] == "CH_4010069381_6"
    options = [rec[f"a{i}"] for i in range(rec["num_option"])]
    qa, loc = prompts.qa_prompts(rec["question"], options)
    assert qa == (
        "Question: how do the two man play the instrument? Option A: roll the handle. Option B: tap their feet. "
        "Option C: strum the string. Option D: hit with sticks. Option E: pat with hand. "
        "Considering the information presented in the frame, select the correct answer from the options."
    )
    assert loc == (
        "Question: how do the two man play the instrument? Options: (roll the handle. tap their feet. "
        "strum the string. hit with sticks. pat with hand. ) Does the information within the frame provide the "
        "necessary details to accurately answer the given question?"
    )
    assert prompts.answer_target(rec["answer"]) == "Option A"


def test_template_texts_cover_every_fixed_string():
    texts = prompts.template_texts(max_frames=8)
    for s in (prompts.ANSWERER_SUFFIX, prompts.LOCALIZER_SUFFIX, prompts.VLEP_QUESTION,
              prompts.VLEP_LOCALIZER_SUFFIX, prompts.QVH_PSEUDO_OPTIONS, "Frame: ", "Frame 8: ", "Option E"):
        assert s in texts
