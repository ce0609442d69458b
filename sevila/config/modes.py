"""The typed modes that more than one package reads, each defined once and free of torch (docs/design.md §3:
typed enums, never mode strings): params.yaml is read into them by sevila.config.params, and the training loop,
frame selection (sevila.model.selection), the model and the MLflow tags (sevila.tracking) all use these names.

- `Selector`, `Fusion`: which frames the Answerer reads and how per-frame answers become one.
- `LocalizerId`, `AnswererId`: which trained module a stage or ablation variant uses (paper §3.2-3.3).
- `FrameSelection`: the frames the Answerer is fine-tuned on.
- `Precision`: the autocast policy of a training run (sevila.config.training.TrainConfig).

A bad value of a setting raises `InvalidSetting`, which names the field, so the config loader can report the
dotted key (`pretrain_localizer.train.lr`).
"""
from __future__ import annotations

import enum
from typing import Any


class InvalidSetting(ValueError):
    """A setting's value is out of range; `key` is the field name (the config loader prefixes its section)."""

    def __init__(self, key: str, value: Any, why: str) -> None:
        super().__init__(f"{key}={value!r}: {why}")
        self.key, self.value, self.why = key, value, why


class Benchmark(str, enum.Enum):
    """What the pipeline runs on (`dataset:` in params.yaml) and what an annotation file is of: the embedded
    synthetic world, the paper's QA benchmarks, and QVHighlights (`datasets.qvhighlights`), the Localizer's
    pre-training set (paper §3.3), read by pretrain_localizer beside whichever QA benchmark runs. The one enum of
    benchmarks: readers, metrics, settings and the rehearsal all use it."""

    SYNTH = "synth"
    NEXTQA = "nextqa"
    STAR = "star"
    HOW2QA = "how2qa"
    TVQA = "tvqa"
    VLEP = "vlep"
    QVHIGHLIGHTS = "qvhighlights"

    @property
    def real(self) -> bool:
        """One of the paper's benchmarks (official files read from disk), not the generated world."""
        return self is not Benchmark.SYNTH

    @property
    def multiple_choice(self) -> bool:
        """A QA benchmark scored by accuracy over options (all but QVHighlights' moments and the world itself, whose
        QA is written and scored as NExT-QA's)."""
        return self in (Benchmark.NEXTQA, Benchmark.STAR, Benchmark.HOW2QA, Benchmark.TVQA, Benchmark.VLEP)

    @property
    def has_clip_window(self) -> bool:
        """True for benchmarks whose questions come with an annotated start/end clip that frames are sampled in
        (SeViLA samples inside `start`/`end` for STAR, How2QA, TVQA and VLEP; the whole video otherwise).
        A record of such a benchmark without a finite window is a "NaN window" (TVQA's `NaN-NaN`)."""
        return self in (Benchmark.STAR, Benchmark.HOW2QA, Benchmark.TVQA, Benchmark.VLEP)

    @classmethod
    def parse(cls, name: "str | Benchmark") -> "Benchmark":
        """Case- and punctuation-insensitive: "NExT-QA", "next_qa" and "nextqa" are the same benchmark."""
        if isinstance(name, cls):
            return name
        key = "".join(ch for ch in str(name).lower() if ch.isalnum())
        for member in cls:
            if member.value == key:
                return member
        raise ValueError(f"unknown benchmark {name!r}; known: {[m.value for m in cls]}")


class Selector(str, enum.Enum):
    """Frames the Answerer reads: UNIFORM (k of the n sampled frames, evenly), LOCALIZER (the Localizer's top-k,
    in temporal order: SeViLA), ALL (all n frames), ORACLE (all n frames, each answered alone; correct iff any
    single frame is: the paper's upper bound, Table 9)."""

    UNIFORM = "uniform"
    LOCALIZER = "localizer"
    ORACLE = "oracle"
    ALL = "all"

    @property
    def uses_keyframes(self) -> bool:
        """Whether the selector picks `n_keyframes` of the `n_frames` (the others read every frame)."""
        return self in (Selector.UNIFORM, Selector.LOCALIZER)


class Fusion(str, enum.Enum):
    """How the chosen frames become one answer: CONCAT (one Answerer sequence: SeViLA, BLIP-2 concat) or VOTE
    (each frame answered alone, majority vote: BLIP-2 voting)."""

    CONCAT = "concat"
    VOTE = "vote"


class LocalizerId(str, enum.Enum):
    """Which Localizer a stage or variant uses; the names are the variant-name suffixes (docs/design.md §3)."""

    BACKBONE = "none"  # the backbone's own Q-Former (BLIP-2's): no pre-training, no self-refinement
    QVH = "qvh"  # pre-trained on moment labels (paper §3.3)
    SR = "sr"  # self-refined from the backbone's Q-Former (paper §3.2)
    QVH_SR = "qvh_sr"  # pre-trained, then self-refined

    @property
    def pretrained(self) -> bool:
        return self in (LocalizerId.QVH, LocalizerId.QVH_SR)

    @property
    def refined(self) -> bool:
        return self in (LocalizerId.SR, LocalizerId.QVH_SR)


class FrameSelection(str, enum.Enum):
    """Frames the Answerer is fine-tuned on: the Localizer's keyframes (SeViLA) or the ablations' alternatives."""

    LOCALIZER = "localizer"
    UNIFORM = "uniform"
    RANDOM = "random"


class AnswererId(str, enum.Enum):
    """Which Answerer a stage or variant uses: the backbone's, or one fine-tuned on the frames it names. A baseline
    is fine-tuned on the frames it is evaluated on: the paper's BLIP-2^concat (Table 9) is BLIP-2 fine-tuned on
    uniform frames, not SeViLA's Answerer (which only ever saw event keyframes) shown uniform ones."""

    ZERO_SHOT = "zero_shot"  # the backbone's Q-Former in the Answerer slot
    FINETUNED = "finetuned"  # fine-tuned on the Localizer's keyframes (forward chain, paper §3.1)
    FINETUNED_UNIFORM = "finetuned_uniform"  # fine-tuned on uniform frames (BLIP-2^concat, paper Table 9)
    FINETUNED_RANDOM = "finetuned_random"  # fine-tuned on random frames

    @property
    def finetuned(self) -> bool:
        return self is not AnswererId.ZERO_SHOT

    @classmethod
    def trained_on(cls, frames: FrameSelection) -> "AnswererId":
        """The Answerer `finetune_answerer` makes from `frames`."""
        return {FrameSelection.LOCALIZER: cls.FINETUNED, FrameSelection.UNIFORM: cls.FINETUNED_UNIFORM,
                FrameSelection.RANDOM: cls.FINETUNED_RANDOM}[FrameSelection(frames)]


class Precision(str, enum.Enum):
    """Autocast policy. AUTO: bf16 autocast on a CUDA device that supports bf16, fp32 elsewhere (CPU bf16
    matmuls are slow on most CPUs and change numerics, so CPU runs stay fp32 unless BF16 is asked for).
    BF16: autocast to bf16 on any device. FP32: never autocast."""

    AUTO = "auto"
    BF16 = "bf16"
    FP32 = "fp32"
