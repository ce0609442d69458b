"""The T5 text of SeViLA: prompt builders, frame prefixes and answer targets (docs/design.md §2).

Every string here is the official one (Yu et al. 2023; `mc_video_vqa_datasets.py` and `sevila.py` of the
official code). They are pinned in tests/model/test_prompts.py, because a changed space changes the tokens and
so what a pre-trained checkpoint sees.

Layout of one T5 encoder input (paper §3.1, Fig. 2), visual tokens first, prompt text after:
- Localizer, one sequence per frame:   [emb("Frame: ")] [32 query tokens] [localizer prompt]
- Answerer, k frames in one sequence:  [emb("Frame 1: ")] [q1] ... [emb("Frame k: ")] [qk] [answerer prompt]
- Answerer, one frame alone (voting, oracle, reverse-chain pseudo-labels): [emb("Frame: ")] [q] [answerer prompt]
"""
from __future__ import annotations

from typing import Sequence

#: Option letters in the order of the options; the Answerer's prediction is an argmax over these letters.
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D", "E")

#: Appended to the Answerer prompt (all datasets but VLEP).
ANSWERER_SUFFIX = "Considering the information presented in the frame, select the correct answer from the options."
#: Appended to the Localizer prompt (all datasets but VLEP, and QVHighlights pre-training).
LOCALIZER_SUFFIX = (
    "Does the information within the frame provide the necessary details to accurately answer the given question?"
)
#: VLEP has no question: the Answerer asks for the next event ...
VLEP_QUESTION = "Upon observing the provided frames, what is the most probable subsequent event?"
#: ... and the Localizer asks whether the frame helps to predict it.
VLEP_LOCALIZER_SUFFIX = "Does the information within the frame provide the necessary details to predict next event?"
#: QVHighlights pre-training (paper §3.3) dresses the query as a yes/no question.
QVH_PSEUDO_OPTIONS = "Option A: yes. Option B: no."

#: Localizer targets (one per frame).
YES = "yes"
NO = "no"

SINGLE_FRAME_PREFIX = "Frame: "


def frame_prefixes(n_frames: int) -> list[str]:
    """Text before each frame's query tokens: `Frame: ` for a single frame, `Frame 1: `.. `Frame n: ` for several.

    The official code uses `Frame: ` wherever each frame is its own T5 sequence (Localizer, per-frame answers)
    and `Frame {i}: ` (i from 1) when several frames share one sequence (the Answerer on keyframes).
    """
    if n_frames < 1:
        raise ValueError(f"need at least one frame, got {n_frames}")
    if n_frames == 1:
        return [SINGLE_FRAME_PREFIX]
    return [f"Frame {i}: " for i in range(1, n_frames + 1)]


def _check_options(options: Sequence[str], where: str) -> None:
    if not 1 <= len(options) <= len(OPTION_LETTERS):
        raise ValueError(
            f"{where}: {len(options)} options; the Answerer reads 1 to {len(OPTION_LETTERS)} (letters "
            f"{''.join(OPTION_LETTERS)})"
        )


def lettered_options(options: Sequence[str]) -> str:
    """`Option A: {a0} Option B: {a1} ...` (one space between options, as the official loader joins them)."""
    _check_options(options, "lettered_options")
    return " ".join(f"Option {OPTION_LETTERS[i]}: {opt}" for i, opt in enumerate(options))


def answerer_prompt(question: str, options: Sequence[str]) -> str:
    """`Question: {q} Option A: {a0} ... Considering the information ... from the options.`"""
    return f"Question: {question} {lettered_options(options)} {ANSWERER_SUFFIX}"


def localizer_prompt(question: str, options: Sequence[str]) -> str:
    """`Question: {q} Options: ({a0} {a1} ... ) Does the information within the frame ...?`

    The options are listed without letters. The official loader appends a space after *every* option
    (`hints += ans; hints += ' '`), so the list closes with ` )`; we keep that space, as a checkpoint trained
    on these prompts saw it (docs/design.md writes `({a0} {a1} ...)` without it).
    """
    _check_options(options, "localizer_prompt")
    listed = "".join(f"{opt} " for opt in options)
    return f"Question: {question} Options: ({listed}) {LOCALIZER_SUFFIX}"


def vlep_answerer_prompt(events: Sequence[str]) -> str:
    """VLEP: `Upon observing the provided frames, what is the most probable subsequent event?` followed by
    ` Option A: {e0} Option B: {e1}`."""
    return f"{VLEP_QUESTION} {lettered_options(events)}"


def vlep_localizer_prompt(events: Sequence[str]) -> str:
    """VLEP Localizer: the Answerer text followed by ` Does the information ... to predict next event?`."""
    return f"{vlep_answerer_prompt(events)} {VLEP_LOCALIZER_SUFFIX}"


def qvh_localizer_prompt(query: str) -> str:
    """QVHighlights pre-training: `Question: {query}. Option A: yes. Option B: no. Does the information ...?`

    The official loader ends the query with a full stop when it has none.
    """
    if not query:
        raise ValueError("empty QVHighlights query")
    q = query if query.endswith(".") else query + "."
    return f"Question: {q} {QVH_PSEUDO_OPTIONS} {LOCALIZER_SUFFIX}"


def answer_target(answer: int, n_options: int | None = None) -> str:
    """Answerer training target: `Option A`, `Option B`, ..."""
    limit = len(OPTION_LETTERS) if n_options is None else n_options
    if not 0 <= answer < limit:
        raise ValueError(f"answer index {answer} outside 0..{limit - 1}")
    return f"Option {OPTION_LETTERS[answer]}"


def localizer_target(positive: bool) -> str:
    """Localizer training target for one frame: `yes` (keyframe) or `no`."""
    return YES if positive else NO


def qa_prompts(question: str | None, options: Sequence[str]) -> tuple[str, str]:
    """(Answerer prompt, Localizer prompt) for one multiple-choice question; `question=None` means VLEP."""
    if question is None:
        return vlep_answerer_prompt(options), vlep_localizer_prompt(options)
    return answerer_prompt(question, options), localizer_prompt(question, options)


def template_texts(max_frames: int = 64) -> list[str]:
    """Every fixed text the model feeds T5, for training a tokenizer that must know them (the tiny world)."""
    texts = [
        ANSWERER_SUFFIX,
        LOCALIZER_SUFFIX,
        VLEP_QUESTION,
        VLEP_LOCALIZER_SUFFIX,
        QVH_PSEUDO_OPTIONS,
        "Question: Options: ( )",
        YES,
        NO,
        SINGLE_FRAME_PREFIX,
    ]
    texts += frame_prefixes(max_frames)
    texts += [answer_target(i) for i in range(len(OPTION_LETTERS))]
    texts += [f"Option {letter}:" for letter in OPTION_LETTERS]
    return texts
