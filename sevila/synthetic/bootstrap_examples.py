"""What the bootstrap (sevila/synthetic/bootstrap.py) trains on: the example tasks, the slot words a frame is grounded
in,
the builders of every example, the decoded frames they point into, and the per-phase datasets.

Every builder is a pure function of an RNG and the world's own metadata or records (nothing here touches a model),
so each phase's data are the same in every run and on resumption (`PhaseData`). The tasks and why each exists are
in sevila/synthetic/bootstrap.py's docstring; the curriculum that mixes them is `sevila.synthetic.bootstrap.curriculum`.
"""
from __future__ import annotations

import enum
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from sevila.data.records import QARecord
from sevila.data.video import frame_labels, read_frames, resolve_video_path, to_pixels
from sevila.model import prompts
from sevila.synthetic import world as synth
from sevila.synthetic.render import COLOURS, in_event, render_frame, visible_objects

#: Word pool of MATCH: every colour and shape word of the world.
MATCH_WORDS: tuple[str, ...] = (*COLOURS, *synth.SHAPES)
#: TEXT_QA samples world metadata from this index on: no generated video of any realistic world reaches it.
TEXT_META_OFFSET = 10_000_000
#: Caption images render world metadata from this index on: other scenes than TEXT_QA's and any video's.
IMAGE_META_OFFSET = 20_000_000
#: Query tokens of the world's model = words a frame is grounded in (`slot_words`): size, colour, shape, full stop.
SLOT_WORDS = 4
#: Slot words of a frame with nothing on it.
EMPTY_SLOTS: tuple[str, ...] = ("a", "grey", "background", ".")


class Task(str, enum.Enum):
    """One kind of bootstrap example (sevila/synthetic/bootstrap.py's docstring says what each teaches and why)."""

    MATCH = "match"  # text frame (one word) + bare options -> `Option X`
    TEXT_QA = "text_qa"  # text frames (1-4, one inside the event, as slot words) + Answerer prompt -> `Option X`
    YES_NO = "yes_no"  # text frame (slot words) + `Question: is there a red shape?` -> `yes` / `no`
    LOCALIZE = "localize"  # text frame + the Localizer's own prompt -> `yes` on an object, `no` on a blank frame
    GROUND = "ground"  # frame (any) -> its queries regress onto its slot words' embeddings
    FRAME_MATCH = "frame_match"  # frame (inside the event) + bare options -> `Option X`
    FRAME_QA = "frame_qa"  # frame (inside the event) + Answerer prompt -> `Option X`

    @property
    def uses_frame(self) -> bool:
        return self in (Task.GROUND, Task.FRAME_MATCH, Task.FRAME_QA)


@dataclass(frozen=True)
class Example:
    """One training example. `frame`: a row of the training FrameTable for frame tasks, -1 for text. `slots`: the
    frame's slot words (text tasks: the frame itself; GROUND: the regression target). GROUND has no prompt/target."""

    task: Task
    prompt: str
    target: str
    frame: int = -1
    slots: tuple[str, ...] = ()


class Context(str, enum.Enum):
    """What a multi-frame TEXT_QA example's frames show around the event."""

    EMPTY = "empty"  # one event frame among empty ones
    KEYFRAMES = "keyframes"  # 1..n event frames, the others outside it (a distractor or empty): the Answerer's input


@dataclass(frozen=True)
class TaskSpec:
    """A task as it appears in a phase's mix: `n_options` for the multiple-choice tasks is drawn from this range."""

    task: Task
    min_options: int = 5
    max_options: int = 5
    n_words: int | None = None  # MATCH: draw from the first n_words of MATCH_WORDS only (None: all)
    n_frames: int = 1  # TEXT_QA: frames written in the prompt
    context: Context = Context.EMPTY  # TEXT_QA with n_frames > 1: what the frames besides an event frame show


@dataclass(frozen=True)
class Gate:
    """Advance past a phase once `metric` (an evaluation key) reaches `threshold` on held-out examples.

    With `stall_steps`, a phase whose metric has not risen `stall_rise` above its first evaluation within `stall_steps`
    steps of it is STALLED (`sevila.synthetic.bootstrap.gate_verdict`): it stops there, and the bootstrap restarts
    (`sevila.synthetic.bootstrap`) rather than spend the phase's whole budget on a plateau that, on some float paths,
    does not
    break (issue 10: one seed's one-frame text QA sat at chance, 0.18-0.24, through 2,300 steps, where the same seed
    on one thread climbed from step ~300)."""

    metric: str
    threshold: float
    stall_steps: int | None = None
    stall_rise: float = 0.1
    restart: bool = True  # missing or stalling restarts the bootstrap; False: a miss is logged and counted only


@dataclass(frozen=True)
class CurriculumPhase:
    """A curriculum phase: up to `steps` optimizer steps whose examples cycle through `mix` (a task listed twice
    gets twice the share). With a `gate` the phase is checked every `gate_every` steps and ends as soon as the gate
    opens (`gate_check`): how long a small transformer sits on the matching plateau varies from seed to seed, so a
    fixed length either wastes minutes or moves on before the circuit exists. Gated phases keep a constant learning
    rate (a cosine decay would starve a plateau that has not broken yet); an ungated phase decays."""

    name: str
    steps: int
    mix: tuple[TaskSpec, ...]
    gate: Gate | None = None
    lr: float | None = None  # None: BootstrapSettings.lr
    train_t5: bool = True  # False: the T5 is frozen already (only ViT + Q-Former learn), as SeViLA keeps it

    @property
    def uses_frames(self) -> bool:
        return any(spec.task.uses_frame for spec in self.mix)



# ------------------------------------------------------------------------------------------ example builders


def slot_words(meta: Mapping[str, Any], t: float) -> tuple[str, ...]:
    """The frame at `t` as SLOT_WORDS words, one per query token: `big <colour> <shape> .` inside the event,
    `small <colour> <shape> .` for the first small object on screen outside it, `grey background .` on an empty
    frame. Read from the same metadata the renderer draws (`visible_objects`)."""
    objects = visible_objects(dict(meta), t)
    if in_event(dict(meta), t):
        return ("big", objects[0]["colour"], objects[0]["shape"], ".")
    if objects:
        return small_slots(objects[0])
    return EMPTY_SLOTS


def shows_event(example: Example) -> bool:
    """Whether a GROUND example's frame lies inside its video's event (its slot words name the big target)."""
    return example.slots[:1] == ("big",)


def small_slots(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """Slot words of a frame outside the event whose first small object on screen is `obj` (a distractor)."""
    return ("small", obj["colour"], obj["shape"], ".")


def event_slots(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """Slot words of any frame inside the event (the target alone is on screen there)."""
    tg = meta["target"]
    return ("big", tg["colour"], tg["shape"], ".")


def slot_text(slots: Sequence[str]) -> str:
    """Slot words as the text a text task writes after `Frame: ` (`big red circle.`): the same tokens."""
    return " ".join(w for w in slots if w != ".") + "."


def record_question(question: str) -> str:
    """A world question as the NExT-QA reader writes it (sevila/data/nextqa.py: question + `?`)."""
    return question + "?"


def record_option(option: str) -> str:
    """A world option as the NExT-QA reader writes it (option + `.`)."""
    return option + "."


def subset_options(options: Sequence[str], answer: int, n_options: int, rng: random.Random
                   ) -> tuple[list[str], int]:
    """`n_options` of `options` that include the answer, in a random order -> (options, new answer index)."""
    if not 0 <= answer < len(options):
        raise ValueError(f"answer {answer} outside 0..{len(options) - 1}")
    if not 1 <= n_options <= len(options):
        raise ValueError(f"n_options {n_options} outside 1..{len(options)}")
    others = [i for i in range(len(options)) if i != answer]
    keep = [answer, *rng.sample(others, n_options - 1)]
    rng.shuffle(keep)
    return [options[i] for i in keep], keep.index(answer)


def match_example(rng: random.Random, n_options: int, pool: Sequence[str] = MATCH_WORDS) -> Example:
    """`Frame: red. Option A: green. Option B: red.` -> `Option B` (distinct words from `pool`)."""
    words = rng.sample(list(pool), n_options)
    answer = rng.randrange(n_options)
    prompt = f"{prompts.SINGLE_FRAME_PREFIX}{words[answer]}. " + prompts.lettered_options(
        [record_option(w) for w in words])
    return Example(Task.MATCH, prompt, prompts.answer_target(answer))


def outside_slots(rng: random.Random, meta: Mapping[str, Any]) -> tuple[str, ...]:
    """Slot words of a frame outside `meta`'s event: one of its small distractors, or (one time in five) nothing."""
    if rng.random() < 0.2:
        return EMPTY_SLOTS
    return small_slots(rng.choice(meta["distractors"]))


def frames_text(slots: Sequence[tuple[str, ...]]) -> str:
    """Frames written as text exactly where the Answerer's query tokens go (`prompts.frame_prefixes`)."""
    return "".join(f"{p}{slot_text(w)} " for p, w in zip(prompts.frame_prefixes(len(slots)), slots))


def text_qa_example(rng: random.Random, meta: Mapping[str, Any], n_options: int, n_frames: int = 1,
                    context: Context = Context.EMPTY) -> Example:
    """`Frame: big red circle. ` + the official Answerer prompt of one of `meta`'s questions with `n_options` of
    its options: the token sequence the Answerer reads from an event frame whose queries hit their slot words.
    With n_frames > 1 (the concatenated frames of the forward chain, paper §3.1), `Context.EMPTY`:
    `Frame 1: a grey background. Frame 2: big red circle. ...`, the event frame at a random place among empty ones;
    `Context.KEYFRAMES`: 1..n event frames at random places, the others outside the event (`outside_slots`: the
    world's distractors, whose words are wrong options, or empty), as a Localizer's keyframes (mostly in the event)
    and uniform frames (mostly outside) show it. Taught EMPTY alone, the T5 read 4 event frames in a row at 0.41 and
    one among distractors at 0.45, against 0.83 for one among empty ones (issue 10, seed 2). KEYFRAMES is one layout
    among several of the `context` phase and ungated: an earlier trial with distractors in place of the empty
    frames left those questions at chance for 1200 steps."""
    q = rng.choice(meta["questions"])
    opts, answer = subset_options([record_option(o) for o in q["options"]], int(q["answer"]), n_options, rng)
    if context is Context.KEYFRAMES:
        inside = set(rng.sample(range(n_frames), rng.randint(1, n_frames)))
        frames = [event_slots(meta) if i in inside else outside_slots(rng, meta) for i in range(n_frames)]
    else:
        frames = [EMPTY_SLOTS] * (n_frames - 1)
        frames.insert(rng.randrange(n_frames), event_slots(meta))
    prompt = frames_text(frames) + prompts.answerer_prompt(record_question(q["question"]), opts)
    return Example(Task.TEXT_QA, prompt, prompts.answer_target(answer))


def yes_no_example(rng: random.Random, meta: Mapping[str, Any]) -> Example:
    """`Frame: small blue square. Question: is there a blue shape?` -> `yes` (colour or shape asked, half of the
    questions about a word the frame shows): the yes/no answering Flan-T5 brings, which the Localizer's
    `Does the information within the frame ...?` is read with."""
    slots = event_slots(meta) if rng.random() < 0.5 else outside_slots(rng, meta)
    colour = rng.random() < 0.5
    kind = tuple(COLOURS) if colour else synth.SHAPES
    shown = slots[1] if slots[0] in ("big", "small") else None
    shown = shown if colour else (slots[2] if shown else None)
    word = shown if shown and rng.random() < 0.5 else rng.choice([w for w in kind if w != shown])
    asked = f"a {word} shape" if colour else f"a {word}"
    prompt = f"{frames_text([slots])}Question: is there {asked}?"
    return Example(Task.YES_NO, prompt, prompts.YES if word == shown else prompts.NO)


def localize_example(rng: random.Random, meta: Mapping[str, Any]) -> Example:
    """`Frame: small blue square. Question: ... Options: (...) Does the information within the frame ...?` ->
    `yes` when the frame shows an object (the event's target or a distractor, a third each), `no` on a blank one
    (the other third); the prompt is one of `meta`'s questions as the Localizer asks it, or (half the time) its
    QVHighlights query as pre-training does (paper §3.3).

    Why: the T5 must answer the Localizer's prompt with `yes`/`no` that the FRAME decides, or the Localizer's
    Q-Former has nothing to steer. Never shown that prompt, the frozen T5 read it per seed (issue 10, text frames):
    seed 2 said `yes` to 75% of blank frames (log p(no) -9.6 on event frames) and seed 3 `no` to every frame, and
    seed 2's Localizer then barely learnt (pre-training loss 11.6 -> 4.5 where seeds 0/1 reach 0.1-0.6). The rule
    is the prior an instruction-tuned LM brings, not the answer: a frame with something on it may hold the details,
    a blank one does not; WHICH object answers is what pre-training and self-refinement teach (paper §3.2-3.3)."""
    r = rng.random()
    if r < 1 / 3:
        slots = event_slots(meta)
    elif r < 2 / 3:
        slots = small_slots(rng.choice(meta["distractors"]))
    else:
        slots = EMPTY_SLOTS
    if rng.random() < 0.5:
        q = rng.choice(meta["questions"])
        asked = prompts.localizer_prompt(record_question(q["question"]), [record_option(o) for o in q["options"]])
    else:
        asked = prompts.qvh_localizer_prompt(meta["query"])
    return Example(Task.LOCALIZE, frames_text([slots]) + asked, prompts.localizer_target(slots != EMPTY_SLOTS))


def text_metas(n: int, seed: int) -> list[dict]:
    """World metadata for TEXT_QA: sampled like the world's videos but at indices no world video has."""
    return [synth.sample_video_meta(TEXT_META_OFFSET + i, "train", seed) for i in range(n)]


# ------------------------------------------------------------------------------------------------ frames


@dataclass(frozen=True)
class FrameTable:
    """Decoded frames of some videos: pixels [N, 3, S, S] (CLIP-normalised), and per row its video and time."""

    pixels: torch.Tensor
    videos: tuple[str, ...]
    times: np.ndarray  # [N] seconds
    rows: Mapping[str, tuple[int, ...]]  # video -> its rows, temporal order

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def load_frame_table(video_root: str | Path, videos: Sequence[str], n_frames: int, image_size: int) -> FrameTable:
    """Uniformly sample `n_frames` frames of each video (SeViLA's sampling, `read_frames`) at `image_size`."""
    pixels, vids, times, rows = [], [], [], {}
    start = 0
    for video in dict.fromkeys(videos):  # unique, first-seen order
        sample = read_frames(resolve_video_path(video_root, video), n_frames, size=image_size)
        pixels.append(sample.pixels)
        vids += [video] * len(sample.timestamps)
        times.append(np.asarray(sample.timestamps, dtype=np.float64))
        rows[video] = tuple(range(start, start + len(sample.timestamps)))
        start += len(sample.timestamps)
    if not pixels:
        raise ValueError("no videos to load frames from")
    return FrameTable(torch.cat(pixels), tuple(vids), np.concatenate(times), rows)


def concat_tables(*tables: FrameTable) -> FrameTable:
    """One table of several (rows renumbered in order); a video may appear in one of them only."""
    rows: dict[str, tuple[int, ...]] = {}
    start = 0
    for table in tables:
        for video, video_rows in table.rows.items():
            if video in rows:
                raise ValueError(f"video {video} is in two frame tables")
            rows[video] = tuple(start + r for r in video_rows)
        start += len(table)
    return FrameTable(torch.cat([t.pixels for t in tables]), tuple(v for t in tables for v in t.videos),
                      np.concatenate([t.times for t in tables]), rows)


def caption_images(n: int, seed: int, image_size: int, fps: int = 8, size: int = 64
                   ) -> tuple[FrameTable, dict[str, dict]]:
    """BLIP-2's image-text pre-training, in this world: `n` images, one frame each of `n` scenes sampled like the
    world's videos (`synth.sample_video_meta`) at indices no video has, every other one inside its scene's event,
    rendered straight (`render_frame`, no codec) and resized and normalised like a decoded frame (`to_pixels`).
    Their captions are their slot words (`ground_examples` with the returned metadata).

    Why: GROUND on the training videos alone MEMORISED them (issue 10: training event frames 100 % grounded, held-out
    ones 70 %, the target's shape the word missed; ~140 videos show ~140 targets, each on its own background), and
    the Answerer answered one held-out event frame right 50-84 % of the time. Fresh scenes make the shape the only
    thing that predicts the shape word. Returns (table: one row per scene, `videos` = scene names; scene metadata
    by name)."""
    rng = np.random.default_rng([seed, IMAGE_META_OFFSET])
    metas = [synth.sample_video_meta(IMAGE_META_OFFSET + i, "train", seed, fps, size) for i in range(n)]
    frames, times = [], []
    for i, meta in enumerate(metas):
        first, stop = meta["event_frames"]
        inside = range(first, stop)
        outside = [f for f in range(meta["n_frames"]) if f not in inside]
        frame = int(rng.choice(inside if i % 2 == 0 else outside))
        frames.append(render_frame(meta, frame))
        times.append(frame / meta["fps"])
    table = FrameTable(to_pixels(np.stack(frames), image_size), tuple(m["video"] for m in metas),
                       np.asarray(times, dtype=np.float64), {m["video"]: (i,) for i, m in enumerate(metas)})
    return table, {m["video"]: m for m in metas}


def rows_inside(table: FrameTable, video: str, spans: Sequence[tuple[float, float]]) -> list[int]:
    """Rows of `video` whose time lies in one of `spans`, ends inclusive (SeViLA's moment labels)."""
    rows = table.rows[video]
    return [r for r, ok in zip(rows, frame_labels(table.times[list(rows)], spans)) if ok]


def event_rows(table: FrameTable, record: QARecord) -> list[int]:
    """Rows of `record`'s video whose time lies in its evidence (ground-truth event) span, ends inclusive."""
    if not record.evidence:
        raise ValueError(f"question {record.qid}: no evidence span (the synthetic world's records carry one)")
    return rows_inside(table, record.video, record.evidence)


def ground_examples(table: FrameTable, metas: Mapping[str, Mapping[str, Any]]) -> list[Example]:
    """One GROUND example per frame of the table (inside and outside events: slot words are always true)."""
    out = []
    for row, (video, t) in enumerate(zip(table.videos, table.times)):
        if video not in metas:
            raise KeyError(f"video {video} has frames but no entry in world.jsonl")
        out.append(Example(Task.GROUND, "", "", row, slot_words(metas[video], float(t))))
    return out


def frame_qa_pool(table: FrameTable, records: Sequence[QARecord]) -> list[tuple[QARecord, int]]:
    """(question, frame row) for every sampled frame inside each question's event: the only frames QA trains on."""
    pool = []
    for rec in records:
        if rec.answer is None:
            raise ValueError(f"question {rec.qid}: unlabelled; the bootstrap trains on labelled questions only")
        pool += [(rec, row) for row in event_rows(table, rec)]
    return pool


def frame_qa_example(rng: random.Random, record: QARecord, row: int) -> Example:
    """The official Answerer prompt on one event frame, options re-shuffled (the answer must be read off the
    frame, never off a position)."""
    opts, answer = subset_options(list(record.options), int(record.answer), len(record.options), rng)
    return Example(Task.FRAME_QA, prompts.answerer_prompt(record.question, opts), prompts.answer_target(answer), row)


def event_frame_pool(table: FrameTable, metas: Mapping[str, Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], int]]:
    """(video metadata, row) for every sampled frame inside its video's event (world.jsonl span, ends inclusive)."""
    return [(metas[video], row) for video in table.rows
            for row in rows_inside(table, video, [tuple(metas[video]["event"])])]


def frame_match_example(rng: random.Random, meta: Mapping[str, Any], row: int, n_options: int) -> Example:
    """An event frame and bare options naming its colour or (half the time) its shape among others of the kind:
    MATCH with the frame itself as the probe (the image-QA analogue of "what colour is shown")."""
    tg = meta["target"]
    right, kind = (tg["colour"], tuple(COLOURS)) if rng.random() < 0.5 else (tg["shape"], synth.SHAPES)
    words = [right, *rng.sample([w for w in kind if w != right], n_options - 1)]
    rng.shuffle(words)
    return Example(Task.FRAME_MATCH, prompts.lettered_options([record_option(w) for w in words]),
                   prompts.answer_target(words.index(right)), row)


@dataclass(frozen=True)
class Pools:
    """What the phases draw from: world metadata for TEXT_QA, GROUND examples (every training frame), (question,
    event row) for FRAME_QA and (video metadata, event row) for FRAME_MATCH."""

    text: Sequence[Mapping[str, Any]]
    ground: Sequence[Example]
    frame_qa: Sequence[tuple[QARecord, int]]
    frame_match: Sequence[tuple[Mapping[str, Any], int]]

    @functools.cached_property
    def ground_event(self) -> list[Example]:
        return [e for e in self.ground if shows_event(e)]

    def of(self, task: Task) -> Sequence:
        return {Task.TEXT_QA: self.text, Task.YES_NO: self.text, Task.LOCALIZE: self.text,
                Task.GROUND: self.ground, Task.FRAME_QA: self.frame_qa,
                Task.FRAME_MATCH: self.frame_match, Task.MATCH: MATCH_WORDS}[task]


class PhaseData:
    """The examples of one phase: item i is built from its own RNG (seed, phase, i), so the data are the same in
    every run and on resumption, and nothing is materialised up front."""

    def __init__(self, phase: CurriculumPhase, n_items: int, seed: int, pools: Pools) -> None:
        self.phase, self.n, self.seed, self.pools = phase, n_items, seed, pools
        for spec in phase.mix:
            if not pools.of(spec.task):
                raise ValueError(f"phase {phase.name}: task {spec.task.value} has no examples to draw from")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.n:
            raise IndexError(i)
        spec = self.phase.mix[i % len(self.phase.mix)]
        rng = random.Random(f"{self.seed}:{self.phase.name}:{i}")
        n_opt = rng.randint(spec.min_options, spec.max_options)
        if spec.task is Task.MATCH:
            return match_example(rng, n_opt, MATCH_WORDS[:spec.n_words])
        if spec.task is Task.TEXT_QA:
            return text_qa_example(rng, rng.choice(self.pools.text), n_opt, spec.n_frames, spec.context)
        if spec.task is Task.YES_NO:
            return yes_no_example(rng, rng.choice(self.pools.text))
        if spec.task is Task.LOCALIZE:
            return localize_example(rng, rng.choice(self.pools.text))
        if spec.task is Task.GROUND:  # half inside events: drawn in proportion, the big target's shape went unlearnt
            inside = self.pools.ground_event if rng.random() < 0.5 else ()
            return rng.choice(inside or self.pools.ground)
        if spec.task is Task.FRAME_MATCH:
            return frame_match_example(rng, *rng.choice(self.pools.frame_match), n_opt)
        return frame_qa_example(rng, *rng.choice(self.pools.frame_qa))


def collate_examples(items: list[Example]) -> list[Example]:
    return list(items)
